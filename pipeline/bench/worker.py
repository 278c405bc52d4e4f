"""One benchmark worker: a design's training steps, the caching pass, the scaling table or the
largest-batch search, each in its own process so that its peak memory is its own.

``python -m pipeline.bench.benchmark --worker TASK --result OUT`` runs one task (``worker_main``).
"""

from __future__ import annotations

import gc
import json
import os
import random
import resource
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.bench.file_cache import FileCache, compute_cache, write_cache
from pipeline.bench.tensor_memory import peak_tensor_bytes, storage_bytes
from pipeline.bench.trainer import (
    H100_BF16_PEAK_FLOPS,
    Trainer,
    make_trainer,
    model_flops,
    with_adapter,
)
from pipeline.bench.workload import (
    BenchSpec,
    build_workload,
    load_base,
    resolve_caching_layer,
    resolve_read_layer,
    synchronize,
    template_dialogs,
)
from pipeline.mechanism.modeling import decoder_layers

# --- workers (one per subprocess) --------------------------------------------------------------


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def weights_bytes(*models) -> int:
    """Bytes of the distinct parameter storages of ``models`` (tied weights counted once)."""
    return storage_bytes(p for model in models if model is not None for p in model.parameters())


def run_design(spec: BenchSpec, design: str, cache_path: Path | None) -> dict:
    """Train ``warmup + steps`` steps of one design; tokens/s of the timed ones, peak memory.

    On CPU the peak tensor memory comes from one more, profiled and untimed, step on the timed
    batch with the most decoder tokens (padded), after the peak RSS is read."""
    on_cuda = torch.device(spec.device).type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    baseline = _peak_rss()
    trainer = make_trainer(design, spec, cache_path)
    batches = trainer.work.batches
    for s in range(spec.warmup):
        trainer.step(batches[s % len(batches)])
    synchronize(spec)
    timed = [batches[s % len(batches)] for s in range(spec.warmup, spec.warmup + spec.steps)]
    tokens, started = 0, time.perf_counter()
    for indices in timed:
        tokens += trainer.step(indices)
    synchronize(spec)
    seconds = time.perf_counter() - started
    flops = sum(model_flops(trainer, indices) for indices in timed)
    rss = None if on_cuda else _peak_rss()
    if on_cuda:
        tensor_peak = int(torch.cuda.max_memory_allocated())
    else:
        examples = trainer.work.examples
        largest = max(timed, key=lambda b: len(b) * max(len(examples[i].input_ids) for i in b))
        tensor_peak = peak_tensor_bytes(lambda: trainer.step(largest))
    return {
        "design": design,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "peak_tensor_bytes": tensor_peak,
        "peak_rss_bytes": rss,
        "peak_rss_net_bytes": None if on_cuda else rss - baseline,
        "weights_bytes": weights_bytes(trainer.decoder, trainer.target),
        "model_flops_per_s": flops / seconds,
        "mfu": flops / seconds / H100_BF16_PEAK_FLOPS if on_cuda else None,
        "read_layer": trainer.layer,
    }


def run_caching(spec: BenchSpec, cache_path: Path | None) -> dict:
    """Caching tokens/s with the early stop (at the caching layer) and with a full forward; writes
    the cache file (at the read layer) that (c) trains from."""
    model, tokenizer = load_base(spec)
    n_blocks = len(decoder_layers(model))
    read_layer = resolve_read_layer(spec, n_blocks)
    layer = resolve_caching_layer(spec, read_layer, n_blocks)
    dialogs = template_dialogs(spec.templates_dir, spec.examples, spec.seed)
    work = build_workload(tokenizer, dialogs, spec.batch_size, spec.seed, spec.write_layer)
    pad = tokenizer.pad_token_id
    result: dict[str, Any] = {
        "read_layer": read_layer,
        "caching_layer": layer,
        "n_layers": n_blocks,
        "environment": environment(spec),
    }
    modes = {"early_stop": True, "full_forward": False}
    for early in modes.values():  # warm both modes (kernels, allocator) before any timing
        cached, _ = compute_cache(model, work, [layer], pad, spec, stop_early=early)
    samples: dict[str, list[float]] = {name: [] for name in modes}
    for round_ in range(spec.caching_rounds):
        # Alternate the order, so that neither mode always runs right after the other.
        for name in sorted(modes, reverse=bool(round_ % 2)):
            started = time.perf_counter()
            rows, tokens = compute_cache(model, work, [layer], pad, spec, stop_early=modes[name])
            samples[name].append(tokens / (time.perf_counter() - started))
            if modes[name]:
                cached = rows
    for name, rates in samples.items():
        result[name] = {
            "tokens": tokens,
            "tokens_per_s": statistics.median(rates),
            "samples_tokens_per_s": rates,
        }
    if cache_path is not None and not cache_path.exists():
        if layer != read_layer:  # untimed: (c) reads the training read layer
            cached, _ = compute_cache(model, work, [read_layer], pad, spec)
        result["cache_bytes"] = write_cache(cache_path, work.ids, cached)
    return result


