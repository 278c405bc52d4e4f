"""The decoder's LoRA adapter: one base model in memory, adapter on (decoder) or off (target).

Torch is imported inside the functions: the train stage's params (parsed by the workflow, which
must not load torch) take their defaults and checks from here.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from torch import nn

LoraBlocks = Literal["all", "from_write"]
"""Which decoder blocks get adapters: ``all``, or ``from_write``: the write block and above."""

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def add_lora(
    model: nn.Module,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.0,
    targets: Sequence[str] = DEFAULT_TARGETS,
    seed: int = 0,
    layers: Sequence[int] | None = None,
):
    """Wrap ``model`` in a PEFT LoRA model; only the adapter's weights require gradients.

    ``layers``: the block indices that get adapters (default: every block).

    The adapter's random init is seeded so that every process (and every resumed run) starts
    from the same weights. Adapter weights stay float32 when the base is bf16.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = sorted(set(targets) - names)
    if missing:
        raise ValueError(
            f"LoRA targets {missing} are not module names of "
            f"{type(model).__name__}; it has e.g. {sorted(names)[:20]}"
        )
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(targets),
        layers_to_transform=list(layers) if layers is not None else None,
        task_type="CAUSAL_LM",
        bias="none",
    )
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
        # PEFT reads transformers' deprecated alias; the warning would reach every user's log.
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        torch.manual_seed(seed)
        return get_peft_model(model, config, autocast_adapter_dtype=True)


def save_adapter(model, path: Path, **kwargs) -> None:
    """``save_pretrained`` into ``path``, each ``adapter_config.json`` with its module lists
    sorted: PEFT keeps ``target_modules`` as a set and writes it in the interpreter's hash order,
    so the same training would otherwise publish a different file from run to run."""
    model.save_pretrained(str(path), **kwargs)
    for config_file in sorted(Path(path).rglob("adapter_config.json")):
        config = json.loads(config_file.read_text())
        for key in ("target_modules", "modules_to_save", "layers_to_transform"):
            if isinstance(config.get(key), list):
                config[key] = sorted(config[key])
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def adapter_blocks(lora_blocks: str, write_layer: int, n_blocks: int) -> range | None:
    """The blocks that get adapters: every one (None) for ``all``, the write block and above for
    ``from_write`` (the backward then stops at the write block)."""
    if lora_blocks not in get_args(LoraBlocks):
        raise ValueError(f"lora_blocks must be 'all' or 'from_write', not {lora_blocks!r}")
    return range(write_layer, n_blocks) if lora_blocks == "from_write" else None


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Keep only each block's input for the backward pass and recompute the block there.

    The decoder's activation memory falls from every block's intermediates to one block's, for
    about one extra forward per step. The checkpoint wraps each block's ``forward`` (non-reentrant
    ``torch.utils.checkpoint``), so the block's hooks run outside it, once: the write-layer patch
    (``patching.patch_layer``) is removed when the decoder's forward returns, before the backward
    recomputes the block. transformers' own ``gradient_checkpointing_enable`` checkpoints the
    block's ``__call__``, hooks included, before 5.23: the recompute then ran the write block
    without its patch ("A different number of tensors was saved"). Only training mode with
    gradients on checkpoints: the target forward and generation are unaffected. A block that gets
    no adapter saves nothing for the backward, so only the adapted blocks are recomputed.
    """
    from pipeline.mechanism.modeling import decoder_layers

    for block in decoder_layers(model):
        if not getattr(block.forward, "checkpointed", False):  # once per block
            block.forward = _checkpointed(block, block.forward)


CACHE_ARGUMENTS = ("past_key_values", "past_key_value", "cache", "layer_past")


def _checkpointed(block: nn.Module, forward):
    import torch
    from torch.utils.checkpoint import checkpoint

    @functools.wraps(forward)
    def run(*args, **kwargs):
        # A recompute would update a KV cache a second time: a forward with one runs as is.
        cached = any(kwargs.get(name) is not None for name in CACHE_ARGUMENTS)
        if block.training and torch.is_grad_enabled() and not cached:
            return checkpoint(functools.partial(forward, **kwargs), *args, use_reentrant=False)
        return forward(*args, **kwargs)

    run.checkpointed = True
    return run
