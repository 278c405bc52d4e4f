"""Benchmarks: decoder training and activation caching, side by side with the reference design.

``python -m pipeline.benchmark --model DIR`` (a prepared folder) or ``--config llama3-8b
--tokenizer DIR`` (random Llama-3-8B-shaped weights, bf16, CUDA) measures, on the same model and
the same batches, decoder-training tokens/s and peak memory of three designs:

- (a) the reference design: a separate frozen target model plus the decoder (base + LoRA), the
  target run on the fly every step with a full forward (as the LatentQA reference code does);
- (b) one shared copy: the target is the decoder's module with the adapter disabled, on the fly,
  stopped after the read layer (what ``pipeline.train`` does in ``on_the_fly`` mode);
- (c) one copy reading cached activations (bf16, precomputed here through the cache stage's read
  path and read back as ``ActivationCache.get`` does);

and activation-caching tokens/s with the early stop versus a full forward. Every (design, repeat)
runs in a fresh subprocess, interleaved, so peak memory (``ru_maxrss`` on CPU,
``torch.cuda.max_memory_allocated`` on CUDA) belongs to one design. ``--scaling`` adds how caching
time, cache size and training time grow with the number of examples and of read layers. Tokens/s
counts the decoder's own (unpadded) tokens, the same work in every design, so its ratios are ratios
of step times. Nothing here needs polars or snakemake.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.decoder import answer_loss, collate
from pipeline.dialogs import build_decoder_example, tokenize_read_dialog
from pipeline.lora import (
    adapter_blocks,
    add_lora,
    enable_gradient_checkpointing,
    trainable_parameters,
)
from pipeline.modeling import (
    attention_implementation,
    decoder_layers,
    load_model,
    load_tokenizer,
    torch_dtype,
)
from pipeline.patching import gather, pad_batch, read_activations

REPO_DIR = Path(__file__).resolve().parents[1]
DESIGNS = {
    "a": "reference: 2 copies, target full forward on the fly",
    "b": "1 shared copy, target on the fly (early stop)",
    "c": "1 copy, cached activations (bf16)",
}
H100_BF16_PEAK_FLOPS = 989e12
LLAMA3_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
CONFIGS = {"llama3-8b": LLAMA3_8B}
TEMPLATE_FILES = ("personas.yaml", "goals.yaml", "scenarios.yaml")
# The template stage stores the target's own ~24-token completion; a fixed reply of that length
# gives the read dialogs the same shape without generating.
COMPLETION = (
    "That is a good question. Let me think about it for a moment and tell you what comes to mind "
    "first, in my own words."
)


@dataclass
class BenchSpec:
    """What every worker of one benchmark run shares."""

    model: str | None = None
    """A prepared model folder (safetensors + tokenizer)."""
    config: str | None = None
    """Instead of ``model``: a named config (``llama3-8b``) built with random weights."""
    config_overrides: dict[str, Any] = field(default_factory=dict)
    """Fields replacing those of the named config (to try the path at a small size)."""
    tokenizer: str | None = None
    """Tokenizer folder for ``config`` (default: the model folder's)."""
    device: str = "cpu"
    """``cpu`` or ``cuda``."""
    dtype: str = "float32"
    """Base weights' dtype; ``bfloat16`` also turns on bf16 autocast as training does."""
    read_layer: int | None = None
    """Block whose output is read (default: min(15, layers // 2))."""
    write_layer: int = 0
    """Decoder block whose output is replaced at the placeholders."""
    batch_size: int = 8
    """Examples per training step."""
    cache_batch_size: int = 8
    """Dialogs per forward when caching."""
    steps: int = 6
    """Timed training steps per repeat."""
    warmup: int = 1
    """Untimed training steps first."""
    examples: int = 64
    """Read dialogs (one QA example each) built from data/templates."""
    lora_r: int = 16
    """LoRA rank (alpha = 2r, as the train stage's defaults)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input (the train stage's default: none)."""
    lora_blocks: str = "all"
    """``all`` blocks get LoRA, or ``from_write``: the write block and above (backward stops)."""
    lr: float = 1e-4
    """AdamW learning rate."""
    seed: int = 0
    """Seed of the data, the batch order, random weights and the adapter."""
    templates_dir: str = "data/templates"
    """Template folder; a relative path starts at the repository root."""
    reference_target: str = "full"
    """(a)'s target forward: ``full`` (the reference code) or ``early`` (stop at the read layer)."""
    max_batch: int = 1024
    """Upper bound of the largest-batch search."""
    gradient_checkpointing: bool = False
    """Recompute each decoder block in the backward pass (every design alike)."""
    live_memory: bool = False
    """Fix glibc's mmap threshold in the workers: peak RSS tracks live memory, steps run slower."""


# --- data --------------------------------------------------------------------------------------


def template_dialogs(templates_dir: str | os.PathLike, n: int, seed: int = 0) -> list[dict]:
    """``n`` read dialogs (masked system control, stimulus, reply) with one QA pair each."""
    import yaml

    folder = Path(templates_dir)
    folder = folder if folder.is_absolute() else REPO_DIR / folder
    controls = []
    for name in TEMPLATE_FILES:
        entries = yaml.safe_load((folder / name).read_text(encoding="utf-8")) or []
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or not entry.get("system") or not entry.get("qa"):
                raise ValueError(f"{folder / name}: entry {index}: needs 'system' and 'qa'")
            controls.append(entry)
    stimuli = yaml.safe_load((folder / "stimuli.yaml").read_text(encoding="utf-8"))
    if not controls or not stimuli:
        raise ValueError(f"{folder}: no templates or no stimuli")
    rng = random.Random(seed)
    rng.shuffle(controls)
    dialogs = []
    for i in range(n):
        control = controls[i % len(controls)]
        qa = control["qa"][(i // len(controls)) % len(control["qa"])]
        messages = [
            {"role": "system", "content": control["system"]},
            {"role": "user", "content": rng.choice(stimuli)},
            {"role": "assistant", "content": COMPLETION},
        ]
        dialogs.append(
            {"id": f"bench-{i:05d}", "messages": messages, "n_masked_turns": 1, "qa": qa}
        )
    return dialogs


@dataclass
class Workload:
    ids: list[str]
    reads: list
    """``TokenizedRead`` per dialog."""
    examples: list
    """``DecoderExample`` per dialog (its QA pair)."""
    batches: list[list[int]]
    """Length-bucketed batches in a seeded order, the same for every design."""


def build_workload(tokenizer, dialogs: list[dict], batch_size: int, seed: int = 0) -> Workload:
    reads, examples = [], []
    for d in dialogs:
        read = tokenize_read_dialog(tokenizer, d["messages"], d["n_masked_turns"])
        reads.append(read)
        qa = d["qa"]
        examples.append(
            build_decoder_example(tokenizer, read.read_positions, qa["question"], qa["answer"])
        )
    order = sorted(range(len(dialogs)), key=lambda i: len(examples[i].input_ids))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    random.Random(seed).shuffle(batches)
    return Workload([d["id"] for d in dialogs], reads, examples, batches)


# --- models ------------------------------------------------------------------------------------


SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def load_owned(path: Path, dtype: str):
    """A prepared model whose weights live in this process's own memory, on CPU.

    ``from_pretrained`` maps the safetensors file and its weights stay file-backed: two loads of
    one file share the page cache while ``ru_maxrss`` counts them twice. Reading the tensors with
    plain file reads gives each copy its own memory, as on a GPU, so peak RSS is what a copy costs.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForCausalLM.from_config(
        config, dtype=torch_dtype(dtype), attn_implementation="sdpa"
    )
    state = model.state_dict()
    loaded = set()
    files = sorted(path.glob("*.safetensors"))
    with torch.no_grad():
        for file in files:
            with open(file, "rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(size))
                for name, info in header.items():
                    if name == "__metadata__":
                        continue
                    if name not in state or info["dtype"] not in SAFETENSORS_DTYPES:
                        raise ValueError(f"{file}: tensor {name!r} ({info['dtype']}) not loadable")
                    buffer = torch.empty(info["shape"], dtype=SAFETENSORS_DTYPES[info["dtype"]])
                    handle.seek(8 + size + info["data_offsets"][0])
                    handle.readinto(buffer.view(-1).view(torch.uint8).numpy())
                    state[name].copy_(buffer)
                    loaded.add(state[name].data_ptr())
    missing = [name for name, t in state.items() if t.data_ptr() not in loaded]
    missing = [name for name in missing if "rotary" not in name]  # computed buffers
    if not files or missing:
        raise ValueError(f"{path}: weights missing from its safetensors files: {missing[:5]}")
    return model


def load_base(spec: BenchSpec):
    """(model, tokenizer): a prepared folder, or random weights from a named config."""
    if spec.model and torch.device(spec.device).type == "cpu":
        model, tokenizer = load_owned(Path(spec.model), spec.dtype), load_tokenizer(spec.model)
    elif spec.model:
        model, tokenizer = load_model(spec.model, spec.dtype, spec.device)
    else:
        from transformers import AutoModelForCausalLM, LlamaConfig

        if spec.config not in CONFIGS or not spec.tokenizer:
            raise ValueError(f"--config must be one of {sorted(CONFIGS)} with --tokenizer DIR")
        config = LlamaConfig(**{**CONFIGS[spec.config], **spec.config_overrides})
        tokenizer = load_tokenizer(spec.tokenizer)
        if len(tokenizer) > config.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} ids, config {config.vocab_size}")
        torch.manual_seed(spec.seed)
        with torch.device(spec.device):
            model = AutoModelForCausalLM.from_config(
                config,
                dtype=torch_dtype(spec.dtype),
                attn_implementation=attention_implementation(spec.device),
            )
    model.requires_grad_(False)
    return model.eval(), tokenizer


def resolve_read_layer(spec: BenchSpec, n_blocks: int) -> int:
    layer = min(15, n_blocks // 2) if spec.read_layer is None else spec.read_layer
    if not 0 <= layer < n_blocks or not 0 <= spec.write_layer < n_blocks:
        raise ValueError(f"read/write layer {layer}/{spec.write_layer}: model has {n_blocks}")
    return layer


def _autocast(spec: BenchSpec):
    return torch.autocast(
        torch.device(spec.device).type, dtype=torch.bfloat16, enabled=spec.dtype == "bfloat16"
    )


def _sync(spec: BenchSpec) -> None:
    if torch.device(spec.device).type == "cuda":
        torch.cuda.synchronize()


def _padded(reads, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = pad_batch([r.input_ids for r in reads], pad_id)
    return ids.to(device), mask.to(device)


def target_activations(model, reads, layer: int, pad_id: int, spec: BenchSpec, stop_early: bool):
    """Read activations (n_i, D) per dialog through the pipeline's read path, no gradients."""
    ids, mask = _padded(reads, pad_id, spec.device)
    with torch.no_grad(), _autocast(spec):
        out = read_activations(model, ids, mask, [layer], stop_early=stop_early)[layer]
    return gather(out, [r.read_positions for r in reads])


# --- the cache ---------------------------------------------------------------------------------


def compute_cache(model, work: Workload, layers: list[int], pad_id: int, spec, stop_early=True):
    """bf16 CPU rows per layer and dialog as the cache stage computes them; tokens forwarded."""
    rows: dict[int, list] = {layer: [None] * len(work.reads) for layer in layers}
    order = sorted(range(len(work.reads)), key=lambda i: len(work.reads[i].input_ids))
    forwarded = 0
    with torch.inference_mode(), _autocast(spec):
        for start in range(0, len(order), spec.cache_batch_size):
            chunk = order[start : start + spec.cache_batch_size]
            ids, mask = _padded([work.reads[i] for i in chunk], pad_id, spec.device)
            acts = read_activations(model, ids, mask, layers, stop_early=stop_early)
            forwarded += int(mask.sum())
            for layer in layers:
                picked = gather(acts[layer], [work.reads[i].read_positions for i in chunk])
                for i, value in zip(chunk, picked, strict=True):
                    rows[layer][i] = value.to("cpu", torch.bfloat16)
    _sync(spec)
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
        with _autocast(self.spec):
            loss = answer_loss(self.decoder, batch, self.spec.write_layer)
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
        work = build_workload(tokenizer, dialogs, spec.batch_size, spec.seed)
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


def _peak_memory(spec: BenchSpec) -> int:
    if torch.device(spec.device).type == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _start_memory(spec: BenchSpec) -> int:
    if torch.device(spec.device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return _peak_memory(spec)


def weights_bytes(*models) -> int:
    """Bytes of the distinct parameter storages of ``models`` (tied weights counted once)."""
    storages = {}
    for model in models:
        for param in model.parameters() if model is not None else ():
            storage = param.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def run_design(spec: BenchSpec, design: str, cache_path: Path | None) -> dict:
    """Train ``warmup + steps`` steps of one design; tokens/s of the timed ones, peak memory."""
    baseline = _start_memory(spec)
    trainer = make_trainer(design, spec, cache_path)
    batches = trainer.work.batches
    for s in range(spec.warmup):
        trainer.step(batches[s % len(batches)])
    _sync(spec)
    timed = [batches[s % len(batches)] for s in range(spec.warmup, spec.warmup + spec.steps)]
    tokens, started = 0, time.perf_counter()
    for indices in timed:
        tokens += trainer.step(indices)
    _sync(spec)
    seconds = time.perf_counter() - started
    flops = sum(model_flops(trainer, indices) for indices in timed)
    peak = _peak_memory(spec)
    on_cuda = torch.device(spec.device).type == "cuda"
    return {
        "design": design,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "peak_memory_bytes": peak,
        "peak_memory_net_bytes": peak - baseline if not on_cuda else peak,
        "weights_bytes": weights_bytes(trainer.decoder, trainer.target),
        "model_flops_per_s": flops / seconds,
        "mfu": flops / seconds / H100_BF16_PEAK_FLOPS if on_cuda else None,
        "read_layer": trainer.layer,
    }


def run_caching(spec: BenchSpec, cache_path: Path | None) -> dict:
    """Caching tokens/s with the early stop and with a full forward; writes the cache file."""
    model, tokenizer = load_base(spec)
    layer = resolve_read_layer(spec, len(decoder_layers(model)))
    dialogs = template_dialogs(spec.templates_dir, spec.examples, spec.seed)
    work = build_workload(tokenizer, dialogs, spec.batch_size, spec.seed)
    pad = tokenizer.pad_token_id
    warm = Workload(work.ids[:1], work.reads[:1], work.examples[:1], [[0]])
    compute_cache(model, warm, [layer], pad, spec)
    result: dict[str, Any] = {"read_layer": layer, "n_layers": len(decoder_layers(model))}
    for name, early in (("early_stop", True), ("full_forward", False)):
        started = time.perf_counter()
        rows, tokens = compute_cache(model, work, [layer], pad, spec, stop_early=early)
        seconds = time.perf_counter() - started
        result[name] = {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}
        if early and cache_path is not None and not cache_path.exists():
            result["cache_bytes"] = write_cache(cache_path, work.ids, rows)
    return result


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
        work = build_workload(tokenizer, base_dialogs[:n], spec.batch_size, spec.seed)
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
        _sync(spec)
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
            _sync(spec)
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


# --- the parent --------------------------------------------------------------------------------


def worker_env(live_memory: bool) -> dict[str, str]:
    """The workers' environment; with ``live_memory``, glibc's malloc with a fixed mmap threshold.

    By default glibc raises the threshold after each large free, so later large buffers come from
    the heap and stay resident after they are freed: peak RSS then also measures the allocator
    (about 1.1 GiB more for SmolLM2 at batch 8). A fixed threshold returns freed buffers to the
    system, at the price of a page-faulting mmap per large buffer (tokens/s falls by about 45%
    on this CPU), so it is an option. Other C libraries ignore the variable; an explicit setting
    is kept.
    """
    if not live_memory:
        return dict(os.environ)
    return {"MALLOC_MMAP_THRESHOLD_": "65536", **os.environ}


def run_task(task: dict, workdir: Path) -> dict:
    """Run one task in a fresh Python process and return what it wrote."""
    name = f"{task['kind']}_{task.get('design', '')}_{time.monotonic_ns()}"
    task_path, result_path = workdir / f"{name}.task.json", workdir / f"{name}.result.json"
    task_path.write_text(json.dumps(task))
    command = [
        sys.executable,
        "-m",
        "pipeline.benchmark",
        "--worker",
        str(task_path),
        "--result",
        str(result_path),
    ]
    proc = subprocess.run(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=worker_env(task["spec"].get("live_memory", False)),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(result_path.read_text())


def _median(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return top / bottom if top is not None and bottom else None


TARGETS = {  # ratio name: (comparison, threshold) from issue 7
    "tokens_per_s_c_over_a": (">=", 1.4),
    "peak_memory_b_over_a": ("<=", 0.6),
    "peak_memory_c_over_a": ("<=", 0.6),
    "caching_early_over_full": (">=", 1.6),
}


def summarize(runs: dict[str, list[dict]], caching: list[dict]) -> dict:
    """Medians per design and the issue's ratios, all computed from the measured runs."""
    designs = {}
    for design, items in runs.items():
        designs[design] = {
            "label": DESIGNS[design],
            "tokens_per_s": _median(items, "tokens_per_s"),
            "peak_memory_bytes": _median(items, "peak_memory_bytes"),
            "peak_memory_net_bytes": _median(items, "peak_memory_net_bytes"),
            "weights_bytes": _median(items, "weights_bytes"),
            "model_flops_per_s": _median(items, "model_flops_per_s"),
            "mfu": _median(items, "mfu"),
        }
    early = statistics.median(c["early_stop"]["tokens_per_s"] for c in caching)
    full = statistics.median(c["full_forward"]["tokens_per_s"] for c in caching)

    def get(design, key):
        return designs.get(design, {}).get(key)

    ratios = {
        "tokens_per_s_c_over_a": _ratio(get("c", "tokens_per_s"), get("a", "tokens_per_s")),
        "tokens_per_s_b_over_a": _ratio(get("b", "tokens_per_s"), get("a", "tokens_per_s")),
        "peak_memory_b_over_a": _ratio(
            get("b", "peak_memory_bytes"), get("a", "peak_memory_bytes")
        ),
        "peak_memory_c_over_a": _ratio(
            get("c", "peak_memory_bytes"), get("a", "peak_memory_bytes")
        ),
        "caching_early_over_full": _ratio(early, full),
    }
    targets = {}
    for name, (op, threshold) in TARGETS.items():
        value = ratios[name]
        met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        targets[name] = {"value": value, "target": f"{op} {threshold}", "met": met}
    return {
        "designs": designs,
        "caching": {"early_stop_tokens_per_s": early, "full_forward_tokens_per_s": full},
        "ratios": ratios,
        "targets": targets,
    }


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def format_report(result: dict) -> str:
    summary, spec = result["summary"], result["spec"]
    checkpointing = "on" if spec.get("gradient_checkpointing") else "off"
    live = "  live memory (fixed mmap threshold)" if spec.get("live_memory") else ""
    lines = [
        f"model: {result['model']}  device: {result['device']}  repeats: {result['repeats']}  "
        f"batch: {spec['batch_size']}  read layer: {result['read_layer']}  "
        f"write layer: {spec['write_layer']}  LoRA blocks: {spec.get('lora_blocks', 'all')}  "
        f"gradient checkpointing: {checkpointing}{live}",
        "",
        "| design | tokens/s | peak MiB | peak MiB above imports | weights MiB | model TFLOP/s "
        "| MFU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for design, d in summary["designs"].items():
        mfu = "-" if d["mfu"] is None else f"{100 * d['mfu']:.1f}%"
        lines.append(
            f"| ({design}) {d['label']} | {d['tokens_per_s']:.1f} | "
            f"{_mib(d['peak_memory_bytes'])} | {_mib(d['peak_memory_net_bytes'])} | "
            f"{_mib(d['weights_bytes'])} | "
            f"{d['model_flops_per_s'] / 1e12:.3f} | {mfu} |"
        )
    c = summary["caching"]
    lines += [
        "",
        f"caching tokens/s: early stop {c['early_stop_tokens_per_s']:.1f}, "
        f"full forward {c['full_forward_tokens_per_s']:.1f}",
        "",
        "| ratio | value | target | met |",
        "| --- | ---: | --- | --- |",
    ]
    for name, t in summary["targets"].items():
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        lines.append(f"| {name} | {value} | {t['target']} | {t['met']} |")
    if result.get("largest_batch"):
        lines += ["", "| design | largest batch |", "| --- | ---: |"]
        for r in result["largest_batch"]:
            capped = " (search cap)" if r["capped"] else ""
            lines.append(f"| ({r['design']}) | {r['largest_batch']}{capped} |")
    if result.get("scaling"):
        lines += [
            "",
            "| examples | read layers | read tokens | cache s | cache MiB | train epoch s |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in result["scaling"]:
            lines.append(
                f"| {r['examples']} | {r['read_layers']} | {r['read_tokens']} | "
                f"{r['cache_seconds']:.2f} | {r['cache_bytes'] / 2**20:.2f} | "
                f"{r['train_epoch_seconds']:.2f} |"
            )
    return "\n".join(lines)


def benchmark(
    spec: BenchSpec,
    repeats: int = 3,
    designs: str = "abc",
    scaling: bool = False,
    batch_search: bool = False,
    workdir: Path | None = None,
) -> dict:
    """The whole benchmark: per repeat the caching worker, then (a), (b), (c), each fresh."""
    if repeats < 1 or not designs or set(designs) - set(DESIGNS):
        raise ValueError(f"repeats must be >= 1 and designs a subset of {''.join(DESIGNS)}")
    from tqdm import tqdm

    own = workdir is None
    folder = Path(tempfile.mkdtemp(prefix="latentqa-bench-")) if own else Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    cache = folder / "cache.safetensors"
    if cache.exists():
        cache.unlink()
    base = {"spec": asdict(spec), "cache": str(cache), "workdir": str(folder)}
    runs: dict[str, list[dict]] = {d: [] for d in designs}
    caching = []
    bar = tqdm(total=repeats * (1 + len(designs)), desc="benchmark", file=sys.stderr)
    for _ in range(repeats):
        caching.append(run_task({**base, "kind": "caching"}, folder))
        bar.update(1)
        for design in designs:
            runs[design].append(run_task({**base, "kind": "design", "design": design}, folder))
            bar.update(1)
    bar.close()
    result = {
        "model": spec.model or spec.config,
        "device": spec.device,
        "repeats": repeats,
        "read_layer": caching[0]["read_layer"],
        "n_layers": caching[0]["n_layers"],
        "spec": asdict(spec),
        "cache_bytes": caching[0].get("cache_bytes"),
        "runs": runs,
        "caching_runs": caching,
        "summary": summarize(runs, caching),
    }
    if batch_search:
        result["largest_batch"] = [
            run_task({**base, "kind": "largest_batch", "design": d}, folder) for d in designs
        ]
    if scaling:
        result["scaling"] = run_task({**base, "kind": "scaling"}, folder)["rows"]
    if own:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    return result


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", help="a prepared model folder")
    which.add_argument("--config", choices=sorted(CONFIGS), help="random weights of this shape")
    parser.add_argument("--config-overrides", default="{}", help="JSON fields for --config")
    parser.add_argument("--tokenizer", help="tokenizer folder (needed with --config)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--dtype", default=None, help="default float32 (--model), bf16 (--config)")
    parser.add_argument("--read-layer", type=int, default=None)
    parser.add_argument("--write-layer", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cache-batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per repeat")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-dropout", type=float, default=0.0, help="the train stage's: 0")
    parser.add_argument(
        "--lora-blocks", choices=("all", "from_write"), default="all", help="as train.lora_blocks"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-target", choices=("full", "early"), default="full")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--designs", default="abc", help="which of a, b, c to run")
    parser.add_argument("--scaling", action="store_true", help="add the scaling table")
    parser.add_argument(
        "--batch-search",
        choices=("auto", "on", "off"),
        default="auto",
        help="largest batch per design (auto: on CUDA only)",
    )
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument(
        "--live-memory",
        action="store_true",
        help="fix glibc's mmap threshold so peak RSS tracks live memory (slower steps)",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute decoder blocks in the backward pass (all designs)",
    )
    parser.add_argument("--json", type=Path, default=Path("results/benchmark.json"))
    parser.add_argument("--workdir", type=Path, default=None, help="keep worker files here")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = _parse(argv)
    if args.worker:
        worker_main(args.worker, args.result)
        return 0
    if not (args.model or args.config):
        raise SystemExit("benchmark: give --model DIR or --config NAME")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    spec = BenchSpec(
        model=str(Path(args.model).resolve()) if args.model else None,
        config=args.config,
        config_overrides=json.loads(args.config_overrides),
        tokenizer=str(Path(args.tokenizer).resolve()) if args.tokenizer else None,
        device=device,
        dtype=args.dtype or ("bfloat16" if args.config else "float32"),
        read_layer=args.read_layer,
        write_layer=args.write_layer,
        batch_size=args.batch_size,
        cache_batch_size=args.cache_batch_size,
        steps=args.steps,
        warmup=args.warmup,
        examples=args.examples,
        lora_r=args.lora_r,
        lora_dropout=args.lora_dropout,
        lora_blocks=args.lora_blocks,
        seed=args.seed,
        reference_target=args.reference_target,
        max_batch=args.max_batch,
        gradient_checkpointing=args.gradient_checkpointing,
        live_memory=args.live_memory,
    )
    search = args.batch_search == "on" or (args.batch_search == "auto" and device == "cuda")
    result = benchmark(spec, args.repeats, args.designs, args.scaling, search, args.workdir)
    result["command"] = "python -m pipeline.benchmark " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    print(format_report(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
