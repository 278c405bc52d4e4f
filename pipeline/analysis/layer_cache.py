"""Stage `layer_cache`: every block's pooled residual of a set of read dialogs, for the readers.

Inputs: ``data`` (a dialog set folder with ``dialogs.parquet``) and ``model`` (a prepared model
folder). Per item and block it keeps the residual at the last read position (``last``) and/or the
mean over the read positions (``mean``), the positions the decoder reads. Per shard,
``shards/NNNNN.safetensors`` holds one tensor per pooling, (items x blocks x d) in bf16, and
``shards/NNNNN.index.parquet`` says which item is which row (id, label, kind, split, row,
n_read). ``cache.json`` names the layers, poolings and shards. A shard is complete once its index
exists (written after its tensors), so a killed run resumes by skipping complete shards.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import polars as pl
import torch

from pipeline.analysis.params import LayerCacheParams
from pipeline.core import stage, store
from pipeline.mechanism.shards import (
    SHARDS,
    read_batches,
    read_meta,
    shard_complete,
    shard_folder,
    shard_name,
    write_meta,
    write_shard,
)

log = logging.getLogger("pipeline.analysis.layer_cache")

INDEX_SCHEMA = {
    "id": pl.String,
    "label": pl.String,
    "kind": pl.String,
    "split": pl.String,
    "row": pl.Int64,
    "n_read": pl.Int64,
}


def select_rows(rows: list[dict], kinds, max_per_split: int | None, seed: int) -> list[dict]:
    """The rows of the kept kinds, at most ``max_per_split`` per split (seeded), in input order."""
    kept = [r for r in rows if kinds is None or r["kind"] in kinds]
    if max_per_split is None:
        return kept
    chosen: set[str] = set()
    for split in sorted({r["split"] for r in kept}):
        ids = [r["id"] for r in kept if r["split"] == split]
        random.Random(f"{seed}:{split}").shuffle(ids)
        chosen.update(ids[:max_per_split])
    return [r for r in kept if r["id"] in chosen]


@torch.no_grad()
def pooled_residuals(
    model, tokenizer, items, layers: list[int], pooling: list[str], batch_size: int, device
) -> dict[str, torch.Tensor]:
    """Per pooling, (items x layers x d) float32 on the CPU, from tokenized read dialogs."""
    out = {
        pool: torch.zeros(len(items), len(layers), model.config.get_text_config().hidden_size)
        for pool in pooling
    }
    batches = read_batches(model, items, layers, batch_size, tokenizer.pad_token_id, device)
    for chunk, acts, _ in batches:
        stacked = torch.stack([acts[layer] for layer in layers], dim=1).float().cpu()  # B,L,T,D
        for row, i in enumerate(chunk):
            positions = torch.tensor(items[i].read_positions)
            picked = stacked[row][:, positions]  # L, n, D
            if "last" in out:
                out["last"][i] = picked[:, -1]
            if "mean" in out:
                out["mean"][i] = picked.mean(dim=1)
    return out


def run(
    params: LayerCacheParams, inputs: dict[str, Path], workdir: Path, info: dict[str, Any]
) -> None:
    from pipeline.data.schema import CONTROL_KINDS, read_dialogs
    from pipeline.mechanism.dialogs import tokenize_read_dialog
    from pipeline.mechanism.modeling import decoder_layers, load_model, resolve_device

    data = Path(inputs["data"])
    source = data / "dialogs.parquet" if data.is_dir() else data
    kinds = CONTROL_KINDS if params.items == "controlled" else None
    rows = select_rows(read_dialogs(source), kinds, params.max_per_split, params.seed)
    if not rows:
        raise ValueError(f"{source}: no dialogs to cache (items: {params.items})")
    device = resolve_device(params.device)
    model, tokenizer = load_model(inputs["model"], params.dtype, device)
    model.eval()
    n_blocks = len(decoder_layers(model))
    layers = sorted(set(params.layers)) if params.layers is not None else list(range(n_blocks))
    if not layers or layers[0] < 0 or layers[-1] >= n_blocks:
        raise ValueError(f"layer_cache: layers {params.layers} out of range (0..{n_blocks - 1})")
    items = []
    for i, row in enumerate(rows):
        try:
            items.append(
                tokenize_read_dialog(
                    tokenizer, row["messages"], row["n_masked_turns"], params.positions
                )
            )
        except ValueError as exc:
            raise ValueError(f"{source}: record {i} ({row['id']}): {exc}") from exc
    folder = shard_folder(workdir)
    size = params.shard_items
    plan = [list(range(i, min(i + size, len(rows)))) for i in range(0, len(rows), size)]
    resumed = 0
    for s, shard in enumerate(plan):
        name = shard_name(s)
        if shard_complete(folder, name, [rows[i]["id"] for i in shard]):
            resumed += 1
            continue
        pooled = pooled_residuals(
            model,
            tokenizer,
            [items[i] for i in shard],
            layers,
            params.pooling,
            params.batch_size,
            device,
        )
        index = pl.DataFrame(
            [
                {
                    "id": rows[i]["id"],
                    "label": rows[i]["label"],
                    "kind": rows[i]["kind"],
                    "split": rows[i]["split"],
                    "row": row,
                    "n_read": len(items[i].read_positions),
                }
                for row, i in enumerate(shard)
            ],
            schema=INDEX_SCHEMA,
        )
        tensors = {pool: t.to(torch.bfloat16).contiguous() for pool, t in pooled.items()}
        write_shard(folder, name, tensors, index)
        log.info("shard %s: %d items", name, len(shard))
    meta = {
        "layers": layers,
        "pooling": list(params.pooling),
        "positions": params.positions,
        "d_model": int(model.config.get_text_config().hidden_size),
        "n_blocks": n_blocks,
        "dtype": "bfloat16",
        "shards": [shard_name(s) for s in range(len(plan))],
        "n_items": len(rows),
    }
    write_meta(workdir, meta)
    info.update(n_items=len(rows), n_layers=len(layers), resumed_shards=resumed)


class LayerCache:
    """Read access to a published layer cache: its index and per-block features."""

    def __init__(self, path: str | os.PathLike, verify: str = "fast"):
        from safetensors.torch import load_file

        self.path = Path(path)
        self.manifest = store.read_manifest(self.path, verify=verify)
        self.meta = read_meta(self.path)
        frames, tensors = [], {pool: [] for pool in self.meta["pooling"]}
        for name in self.meta["shards"]:
            frames.append(pl.read_parquet(self.path / SHARDS / f"{name}.index.parquet"))
            loaded = load_file(str(self.path / SHARDS / f"{name}.safetensors"))
            for pool in tensors:
                tensors[pool].append(loaded[pool])
        self.index = pl.concat(frames)
        self._tensors = {pool: torch.cat(parts) for pool, parts in tensors.items()}
        self._row = {dialog_id: i for i, dialog_id in enumerate(self.index["id"].to_list())}

    @property
    def layers(self) -> list[int]:
        return list(self.meta["layers"])

    def features(self, pooling: str, layer: int, ids: list[str] | None = None) -> torch.Tensor:
        """(items x d) float32 residuals at block ``layer`` (all items, or ``ids`` in order)."""
        if pooling not in self._tensors:
            raise KeyError(f"{self.path}: pooling {pooling!r} not cached ({sorted(self._tensors)})")
        if layer not in self.layers:
            raise KeyError(f"{self.path}: block {layer} not cached (blocks {self.layers})")
        column = self.layers.index(layer)
        values = self._tensors[pooling][:, column]
        if ids is not None:
            missing = [i for i in ids if i not in self._row]
            if missing:
                raise KeyError(f"{self.path}: no item {missing[0]!r}")
            values = values[[self._row[i] for i in ids]]
        return values.float()


def main(argv: list[str] | None = None) -> None:
    """The stage's command line; a killed run resumes from its complete shards."""
    stage.main(
        "layer_cache", LayerCacheParams, run, argv, resumable=(SHARDS,), needs=("data", "model")
    )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
