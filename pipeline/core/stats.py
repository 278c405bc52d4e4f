"""Statistics every stage that scores items shares: the bootstrap summary of per-item scores, and
the derangement that pairs each item with another item's activations (the shuffled control)."""

from __future__ import annotations

import random
from typing import Any


def summarize(scores: list[float | None], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Mean, standard deviation and bootstrap 95% CI of the mean over items (None = unscored)."""
    import numpy as np

    values = np.array([s for s in scores if s is not None], dtype=float)
    n = int(values.size)
    if n == 0:
        return {"mean": None, "std": None, "ci95": [None, None], "n": 0}
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if n > 1 else 0.0
    if n > 1 and n_boot > 0:
        rng = np.random.default_rng(seed)
        means = values[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
        low, high = (float(x) for x in np.percentile(means, [2.5, 97.5]))
    else:
        low = high = mean
    return {"mean": mean, "std": std, "ci95": [low, high], "n": n}


def derangement(groups: list[str], seed: int) -> list[int]:
    """``perm[i] != i`` for all i, and ``groups[perm[i]] != groups[i]`` whenever no group holds
    more than half the items: items are laid out group by group (groups in seeded order) and each
    takes the activations of the item ``m`` places on, ``m`` being the largest group's size."""
    n = len(groups)
    if n < 2:
        return list(range(n))
    rng = random.Random(seed)
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    names = sorted(by_group)
    rng.shuffle(names)
    layout = [i for name in names for i in by_group[name]]
    shift = max(len(v) for v in by_group.values())
    shift = shift if shift % n else 1
    perm = [0] * n
    for p, i in enumerate(layout):
        perm[i] = layout[(p + shift) % n]
    return perm
