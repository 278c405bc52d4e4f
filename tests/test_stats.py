"""The statistics shared by every scoring stage: bootstrap summaries and the derangement."""

from __future__ import annotations

import pytest

from pipeline.core.stats import derangement, summarize


def test_summarize():
    out = summarize([1.0, 0.0, 1.0, 1.0, None], n_boot=200, seed=0)
    assert out["n"] == 4 and out["mean"] == pytest.approx(0.75)
    assert out["ci95"][0] <= 0.75 <= out["ci95"][1]
    assert summarize([], 10)["mean"] is None
    assert summarize([0.5], 10)["ci95"] == [0.5, 0.5]


def test_derangement_avoids_self_and_label():
    groups = ["a", "a", "a", "b", "b", "c", "d", "d"]
    perm = derangement(groups, seed=3)
    assert sorted(perm) == list(range(len(groups)))
    assert all(groups[p] != g for g, p in zip(groups, perm, strict=True))
    assert derangement(["x", "x", "x"], 0) != [0, 1, 2]  # one label: still never itself
    assert all(p != i for i, p in enumerate(derangement(["x", "x", "x"], 0)))
