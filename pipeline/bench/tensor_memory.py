"""Peak tensor memory on CPU, the quantity ``torch.cuda.max_memory_allocated`` gives on a GPU.

A process's peak RSS also counts imported libraries, model code, the tokenizer and what the
allocator keeps after a free, none of which depends on how a step is designed. These functions
count tensors only: the storages alive before some work, plus the high-water mark of what the
work allocates beyond them, read from the PyTorch profiler's allocator events.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable

import torch


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages under ``tensors``: views and tied weights count once."""
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def live_tensor_bytes() -> int:
    """Bytes of the distinct CPU tensor storages Python reaches."""
    # type(), not isinstance(): the latter reads __class__, which warns on deprecated aliases
    return storage_bytes(
        obj
        for obj in gc.get_objects()
        if issubclass(type(obj), torch.Tensor) and obj.device.type == "cpu"
    )


def peak_tensor_bytes(work: Callable[[], object]) -> int:
    """Peak bytes of CPU tensors while ``work()`` runs: those alive before it plus the most it
    holds at once. Frees of tensors older than the call are not seen, so the figure is never
    below the truth."""
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    before = live_tensor_bytes()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()  # negative for a free
        peak = max(peak, running)
    return before + peak
