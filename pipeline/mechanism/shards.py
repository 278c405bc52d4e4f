"""Read activations in shards, as both caches keep them (the activation cache the decoder trains
on, the layer cache the readers fit on).

A cache folder holds ``shards/NNNNN.safetensors`` (its tensors) and ``shards/NNNNN.index.parquet``
(a row per item, each cache with its own columns, ``id`` among them). Each file is written under a
temporary name and renamed into place, the index last: a shard is complete once its index exists
and names the shard's items, so a killed run resumes by skipping the complete shards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pipeline.mechanism.dialogs import TokenizedRead
from pipeline.mechanism.patching import pad_batch, read_activations

if TYPE_CHECKING:
    import polars as pl

SHARDS = "shards"
"""The folder of a cache that holds its shards."""


def shard_name(index: int) -> str:
    return f"{index:05d}"


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` then rename ``tmp`` to ``path``: a reader sees the whole file or none."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


META = "cache.json"
"""A cache's description beside its shards, written last (after every shard is complete)."""


def write_meta(workdir: Path, meta: dict) -> None:
    """Write the cache's ``cache.json`` atomically."""
    write_atomic(workdir / META, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))


def read_meta(path: Path) -> dict:
    return json.loads((path / META).read_text())


def shard_folder(workdir: Path) -> Path:
    """The cache's shard folder, made if new; a killed run's unfinished temporary files go."""
    folder = Path(workdir) / SHARDS
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.tmp"):
        stale.unlink()
    return folder


def shard_complete(folder: Path, name: str, ids: list[str]) -> bool:
    """Whether shard ``name`` was written whole and holds the items ``ids``, in this order."""
    index = folder / f"{name}.index.parquet"
    if not (index.exists() and (folder / f"{name}.safetensors").exists()):
        return False
    import polars as pl  # here: the benchmark reads through this module on nodes without polars

    try:
        stored = pl.read_parquet(index, columns=["id"])["id"].unique(maintain_order=True)
    except Exception:  # an unreadable index is as good as none: recompute the shard
        return False
    # An index may hold several rows per item (one per layer), in item order.
    return stored.to_list() == list(dict.fromkeys(ids))


def write_shard(
    folder: Path, name: str, tensors: dict[str, torch.Tensor], index: pl.DataFrame
) -> None:
    """Write one shard: its tensors, then its index, which marks it complete."""
    from safetensors.torch import save_file

    write_atomic(folder / f"{name}.safetensors", lambda p: save_file(tensors, str(p)))
    write_atomic(folder / f"{name}.index.parquet", lambda p: index.write_parquet(p))


def read_batches(
    model,
    items: list[TokenizedRead],
    layers: list[int],
    batch_size: int,
    pad_id: int,
    device,
    stop_early: bool = True,
) -> Iterator[tuple[list[int], dict[int, torch.Tensor], torch.Tensor]]:
    """The target's residuals at ``layers`` for ``items``, ``batch_size`` dialogs a forward.

    Yields (the items' indices, {layer: (B, T, D) activations}, the (B, T) attention mask).
    Similar lengths share a batch so little is spent on padding; the caller puts each item back
    in its place by its index. ``stop_early``: as ``read_activations``.
    """
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, mask = pad_batch([items[i].input_ids for i in chunk], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        yield chunk, read_activations(model, ids, mask, layers, stop_early=stop_early), mask