def environment(spec: BenchSpec) -> dict[str, Any]:
    """The machine and library versions a figure was measured with."""
    import platform

    import peft
    import transformers

    env: dict[str, Any] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    if spec.device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            out = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True)
            env["driver"] = out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            env["driver"] = None
    return env


def run_scaling(spec: BenchSpec, workdir: Path, sizes=None, layer_counts=(1, 2, 4)) -> list[dict]:
    """Caching time, cache size and one epoch of (c) against examples and read layers."""
    model, tokenizer = load_base(spec)
    n_blocks = len(decoder_layers(model))
    layer = resolve_read_layer(spec, n_blocks)
    sizes = sizes or sorted(
        {max(spec.batch_size, spec.examples // 4), spec.examples // 2, spec.examples}
    )
    grid = [(n, 1) for n in sizes] + [(spec.examples, k) for k in layer_counts if k > 1]
    base_dialogs = template_dialogs(spec.templates_dir, spec.examples, spec.seed)
    decoder = with_adapter(model, spec)
    pad = tokenizer.pad_token_id
    rows = []
    for n, k in grid:
        step = max(1, layer // max(1, k))
        layers = sorted({max(0, layer - j * step) for j in range(k)})
        work = build_workload(
            tokenizer, base_dialogs[:n], spec.batch_size, spec.seed, spec.write_layer
        )
        path = workdir / f"scaling_{n}_{k}.safetensors"
        decoder.eval()
        started = time.perf_counter()
        with decoder.disable_adapter():
            acts, _ = compute_cache(decoder, work, layers, pad, spec)
        cache_seconds = time.perf_counter() - started
        size = write_cache(path, work.ids, acts)
        trainer = Trainer("c", decoder, None, FileCache(path), work, spec, layer, pad)
        pick = random.Random(spec.seed)
        started = time.perf_counter()
        for indices in work.batches:  # one epoch; a read layer sampled per batch, as training
            trainer.step(indices, pick.choice(layers))
        synchronize(spec)
        rows.append(
            {
                "examples": n,
                "read_layers": len(layers),
                "layers": layers,
                "read_tokens": sum(len(r.read_positions) for r in work.reads),
                "cache_seconds": cache_seconds,
                "cache_bytes": size,
                "train_epoch_seconds": time.perf_counter() - started,
            }
        )
        path.unlink()
    return rows


def largest_batch(spec: BenchSpec, design: str, cache_path: Path | None) -> dict:
    """The largest batch (of the longest examples) one training step fits, by doubling then
    bisection; on CPU the search only stops at ``max_batch``."""
    trainer = make_trainer(design, spec, cache_path)
    longest = sorted(
        range(len(trainer.work.examples)), key=lambda i: -len(trainer.work.examples[i].input_ids)
    )

    def fits(size: int) -> bool:
        indices = [longest[k % len(longest)] for k in range(size)]
        try:
            trainer.step(indices)
            synchronize(spec)
            return True
        except torch.cuda.OutOfMemoryError:
            pass
        trainer.optimizer.zero_grad(set_to_none=True)
        gc.collect()  # the failed step's tensors go with its frame
        torch.cuda.empty_cache()
        return False

    good, bad, size = 0, None, spec.batch_size
    while size <= spec.max_batch and fits(size):
        good, size = size, size * 2
    bad = size if size <= spec.max_batch else None
    while bad is not None and bad - good > max(1, good // 8):
        middle = (good + bad) // 2
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    return {"design": design, "largest_batch": good, "capped": bad is None}


def worker_main(task_path: Path, result_path: Path) -> None:
    task = json.loads(task_path.read_text())
    spec = BenchSpec(**task["spec"])
    cache = Path(task["cache"]) if task.get("cache") else None
    kind = task["kind"]
    if kind == "caching":
        result = run_caching(spec, cache)
    elif kind == "design":
        result = run_design(spec, task["design"], cache)
    elif kind == "largest_batch":
        result = largest_batch(spec, task["design"], cache)
    elif kind == "scaling":
        result = {"rows": run_scaling(spec, Path(task["workdir"]))}
    else:
        raise ValueError(f"unknown worker task {kind!r}")
    result_path.write_text(json.dumps(result))
