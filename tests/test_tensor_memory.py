"""Peak tensor memory on CPU against allocations of known size."""

from __future__ import annotations

import torch

from pipeline.bench.tensor_memory import live_tensor_bytes, peak_tensor_bytes

MIB = 1 << 20


def _allocate():
    """8 MiB, then 16 MiB more beside it (24 MiB at once), then 20 MiB alone."""
    first = torch.empty(2 * MIB)
    second = torch.empty(4 * MIB)
    del first, second
    torch.empty(5 * MIB)


def test_live_tensor_bytes_counts_a_storage_once_however_many_views():
    before = live_tensor_bytes()
    held = torch.ones(MIB)
    views = [held[:1024], held.view(1024, -1)]
    assert live_tensor_bytes() - before == held.nbytes
    del held, views
    assert live_tensor_bytes() == before


def test_peak_is_what_is_live_plus_the_works_high_water_mark():
    held = torch.ones(MIB)  # 4 MiB alive before the work
    before = live_tensor_bytes()
    assert before >= held.nbytes
    assert abs(peak_tensor_bytes(_allocate) - before - 24 * MIB) < 64 * 1024


def test_memory_kept_by_the_work_counts_at_its_highest():
    kept = []
    peak = peak_tensor_bytes(lambda: kept.append(torch.empty(3 * MIB)))
    assert abs(peak - (live_tensor_bytes() - kept[0].nbytes) - 12 * MIB) < 64 * 1024
