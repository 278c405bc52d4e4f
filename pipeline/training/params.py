"""The params of the training stages (activation cache, train), importable without torch.

The workflow builds every stage's params at parse time (``pipeline.core.graph``); keeping them
apart from the stage code keeps ``snakemake -n`` free of torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.mechanism.dialogs import INJECT_MODES, parse_positions
from pipeline.mechanism.lora import DEFAULT_TARGETS, adapter_blocks


@dataclass
class CacheParams:
    """What to cache and how."""

    layers: list[int] = field(default_factory=lambda: [15])
    """Blocks whose outputs are cached (``hidden_states[layer + 1]``)."""
    positions: str = "all"
    """Read positions kept per dialog: ``all`` or ``last:K``."""
    batch_size: int = 8
    """Dialogs per forward pass."""
    shard_tokens: int = 65536
    """Read tokens per shard; a shard closes at the first dialog that reaches it."""
    dtype: str = "float32"
    """The model's compute dtype (the cache itself is always bfloat16)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ..."""


@dataclass
class TrainParams:
    """Decoder training."""

    read_layers: list[int]
    """Target blocks whose outputs the decoder reads (0-based; output = hidden_states[L+1]).
    With several, each example is read at one of them (seeded, balanced) named in its prompt."""
    read_all_layers: bool = False
    """Each example reads every layer of ``read_layers`` at once, one named group of
    placeholders per layer, instead of one layer drawn per example."""
    write_layer: int | None = 0
    """The decoder block written at the placeholders; null: the block read (the same depth)."""
    inject: str = "replace"
    """``replace`` the decoder's residual at the placeholders, or ``add`` to it (both scaled to
    the residual's norm; ``add`` is Activation Oracles' injection)."""
    mode: str = "on_the_fly"
    """``cached``: read the activation cache input; ``on_the_fly``: run the target each step."""
    positions: str = "all"
    """Read positions: ``all`` or ``last:K``; must match the cache in cached mode."""
    align_positions: bool = True
    """Give the placeholders the target's position ids."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input (off by default: the masks cost a quarter of a CPU step)."""
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    """Module names that get LoRA (default: all attention and MLP projections)."""
    lora_blocks: str = "all"
    """``all`` blocks get LoRA, or ``from_write``: the lowest write block and above (the
    backward stops there)."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 10
    """Linear warmup, in optimizer steps, before the cosine decay to zero."""
    max_steps: int = 200
    """Optimizer steps in total."""
    per_device_batch_size: int = 8
    """Examples per micro-batch per process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step per process."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables clipping)."""
    seed: int = 0
    """Seed of the adapter init, the batch order and dropout."""
    dtype: str = "float32"
    """``float32`` or ``bfloat16`` (base weights in bf16, adapter in fp32, bf16 autocast)."""
    gradient_checkpointing: bool = False
    """Recompute each adapted block in the backward pass: far less memory, one more forward each."""
    checkpoint_every: int = 50
    """Save a resumable checkpoint every this many optimizer steps and after the last one (0: only
    on SIGTERM)."""
    adapter_every: int = 0
    """Also publish the adapter of every this many optimizer steps and of the last one
    (``checkpoint_adapters/step_<n>/``, LoRA weights only), which the reading curve evaluates;
    0: only the final adapter."""
    eval_every: int = 25
    """Compute the held-out loss every this many optimizer steps (0: only at start and end)."""
    eval_examples: int = 64
    """How many examples of the validation split the held-out loss uses."""
    layer_choice_examples: int = 32
    """With several read layers: validation examples per data family scored at every layer after
    training, to choose a layer per kind of question (kept as ``adapter/layer_choice.json``)."""
    mix: dict[str, float] | None = None
    """Share of training examples per data source (``template``, ``context``, ...; the part of
    ``source`` before a colon); None: every example once."""
    parallel: str = "ddp"
    """``ddp`` (replicated model) or ``fsdp`` (decoder blocks sharded; for models too big)."""
    wandb: bool = False
    """Log to Weights & Biases (offline unless WANDB_MODE says otherwise)."""
    device: str = "auto"
    """``auto`` (this process's GPU if any, else CPU), ``cpu`` or ``cuda``."""

    def __post_init__(self):
        if self.mode not in ("cached", "on_the_fly"):
            raise ValueError(f"mode must be 'cached' or 'on_the_fly', not {self.mode!r}")
        if self.parallel not in ("ddp", "fsdp"):
            raise ValueError(f"parallel must be 'ddp' or 'fsdp', not {self.parallel!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', not {self.dtype!r}")
        if not self.read_layers or min(self.read_layers) < 0:
            raise ValueError(f"read_layers must name blocks, not {self.read_layers}")
        if list(self.read_layers) != sorted(set(self.read_layers)):
            raise ValueError(
                f"read_layers {self.read_layers} must name each block once, in increasing order"
            )
        if self.layer_choice_examples < 0:
            raise ValueError(
                f"layer_choice_examples must be >= 0, not {self.layer_choice_examples}"
            )
        if self.write_layer is not None and self.write_layer < 0:
            raise ValueError(f"write_layer must be a block or null, not {self.write_layer}")
        if self.inject not in INJECT_MODES:
            raise ValueError(f"inject must be one of {INJECT_MODES}, not {self.inject!r}")
        lowest = self.lowest_write_block
        adapter_blocks(self.lora_blocks, lowest, lowest + 1)  # validates
        parse_positions(self.positions)
        if self.mix is not None and (not self.mix or min(self.mix.values()) <= 0):
            raise ValueError(f"mix must give every named source a positive share, not {self.mix}")
        if self.adapter_every < 0:
            raise ValueError(f"adapter_every must be >= 0, not {self.adapter_every}")
        for name in ("max_steps", "per_device_batch_size", "grad_accum", "lora_r"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")

    @property
    def lowest_write_block(self) -> int:
        """The lowest decoder block any example is written at (where ``from_write`` starts)."""
        return min(self.read_layers) if self.write_layer is None else self.write_layer

    def write_block(self, read_layer: int) -> int:
        """The decoder block an example read at ``read_layer`` is written at."""
        return read_layer if self.write_layer is None else self.write_layer
