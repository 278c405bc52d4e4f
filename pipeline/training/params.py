"""The params of the train stage, importable without torch (the activation cache's are in
``cache_params``, so that a change here never reruns the cache).

The workflow builds every stage's params at parse time (``pipeline.core.graph``); keeping them
apart from the stage code keeps ``snakemake -n`` free of torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.core.choices import MixedDtype
from pipeline.core.stage import ParamsError, bounded
from pipeline.mechanism.dialogs import Inject, parse_positions
from pipeline.mechanism.lora import DEFAULT_TARGETS, LoraBlocks


@dataclass
class TrainParams:
    """Decoder training."""

    read_layers: list[int]
    """Target blocks whose outputs the decoder reads (0-based; output = hidden_states[L+1]).
    With several, each example is read at one of them (seeded, balanced) named in its prompt."""
    read_all_layers: bool = False
    """Each example reads every layer of ``read_layers`` at once, one named group of
    placeholders per layer, instead of one layer drawn per example."""
    family_layers: dict[str, list[int]] | None = None
    """Per data family (as ``mix`` names them), the read layers its examples are drawn from
    (some of ``read_layers``); unnamed families: all of them."""
    write_layer: int | None = bounded(0, minimum=0)
    """The decoder block written at the placeholders; null: the block read (the same depth)."""
    inject: Inject = "replace"
    """``replace`` the decoder's residual at the placeholders, or ``add`` to it (both scaled to
    the residual's norm; ``add`` is Activation Oracles' injection)."""
    mode: Literal["cached", "on_the_fly"] = "on_the_fly"
    """``cached``: read the activation cache input; ``on_the_fly``: run the target each step."""
    positions: str = "all"
    """Read positions: ``all`` or ``last:K``; must match the cache in cached mode."""
    align_positions: bool = True
    """Give the placeholders the target's position ids."""
    questions_per_example: int = bounded(1, minimum=1)
    """A training dialog's QA pairs asked this many at a time, one after another in one example
    (every answer in the loss): its placeholders paid once for several answers; ``mix`` shares
    count examples. Validation and evaluation ask one question per read."""
    lora_r: int = bounded(16, minimum=1)
    """LoRA rank."""
    lora_alpha: int = bounded(32, exclusiveMinimum=0)
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = bounded(0.0, minimum=0, exclusiveMaximum=1)
    """Dropout on the LoRA input (off by default: the masks cost a quarter of a CPU step)."""
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    """Module names that get LoRA (default: all attention and MLP projections)."""
    lora_blocks: LoraBlocks = "all"
    """``all`` blocks get LoRA, or ``from_write``: the lowest write block and above (the
    backward stops there)."""
    lr: float = bounded(1e-3, exclusiveMinimum=0)
    """Peak learning rate of AdamW."""
    weight_decay: float = bounded(0.0, minimum=0)
    """AdamW weight decay."""
    warmup_steps: int = bounded(10, minimum=0)
    """Linear warmup, in optimizer steps, before the cosine decay to zero."""
    max_steps: int = bounded(200, minimum=1)
    """Optimizer steps in total."""
    per_device_batch_size: int = bounded(8, minimum=1)
    """Examples per micro-batch per process."""
    grad_accum: int = bounded(1, minimum=1)
    """Micro-batches per optimizer step per process."""
    max_grad_norm: float = bounded(1.0, minimum=0)
    """Gradient clipping norm (0 disables clipping)."""
    seed: int = 0
    """Seed of the adapter init, the batch order and dropout."""
    dtype: MixedDtype = "float32"
    """``float32`` or ``bfloat16`` (base weights in bf16, adapter in fp32, bf16 autocast)."""
    gradient_checkpointing: bool = False
    """Recompute each adapted block in the backward pass: far less memory, one more forward each."""
    checkpoint_every: int = bounded(50, minimum=0)
    """Save a resumable checkpoint every this many optimizer steps and after the last one (0: only
    on SIGTERM)."""
    adapter_every: int = bounded(0, minimum=0)
    """Also publish the adapter of every this many optimizer steps and of the last one
    (``checkpoint_adapters/step_<n>/``, LoRA weights only), which the reading curve evaluates;
    0: only the final adapter."""
    eval_every: int = bounded(25, minimum=0)
    """Compute the held-out loss every this many optimizer steps (0: only at start and end)."""
    eval_examples: int = bounded(64, minimum=0)
    """How many examples of the validation split the held-out loss uses."""
    layer_choice_examples: int = bounded(32, minimum=0)
    """With several read layers: validation examples per data family scored at every layer after
    training, to choose a layer per kind of question (kept as ``adapter/layer_choice.json``)."""
    mix: dict[str, float] | None = None
    """Share of training examples per data source (``template``, ``context``, ...; the part of
    ``source`` before a colon); None: every example once."""
    batching: Literal["mixed", "by_family"] = "mixed"
    """``mixed``: each global batch a seeded draw of every family's examples; ``by_family``:
    each global batch from one family (as many of its steps as its share of the examples), so
    that a family with short answers (a statement's "Yes."/"No.") is not a small part of every
    step's per-token mean."""
    family_run: int = bounded(1, minimum=1)
    """Under ``by_family``, a family's steps in runs of this many in a row (the runs spread
    evenly over the epoch): Adam's momentum averages about ten steps' gradients, which a run keeps
    on one family."""
    pair_families: list[str] = field(default_factory=list)
    """Families whose training rows sharing a label are contrast pairs (``statements``: a fact's
    true and false statement), put in one batch together; needs ``batching: by_family``. Each
    member's read layer is drawn on its own: ``family_layers`` with one layer reads both there."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """``ddp`` (replicated model) or ``fsdp`` (decoder blocks sharded; for models too big)."""
    wandb: bool = False
    """Log to Weights & Biases (offline unless WANDB_MODE says otherwise)."""
    device: str = "auto"
    """``auto`` (this process's GPU if any, else CPU), ``cpu`` or ``cuda``."""

    def __post_init__(self):
        if not self.read_layers or min(self.read_layers) < 0:
            raise ParamsError(f"read_layers must name blocks, not {self.read_layers}")
        if list(self.read_layers) != sorted(set(self.read_layers)):
            raise ParamsError(
                f"read_layers {self.read_layers} must name each block once, in increasing order"
            )
        try:
            parse_positions(self.positions)
        except ValueError as exc:
            raise ParamsError(str(exc)) from None
        if self.family_layers and self.read_all_layers:
            raise ParamsError(
                "family_layers draws one layer per example; read_all_layers reads all"
            )
        for family, layers in (self.family_layers or {}).items():
            # A repeated layer would silently double its share of the family's draw.
            repeated = len(set(layers)) < len(layers)
            if not layers or repeated or not set(layers) <= set(self.read_layers):
                raise ParamsError(
                    f"family_layers.{family}: {layers} must be some of read_layers "
                    f"{self.read_layers}, each once"
                )
        if self.batching != "by_family" and (self.pair_families or self.family_run != 1):
            raise ParamsError(
                f"pair_families {self.pair_families} and family_run {self.family_run} shape the "
                "batches of one family: they need batching: by_family"
            )
        unmixed = sorted(set(self.pair_families) - set(self.mix or self.pair_families))
        if unmixed:
            raise ParamsError(f"pair_families {unmixed} are not among the mix's {sorted(self.mix)}")
        if self.mix is not None and (not self.mix or min(self.mix.values()) <= 0):
            raise ParamsError(f"mix must give every named source a positive share, not {self.mix}")

    @property
    def lowest_write_block(self) -> int:
        """The lowest decoder block any example is written at (where ``from_write`` starts)."""
        return min(self.read_layers) if self.write_layer is None else self.write_layer

    def write_block(self, read_layer: int) -> int:
        """The decoder block an example read at ``read_layer`` is written at."""
        return read_layer if self.write_layer is None else self.write_layer

    def layers_of(self, family: str) -> list[int]:
        """The read layers examples of ``family`` are drawn from."""
        return sorted((self.family_layers or {}).get(family, self.read_layers))
