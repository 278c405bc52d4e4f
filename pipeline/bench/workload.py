"""What a benchmark worker builds: the spec, the workload, the models and the activation cache.

The workload is read dialogs built from ``data/templates`` in the shape the template stage gives
(masked system prompt, stimulus, the target's reply) with one QA pair each; the models are a
prepared folder (read into this process's own memory on CPU) or random weights of a named config;
the cache is computed through the cache stage's read path and read back as ``ActivationCache``
does (`file_cache`). Nothing here needs polars or snakemake.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.mechanism.decoder_prompt import ReadAt, build_decoder_example
from pipeline.mechanism.dialogs import tokenize_read_dialog
from pipeline.mechanism.modeling import (
    attention_implementation,
    load_model,
    load_tokenizer,
    torch_dtype,
)
from pipeline.mechanism.patching import gather, pad_batch, read_activations

REPO_DIR = Path(__file__).resolve().parents[2]
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
    caching_layer: int | None = None
    """Block where the timed caching pass stops early (default: the read layer)."""
    caching_rounds: int = 3
    """Timed caching passes per mode, after one untimed pass of each (alternating; median)."""
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
    """Recompute each adapted block in the backward pass (every design alike)."""
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


def build_workload(
    tokenizer, dialogs: list[dict], batch_size: int, seed: int = 0, write_layer: int = 0
) -> Workload:
    reads, examples = [], []
    at = ReadAt(read=0, write=write_layer)
    for d in dialogs:
        read = tokenize_read_dialog(tokenizer, d["messages"], d["n_masked_turns"])
        reads.append(read)
        qa = d["qa"]
        examples.append(
            build_decoder_example(
                tokenizer, read.read_positions, qa["question"], qa["answer"], at=at
            )
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


def resolve_caching_layer(spec: BenchSpec, read_layer: int, n_blocks: int) -> int:
    layer = read_layer if spec.caching_layer is None else spec.caching_layer
    if not 0 <= layer < n_blocks:
        raise ValueError(f"caching layer {layer}: model has {n_blocks} blocks")
    return layer


def bf16_autocast(spec: BenchSpec):
    return torch.autocast(
        torch.device(spec.device).type, dtype=torch.bfloat16, enabled=spec.dtype == "bfloat16"
    )


def synchronize(spec: BenchSpec) -> None:
    if torch.device(spec.device).type == "cuda":
        torch.cuda.synchronize()


def padded(reads, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = pad_batch([r.input_ids for r in reads], pad_id)
    return ids.to(device), mask.to(device)


def target_activations(model, reads, layer: int, pad_id: int, spec: BenchSpec, stop_early: bool):
    """Read activations (n_i, D) per dialog through the pipeline's read path, no gradients."""
    ids, mask = padded(reads, pad_id, spec.device)
    with torch.no_grad(), bf16_autocast(spec):
        out = read_activations(model, ids, mask, [layer], stop_early=stop_early)[layer]
    return gather(out, [r.read_positions for r in reads])
