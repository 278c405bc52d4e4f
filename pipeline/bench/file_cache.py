"""The benchmark's activation cache: computed through the cache stage's read path, written in its
shard layout (one 2-D bf16 tensor per layer and a row index), and read back as
``ActivationCache.get`` does."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.bench.workload import Workload, bf16_autocast, synchronize
from pipeline.mechanism.patching import gather
from pipeline.mechanism.shards import read_batches


def compute_cache(model, work: Workload, layers: list[int], pad_id: int, spec, stop_early=True):
    """bf16 CPU rows per layer and dialog as the cache stage computes them; tokens forwarded."""
    rows: dict[int, list] = {layer: [None] * len(work.reads) for layer in layers}
    forwarded = 0
    with torch.inference_mode(), bf16_autocast(spec):
        batches = read_batches(
            model, work.reads, layers, spec.cache_batch_size, pad_id, spec.device, stop_early
        )
        for chunk, acts, mask in batches:
            forwarded += int(mask.sum())
            for layer in layers:
                picked = gather(acts[layer], [work.reads[i].read_positions for i in chunk])
                for i, value in zip(chunk, picked, strict=True):
                    rows[layer][i] = value.to("cpu", torch.bfloat16)
    synchronize(spec)
    return rows, forwarded


def write_cache(path: Path, ids: list[str], rows: dict[int, list]) -> int:
    """One 2-D bf16 tensor per layer (the shard layout) with its row index; returns bytes."""
    from safetensors.torch import save_file

    lengths = [int(r.shape[0]) for r in next(iter(rows.values()))]
    offsets = [sum(lengths[:i]) for i in range(len(lengths))]
    index = {i: [o, n] for i, o, n in zip(ids, offsets, lengths, strict=True)}
    tensors = {f"layer_{layer}": torch.cat(chunks).contiguous() for layer, chunks in rows.items()}
    save_file(tensors, str(path), metadata={"index": json.dumps(index)})
    return path.stat().st_size


class FileCache:
    """Rows of a written cache, sliced from the file as ``ActivationCache.get`` does."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.handle = safe_open(str(path), "pt")
        self.index = json.loads(self.handle.metadata()["index"])

    def get(self, dialog_id: str, layer: int) -> torch.Tensor:
        offset, length = self.index[dialog_id]
        return self.handle.get_slice(f"layer_{layer}")[offset : offset + length].float()
