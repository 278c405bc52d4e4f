"""The shards both caches write: each file whole or absent, a shard complete once its index names
its items, and the target's reads in length-sorted batches."""

from __future__ import annotations

import polars as pl
import pytest
import torch
from conftest import build_tiny_model
from safetensors.torch import load_file

from pipeline.mechanism.dialogs import TokenizedRead
from pipeline.mechanism.patching import read_activations
from pipeline.mechanism.shards import (
    SHARDS,
    read_batches,
    shard_complete,
    shard_folder,
    shard_name,
    write_atomic,
    write_shard,
)


def test_a_shard_is_complete_once_its_index_names_its_items_in_order(tmp_path):
    folder = shard_folder(tmp_path)
    assert folder == tmp_path / SHARDS and shard_name(7) == "00007"
    tensors = {"layer_1": torch.arange(6.0).reshape(3, 2)}
    # Two rows per item (one per layer), as the activation cache writes them.
    index = pl.DataFrame({"id": ["a", "b", "a", "b"], "layer": [1, 1, 2, 2]})
    assert not shard_complete(folder, "00000", ["a", "b"])
    write_shard(folder, "00000", tensors, index)
    assert sorted(p.name for p in folder.iterdir()) == ["00000.index.parquet", "00000.safetensors"]
    torch.testing.assert_close(load_file(str(folder / "00000.safetensors")), tensors)
    assert pl.read_parquet(folder / "00000.index.parquet").equals(index)
    assert shard_complete(folder, "00000", ["a", "b"])
    assert not shard_complete(folder, "00000", ["b", "a"])
    assert not shard_complete(folder, "00000", ["a", "b", "c"])

    (folder / "00000.index.parquet").write_bytes(b"cut short")
    assert not shard_complete(folder, "00000", ["a", "b"])
    write_shard(folder, "00000", tensors, index)
    (folder / "00000.safetensors").unlink()
    assert not shard_complete(folder, "00000", ["a", "b"])


def test_a_failed_write_leaves_the_old_file_and_the_next_run_drops_its_remains(tmp_path):
    folder = shard_folder(tmp_path)
    target = folder / "00000.safetensors"
    target.write_text("old")

    def half_written(path):
        path.write_text("half")
        raise OSError("killed")

    with pytest.raises(OSError, match="killed"):
        write_atomic(target, half_written)
    assert target.read_text() == "old" and (folder / "00000.safetensors.tmp").exists()
    assert shard_folder(tmp_path) == folder
    assert [p.name for p in folder.iterdir()] == ["00000.safetensors"]


def test_reads_come_in_length_sorted_batches_that_match_one_dialog_at_a_time(tokenizer):
    model = build_tiny_model("llama", tokenizer)
    lengths = [7, 3, 9, 3, 5]
    items = [TokenizedRead(list(range(10, 10 + n)), list(range(n))) for n in lengths]
    seen = []
    with torch.no_grad():
        for chunk, acts, mask in read_batches(
            model, items, [1, 2], 2, tokenizer.pad_token_id, "cpu"
        ):
            assert len(chunk) <= 2 and mask.shape[0] == len(chunk)
            seen += chunk
            for row, i in enumerate(chunk):
                x = torch.tensor([items[i].input_ids])
                alone = read_activations(model, x, torch.ones_like(x), [1, 2])
                n = lengths[i]
                assert mask[row].sum() == n
                for layer in (1, 2):
                    got = acts[layer][row][mask[row].bool()]
                    torch.testing.assert_close(got, alone[layer][0, :n], rtol=1e-4, atol=1e-4)
    assert sorted(seen) == list(range(len(items)))
    assert [lengths[i] for i in seen] == sorted(lengths)
