"""Stage `activation_cache`: the target's read activations of every dialog, in bf16 shards.

Inputs: ``data`` (a dialog set folder with ``dialogs.parquet``) and ``model`` (a prepared model
folder). Per shard ``shards/NNNNN.safetensors`` holds one 2-D tensor ``layer_<L>`` (tokens x d) per
read layer, and ``shards/NNNNN.index.parquet`` says where each dialog's rows are (id, layer, offset,
length, read_positions). Shards are planned from the data alone, written as they fill, and a shard
is complete once its index exists (written after its tensors, each by temp file and rename), so a
killed run resumes in its staging folder by skipping the complete shards and ends with the same
bytes as an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import polars as pl
import torch

from pipeline.core import stage, store
from pipeline.core.faults import fault_point
from pipeline.mechanism.dialogs import TokenizedRead, parse_positions, tokenize_read_dialog
from pipeline.mechanism.patching import gather
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
from pipeline.training.cache_params import CacheParams

log = logging.getLogger("pipeline.training.activation_cache")

INDEX_SCHEMA = {
    "id": pl.String,
    "layer": pl.Int64,
    "offset": pl.Int64,
    "length": pl.Int64,
    "read_positions": pl.List(pl.Int64),
}


def plan_shards(sizes: list[int], shard_tokens: int) -> list[list[int]]:
    """Consecutive groups of item indices, each closed once it holds ``shard_tokens`` tokens."""
    shards: list[list[int]] = []
    current: list[int] = []
    filled = 0
    for i, size in enumerate(sizes):
        current.append(i)
        filled += size
        if filled >= shard_tokens:
            shards.append(current)
            current, filled = [], 0
    if current:
        shards.append(current)
    return shards


def _compute_shard(
    model,
    items: list[TokenizedRead],
    layers: list[int],
    batch_size: int,
    pad_id: int,
    device,
    progress=lambda tokens: None,
) -> tuple[dict[int, list[torch.Tensor]], int]:
    """Read activations of ``items`` (bf16, CPU), in item order, and the tokens forwarded
    (``progress`` is told each batch's)."""
    rows: list[dict[int, torch.Tensor] | None] = [None] * len(items)
    forwarded = 0
    for chunk, acts, mask in read_batches(model, items, layers, batch_size, pad_id, device):
        forwarded += int(mask.sum())
        progress(int(mask.sum()))
        positions = [items[i].read_positions for i in chunk]
        per_layer = {layer: gather(acts[layer], positions) for layer in layers}
        for row, i in enumerate(chunk):
            rows[i] = {layer: per_layer[layer][row].to("cpu", torch.bfloat16) for layer in layers}
    return {layer: [r[layer] for r in rows] for layer in layers}, forwarded


def _write_shard(folder: Path, name: str, ids, items, acts: dict[int, list[torch.Tensor]]):
    tensors = {f"layer_{layer}": torch.cat(chunks).contiguous() for layer, chunks in acts.items()}
    records = []
    for layer, chunks in acts.items():
        offset = 0
        for dialog_id, item, chunk in zip(ids, items, chunks, strict=True):
            records.append(
                {
                    "id": dialog_id,
                    "layer": layer,
                    "offset": offset,
                    "length": chunk.shape[0],
                    "read_positions": item.read_positions,
                }
            )
            offset += chunk.shape[0]
    write_shard(folder, name, tensors, pl.DataFrame(records, schema=INDEX_SCHEMA))


def _read_data(folder: Path) -> list[dict]:
    from pipeline.data.schema import read_dialogs

    return read_dialogs(folder / "dialogs.parquet" if folder.is_dir() else folder)


def run(params: CacheParams, inputs: dict[str, Path], workdir: Path, info: dict[str, Any]) -> None:
    from tqdm import tqdm

    from pipeline.mechanism.modeling import load_model, resolve_device

    if not params.layers or params.batch_size < 1 or params.shard_tokens < 1:
        raise ValueError(
            "activation_cache: layers must be non-empty, batch_size and shard_tokens positive"
        )
    parse_positions(params.positions)
    device = resolve_device(params.device)
    dialogs = _read_data(Path(inputs["data"]))
    ids = [d["id"] for d in dialogs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{inputs['data']}: dialog ids are not unique")
    model, tokenizer = load_model(inputs["model"], params.dtype, device)
    model.eval()
    items = []
    for i, dialog in enumerate(dialogs):
        try:
            items.append(
                tokenize_read_dialog(
                    tokenizer, dialog["messages"], dialog["n_masked_turns"], params.positions
                )
            )
        except ValueError as exc:
            raise ValueError(f"{inputs['data']}: record {i} ({dialog['id']}): {exc}") from exc
    plan = plan_shards([len(item.read_positions) for item in items], params.shard_tokens)
    folder = shard_folder(workdir)
    layers = sorted(set(params.layers))
    total = sum(len(item.input_ids) for item in items)
    done = [
        shard_complete(folder, shard_name(s), [ids[i] for i in shard])
        for s, shard in enumerate(plan)
    ]
    skipped = sum(len(items[i].input_ids) for s, shard in enumerate(plan) if done[s] for i in shard)
    log.info(
        "%d dialogs, %d shards (%d already complete), layers %s",
        len(items),
        len(plan),
        sum(done),
        layers,
    )
    computed, started = 0, time.perf_counter()
    bar = tqdm(total=total, initial=skipped, unit="tok", unit_scale=True, desc="caching")
    with torch.inference_mode(), bar:
        for s, shard in enumerate(plan):
            if done[s]:
                continue
            shard_items = [items[i] for i in shard]
            acts, forwarded = _compute_shard(
                model,
                shard_items,
                layers,
                params.batch_size,
                tokenizer.pad_token_id,
                device,
                bar.update,
            )
            _write_shard(folder, shard_name(s), [ids[i] for i in shard], shard_items, acts)
            computed += forwarded
            fault_point(f"activation_cache.shard.{s}")
    elapsed = time.perf_counter() - started
    d_model = int(model.config.get_text_config().hidden_size)
    meta = {
        "layers": layers,
        "positions": params.positions,
        "d_model": d_model,
        "dtype": "bfloat16",
        "shards": [shard_name(s) for s in range(len(plan))],
        "n_dialogs": len(items),
        "n_read_tokens": sum(len(item.read_positions) for item in items),
    }
    write_meta(workdir, meta)
    info.update(
        n_dialogs=len(items),
        n_shards=len(plan),
        n_read_tokens=meta["n_read_tokens"],
        n_input_tokens=total,
        resumed_shards=sum(done),
        tokens_per_s=round(computed / elapsed, 1) if computed and elapsed > 0 else None,
        device=str(device),
    )


class ActivationCache:
    """Read access to a published cache, checked against its manifest."""

    def __init__(self, path: str | os.PathLike, verify: str = "fast"):
        self.path = Path(path)
        self.manifest = store.read_manifest(self.path, verify=verify)
        self.meta = read_meta(self.path)
        self._where: dict[tuple[str, int], tuple[str, int, int]] = {}
        self._positions: dict[str, list[int]] = {}
        self._order: list[str] = []
        for name in self.meta["shards"]:
            index = pl.read_parquet(self.path / SHARDS / f"{name}.index.parquet")
            for row in index.iter_rows(named=True):
                self._where[(row["id"], row["layer"])] = (name, row["offset"], row["length"])
                if row["id"] not in self._positions:
                    self._positions[row["id"]] = list(row["read_positions"])
                    self._order.append(row["id"])
        self._handles: dict[str, Any] = {}

    def __getstate__(self):
        # safetensors handles do not pickle; a copy (a DataLoader worker) reopens its own.
        return {**self.__dict__, "_handles": {}}

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, dialog_id: str) -> bool:
        return dialog_id in self._positions

    @property
    def d_model(self) -> int:
        return int(self.meta["d_model"])

    def ids(self) -> list[str]:
        return list(self._order)

    def layers(self) -> list[int]:
        return list(self.meta["layers"])

    def read_positions(self, dialog_id: str) -> list[int]:
        if dialog_id not in self._positions:
            raise KeyError(f"{self.path}: no cached activations for dialog {dialog_id!r}")
        return list(self._positions[dialog_id])

    def get(self, dialog_id: str, layer: int) -> torch.Tensor:
        """The dialog's read activations at block ``layer``: (n, D) float32."""
        from safetensors import safe_open

        try:
            name, offset, length = self._where[(dialog_id, layer)]
        except KeyError:
            raise KeyError(
                f"{self.path}: no activations for dialog {dialog_id!r} at layer "
                f"{layer} (cached layers: {self.layers()})"
            ) from None
        if name not in self._handles:
            self._handles[name] = safe_open(str(self.path / SHARDS / f"{name}.safetensors"), "pt")
        rows = self._handles[name].get_slice(f"layer_{layer}")[offset : offset + length]
        return rows.float()


def main(argv: list[str] | None = None) -> None:
    """The stage's command line; a killed run resumes from its complete shards."""
    stage.main("activation_cache", CacheParams, run, argv, resumable=(SHARDS,))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
