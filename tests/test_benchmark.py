"""The benchmark on a tiny model: its output structure, and ratios that come from its figures."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys

import pytest

from pipeline.bench import benchmark, figures


def test_run_writes_figures_and_ratios_from_them(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = [
        "--model", str(tiny_model_dir), "--repeats", "1", "--steps", "2", "--warmup", "0",
        "--examples", "8", "--batch-size", "4", "--read-layer", "1", "--json", str(out),
    ]  # fmt: skip
    assert benchmark.main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())

    assert set(result["runs"]) == {"a", "b", "c"}
    assert result["read_layer"] == 1 and result["n_layers"] == 4
    assert result["cache_bytes"] > 0
    for design, runs in result["runs"].items():
        assert len(runs) == 1 and runs[0]["design"] == design
        assert runs[0]["tokens"] > 0 and runs[0]["tokens_per_s"] > 0
        # On CPU the net RSS figure is the high-water mark above the one after imports; a tiny
        # model may never raise it, so it can be 0 there (never negative, never above the peak).
        assert runs[0]["peak_rss_bytes"] > 0
        assert 0 <= runs[0]["peak_rss_net_bytes"] < runs[0]["peak_rss_bytes"]
        # Tensor memory holds at least the weights and never approaches the whole process.
        assert runs[0]["weights_bytes"] < runs[0]["peak_tensor_bytes"] < runs[0]["peak_rss_bytes"]
        assert runs[0]["model_flops_per_s"] > 0 and runs[0]["mfu"] is None  # no CUDA here
    for caching in result["caching_runs"]:
        assert caching["early_stop"]["tokens"] == caching["full_forward"]["tokens"] > 0

    runs, summary = result["runs"], result["summary"]
    tps = {d: runs[d][0]["tokens_per_s"] for d in runs}
    peak = {d: runs[d][0]["peak_tensor_bytes"] for d in runs}
    rss = {d: runs[d][0]["peak_rss_bytes"] for d in runs}
    early = result["caching_runs"][0]["early_stop"]["tokens_per_s"]
    full = result["caching_runs"][0]["full_forward"]["tokens_per_s"]
    expected = {
        "tokens_per_s_c_over_a": tps["c"] / tps["a"],
        "peak_memory_b_over_a": peak["b"] / peak["a"],
        "peak_memory_c_over_a": peak["c"] / peak["a"],
        "caching_early_over_full": early / full,
    }
    assert summary["ratios"]["peak_rss_c_over_a"] == pytest.approx(rss["c"] / rss["a"])
    for name, value in expected.items():
        assert math.isclose(summary["ratios"][name], value, rel_tol=1e-9)
        target = summary["targets"][name]
        op, threshold = target["target"].split()
        assert target["met"] == (
            value >= float(threshold) if op == ">=" else value <= float(threshold)
        )
        assert f"| {name} | {value:.2f} |" in printed
    # The reference holds two copies of the weights; a shared copy cannot need more.
    weights = {d: runs[d][0]["weights_bytes"] for d in runs}
    assert weights["a"] > 1.5 * weights["b"] and weights["b"] == weights["c"]
    # Peak RSS of a tiny model is set by the imports, so (a) may tie (b) here; never below it.
    assert rss["a"] >= rss["b"]
    # Tensor memory sees the second copy whatever the imports: (a) holds more than the weights'
    # difference above (b).
    assert peak["a"] - peak["b"] >= weights["a"] - weights["b"]
    assert "(c) 1 copy, cached activations" in printed


def test_summarize_takes_medians_per_design():
    def run(tps, peak):
        return {"tokens_per_s": tps, "peak_tensor_bytes": peak, "peak_rss_bytes": 2 * peak}

    runs = {
        "a": [run(10, 100), run(30, 300), run(20, 200)],
        "b": [run(11, 50), run(12, 60), run(13, 70)],
        "c": [run(50, 40), run(40, 50), run(45, 90)],
    }
    caching = [
        {"early_stop": {"tokens_per_s": e}, "full_forward": {"tokens_per_s": f}}
        for e, f in ((30, 10), (40, 20), (50, 30))
    ]
    summary = figures.summarize(runs, caching)
    assert summary["designs"]["a"]["tokens_per_s"] == 20
    assert summary["ratios"]["tokens_per_s_c_over_a"] == pytest.approx(45 / 20)
    assert summary["ratios"]["peak_memory_b_over_a"] == pytest.approx(60 / 200)
    assert summary["ratios"]["peak_memory_c_over_a"] == pytest.approx(50 / 200)
    # medians of each variant, not a median of per-repeat ratios
    assert summary["ratios"]["caching_early_over_full"] == pytest.approx(40 / 20)
    assert all(t["met"] for t in summary["targets"].values())
    slow = {**runs, "c": [run(21, 150)] * 3}
    assert figures.summarize(slow, caching)["targets"]["tokens_per_s_c_over_a"]["met"] is False


def test_importable_without_polars_or_snakemake():
    code = (
        "import sys; sys.modules['polars'] = None; sys.modules['snakemake'] = None; "
        "import pipeline.bench.benchmark"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_median_ignores_missing_figures():
    assert figures.median([{"mfu": None}, {"mfu": 0.5}, {"mfu": 0.3}], "mfu") == statistics.median(
        [0.5, 0.3]
    )


def test_live_memory_workers_get_a_fixed_malloc_mmap_threshold(monkeypatch):
    from pipeline.bench.benchmark import worker_env

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert "MALLOC_MMAP_THRESHOLD_" not in worker_env(False)
    assert worker_env(True)["MALLOC_MMAP_THRESHOLD_"] == "65536"
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert worker_env(True)["MALLOC_MMAP_THRESHOLD_"] == "1048576"  # the user's setting wins
    assert worker_env(True)["PATH"] == worker_env(False)["PATH"] == os.environ["PATH"]
