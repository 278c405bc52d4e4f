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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.bench.tensor_memory import peak_tensor_bytes, storage_bytes
from pipeline.bench.workload import (
    BenchSpec,
    FileCache,
    Workload,
    bf16_autocast,
    build_workload,
    compute_cache,
    load_base,
    resolve_caching_layer,
    resolve_read_layer,
    synchronize,
    target_activations,
    template_dialogs,
    write_cache,
)
from pipeline.mechanism.decoder import answer_loss, collate
from pipeline.mechanism.lora import (
    adapter_blocks,
    add_lora,
    enable_gradient_checkpointing,
    trainable_parameters,
)
from pipeline.mechanism.modeling import decoder_layers

H100_BF16_PEAK_FLOPS = 989e12

# --- training ----------------------------------------------------------------------------------


@dataclass
class Trainer:
    """One design's models and optimizer; ``step`` runs one decoder-training step."""

    design: str
    decoder: Any
    target: Any
    cache: FileCache | None
    work: Workload
    spec: BenchSpec
    layer: int
    pad_id: int
    optimizer: Any = None

    def __post_init__(self):
        self.decoder.train()
        self.optimizer = torch.optim.AdamW(trainable_parameters(self.decoder), lr=self.spec.lr)

    def activations(self, indices: list[int], layer: int) -> list[torch.Tensor]:
        if self.design == "c":
            return [self.cache.get(self.work.ids[i], layer) for i in indices]
        reads = [self.work.reads[i] for i in indices]
        if self.design == "a":
            early = self.spec.reference_target == "early"
            return target_activations(self.target, reads, layer, self.pad_id, self.spec, early)
        self.decoder.eval()  # the target runs without the adapter's dropout
        with self.decoder.disable_adapter():
            acts = target_activations(self.decoder, reads, layer, self.pad_id, self.spec, True)
        self.decoder.train()
        return acts

    def step(self, indices: list[int], layer: int | None = None) -> int:
        """One optimizer step on ``indices``; returns the decoder tokens it trained on."""
        layer = self.layer if layer is None else layer
        acts = self.activations(indices, layer)
        batch = collate([self.work.examples[i] for i in indices], acts, self.pad_id)
        batch = batch.to(self.spec.device)
        with bf16_autocast(self.spec):
            loss = answer_loss(self.decoder, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable_parameters(self.decoder), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return int(batch.attention_mask.sum())


def with_adapter(base, spec: BenchSpec):
    """The decoder: ``base`` with the LoRA adapter the spec describes (alpha = 2r)."""
    layers = adapter_blocks(spec.lora_blocks, spec.write_layer, len(decoder_layers(base)))
    return add_lora(
        base,
        r=spec.lora_r,
        alpha=2 * spec.lora_r,
        dropout=spec.lora_dropout,
        seed=spec.seed,
        layers=layers,
    )


def make_trainer(design: str, spec: BenchSpec, cache_path: Path | None, work=None) -> Trainer:
    base, tokenizer = load_base(spec)
    layer = resolve_read_layer(spec, len(decoder_layers(base)))
    target = load_base(spec)[0] if design == "a" else None  # the reference's second copy
    if work is None:
        dialogs = template_dialogs(spec.templates_dir, spec.examples, spec.seed)
        work = build_workload(tokenizer, dialogs, spec.batch_size, spec.seed, spec.write_layer)
    decoder = with_adapter(base, spec)
    if spec.gradient_checkpointing:
        enable_gradient_checkpointing(decoder)
    cache = FileCache(cache_path) if design == "c" else None
    return Trainer(design, decoder, target, cache, work, spec, layer, tokenizer.pad_token_id)


def model_flops(trainer: Trainer, indices: list[int]) -> float:
    """FLOPs of one step: 2·N·tokens for the decoder's forward and as much again for the
    input-gradient backward through the frozen base blocks that have adapters (all, or from the
    write block up), attention (4·L·d·s² per sequence forward, twice that backward) and the
    vocabulary projection where ``answer_loss`` keeps logits; plus the target's forward for (a)
    and (b)."""
    config = trainer.decoder.config.get_text_config()
    n_layers, d, vocab = config.num_hidden_layers, config.hidden_size, config.vocab_size
    block = sum(
        p.numel()
        for n, p in decoder_layers(trainer.decoder)[0].named_parameters()
        if "lora_" not in n
    )
    examples = [trainer.work.examples[i] for i in indices]
    tokens = sum(len(ex.input_ids) for ex in examples)
    squares = sum(len(ex.input_ids) ** 2 for ex in examples)
    kept = {j for ex in examples for j, t in enumerate(ex.labels[1:]) if t != -100}
    from_write = trainer.spec.lora_blocks == "from_write"
    backward = n_layers - trainer.spec.write_layer if from_write else n_layers  # blocks
    flops = 2 * (n_layers + backward) * block * tokens + 4 * (n_layers + 2 * backward) * d * squares
    flops += 4 * vocab * d * len(examples) * len(kept)
    if trainer.design != "c":
        full = trainer.design == "a" and trainer.spec.reference_target == "full"
        depth = n_layers if full else trainer.layer + 1
        lengths = [len(trainer.work.reads[i].input_ids) for i in indices]
        flops += 2 * depth * block * sum(lengths) + 4 * depth * d * sum(n * n for n in lengths)
        flops += 2 * vocab * d * sum(lengths) if full else 0
    return float(flops)


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
