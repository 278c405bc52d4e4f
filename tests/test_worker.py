"""A benchmark worker on a tiny model: the scaling table and the adapter it trains."""

from __future__ import annotations

import pytest
import torch

from pipeline.bench import trainer as bench_trainer
from pipeline.bench import worker as benchmark_worker
from pipeline.bench import workload as benchmark_setup
from pipeline.bench.tensor_memory import live_tensor_bytes, peak_tensor_bytes
from pipeline.bench.workload import BenchSpec


def test_scaling_grows_with_examples_and_layers(tiny_model_dir, tmp_path):
    spec = BenchSpec(model=str(tiny_model_dir), examples=16, batch_size=4, read_layer=3)
    rows = benchmark_worker.run_scaling(spec, tmp_path, sizes=[4, 16], layer_counts=(1, 3))
    by = {(r["examples"], r["read_layers"]): r for r in rows}
    assert set(by) == {(4, 1), (16, 1), (16, 3)}
    assert by[(16, 1)]["read_tokens"] > by[(4, 1)]["read_tokens"]
    assert by[(16, 1)]["cache_bytes"] > by[(4, 1)]["cache_bytes"]
    # bf16 rows: each extra layer adds 2 bytes x read tokens x d (plus a few header bytes)
    extra = by[(16, 3)]["cache_bytes"] - by[(16, 1)]["cache_bytes"]
    assert 0 <= extra - 2 * 2 * by[(16, 1)]["read_tokens"] * 64 < 512
    assert all(r["train_epoch_seconds"] > 0 and r["cache_seconds"] > 0 for r in rows)
    assert not list(tmp_path.glob("*.safetensors"))


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_adapter_dropout_follows_the_spec(tiny_model_dir, dropout):
    from torch import nn

    spec = BenchSpec(model=str(tiny_model_dir), lora_dropout=dropout)
    decoder = bench_trainer.with_adapter(benchmark_setup.load_base(spec)[0], spec)
    layers = [m for n, m in decoder.named_modules() if n.endswith("lora_dropout.default")]
    assert layers
    if dropout:
        assert all(isinstance(m, nn.Dropout) and m.p == dropout for m in layers)
    else:  # PEFT puts no dropout module in at all: no mask, no copy of the input
        assert all(isinstance(m, nn.Identity) for m in layers)


def test_adapters_from_the_write_block_only_shorten_the_backward(tiny_model_dir):
    """``from_write``: blocks below the write block get no adapter, and the step's model FLOPs
    drop by their share of the backward."""
    steps = {}
    for blocks in ("all", "from_write"):
        spec = BenchSpec(
            model=str(tiny_model_dir), examples=4, batch_size=4, read_layer=1, write_layer=2,
            lora_blocks=blocks,
        )  # fmt: skip
        trainer = bench_trainer.make_trainer("b", spec, None)
        adapted = {
            int(n.split("layers.")[1].split(".")[0])
            for n, p in trainer.decoder.named_parameters()
            if p.requires_grad
        }
        assert adapted == ({0, 1, 2, 3} if blocks == "all" else {2, 3})
        indices = trainer.work.batches[0]
        trainer.step(indices)
        steps[blocks] = bench_trainer.model_flops(trainer, indices)
    assert steps["from_write"] < steps["all"]  # the forward runs all 4 blocks, the backward 2
    with pytest.raises(ValueError, match="lora_blocks"):
        base = benchmark_setup.load_base(spec)[0]
        bench_trainer.with_adapter(base, BenchSpec(lora_blocks="below"))


def test_a_steps_tensor_peak_counts_live_tensors_and_grows_with_the_batch(tiny_model_dir):
    spec = BenchSpec(model=str(tiny_model_dir), examples=8, batch_size=8, read_layer=1)
    trainer = bench_trainer.make_trainer("b", spec, None)
    longest = max(range(8), key=lambda i: len(trainer.work.examples[i].input_ids))
    trainer.step([longest])  # the optimizer's state exists from here on
    live = live_tensor_bytes()
    assert live >= benchmark_worker.weights_bytes(trainer.decoder)
    one = peak_tensor_bytes(lambda: trainer.step([longest]))
    eight = peak_tensor_bytes(lambda: trainer.step([longest] * 8))
    assert live < one < eight  # a step's activations come on top, and scale with the batch
    assert peak_tensor_bytes(lambda: trainer.step([longest])) == one  # same step, same bytes


def test_caching_layer_times_one_block_and_caches_the_read_layer(tiny_model_dir, tmp_path):
    from safetensors import safe_open

    spec = BenchSpec(model=str(tiny_model_dir), examples=8, read_layer=2, caching_layer=0)
    path = tmp_path / "cache.safetensors"
    result = benchmark_worker.run_caching(spec, path)
    assert (result["read_layer"], result["caching_layer"]) == (2, 0)
    assert result["early_stop"]["tokens"] == result["full_forward"]["tokens"] > 0
    with safe_open(str(path), "pt") as f:
        assert list(f.keys()) == ["layer_2"]  # what (c) trains from
    with pytest.raises(ValueError, match="caching layer 9"):
        benchmark_worker.run_caching(BenchSpec(model=str(tiny_model_dir), caching_layer=9), None)


def test_caching_modes_are_warmed_then_timed_alternately(tiny_model_dir, monkeypatch):
    """Each mode runs once untimed, then the timed rounds alternate which runs first; the figure
    is the median, and the run records the machine and library versions."""
    calls = []
    real = benchmark_worker.compute_cache

    def counting(model, work, layers, pad, spec, stop_early=True):
        calls.append(stop_early)
        return real(model, work, layers, pad, spec, stop_early=stop_early)

    monkeypatch.setattr(benchmark_worker, "compute_cache", counting)
    spec = BenchSpec(model=str(tiny_model_dir), examples=4, read_layer=1, caching_rounds=3)
    result = benchmark_worker.run_caching(spec, None)
    assert calls == [True, False] + [True, False] + [False, True] + [True, False]
    for mode in ("early_stop", "full_forward"):
        rates = result[mode]["samples_tokens_per_s"]
        assert len(rates) == 3 and result[mode]["tokens_per_s"] == sorted(rates)[1]
    env = result["environment"]
    assert env["torch"] == torch.__version__ and env["transformers"] and env["peft"]
