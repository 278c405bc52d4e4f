"""The layer cache: every block's pooled residual, equal to a direct read, resumable by shard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_activation_cache import make_dialogs

from pipeline.analysis import layer_cache
from pipeline.analysis.layer_cache import LayerCache, LayerCacheParams, run, select_rows
from pipeline.data.schema import read_dialogs, write_dialogs
from pipeline.mechanism.dialogs import tokenize_read_dialog
from pipeline.mechanism.modeling import load_model
from pipeline.mechanism.patching import read_activations


def build(out: Path, data: Path, model: Path, params: dict) -> LayerCache:
    argv = ["--out", str(out), "--key", "k" * 16, "--params", json.dumps(params)]
    argv += ["--input", f"data={data}", "--input", f"model={model}"]
    layer_cache.main(argv)
    return LayerCache(out, verify="full")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dialogs")
    text = {**make_dialogs(1)[0], "kind": "text", "label": "a text", "n_masked_turns": 0}
    write_dialogs([*make_dialogs(10), text], folder / "dialogs.parquet")
    return folder


def test_pooled_residuals_of_every_block_match_a_direct_read(tmp_path, data_dir, tiny_model_dir):
    cache = build(tmp_path / "cache", data_dir, tiny_model_dir, {"batch_size": 3, "shard_items": 4})
    rows = read_dialogs(data_dir / "dialogs.parquet")
    assert cache.layers == [0, 1, 2, 3] and len(cache.meta["shards"]) == 3
    assert len(cache.index) == len(rows) == 11
    assert cache.index["id"].to_list() == [r["id"] for r in rows]
    model, tokenizer = load_model(tiny_model_dir)
    for row in rows[:4]:
        read = tokenize_read_dialog(tokenizer, row["messages"], row["n_masked_turns"])
        x = torch.tensor([read.input_ids])
        with torch.no_grad():
            acts = read_activations(model, x, torch.ones_like(x), [0, 1, 2, 3])
        for layer in range(4):
            positions = acts[layer][0, read.read_positions]
            for pool, expected in (("last", positions[-1]), ("mean", positions.mean(0))):
                got = cache.features(pool, layer, [row["id"]])[0]
                assert got.shape == (64,)
                torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-4)


def test_kinds_layers_and_caps_select_what_is_cached(tmp_path, data_dir, tiny_model_dir):
    cache = build(
        tmp_path / "cache",
        data_dir,
        tiny_model_dir,
        {"layers": [2], "pooling": ["last"], "items": "controlled"},
    )
    assert cache.layers == [2] and "text" not in set(cache.index["kind"])
    assert len(cache.index) == 10
    with pytest.raises(KeyError, match="block 1 not cached"):
        cache.features("last", 1)
    with pytest.raises(KeyError, match="pooling 'mean' not cached"):
        cache.features("mean", 2)


def test_select_rows_caps_each_split_with_a_seed():
    rows = [{"id": str(i), "kind": "system", "split": ("train", "eval")[i % 2]} for i in range(20)]
    picked = select_rows(rows, None, 3, seed=0)
    assert len(picked) == 6 and picked == select_rows(rows, None, 3, seed=0)
    assert [r["id"] for r in picked] == sorted((r["id"] for r in picked), key=int)


def test_a_complete_shard_is_not_recomputed(tmp_path, data_dir, tiny_model_dir, monkeypatch):
    out = tmp_path / "cache"
    params = LayerCacheParams(shard_items=4, device="cpu")
    staging = tmp_path / "staging"
    run(params, {"data": data_dir, "model": tiny_model_dir}, staging, {})
    first = (staging / "shards" / "00000.safetensors").read_bytes()
    (staging / "shards" / "00002.index.parquet").unlink()
    info: dict = {}
    run(params, {"data": data_dir, "model": tiny_model_dir}, staging, info)
    assert info["resumed_shards"] == 2 and info["n_items"] == 11
    assert (staging / "shards" / "00000.safetensors").read_bytes() == first
    assert not out.exists()
