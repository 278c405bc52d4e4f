"""The params of the analysis stages (layer cache, probes, lens), importable without torch.

The workflow builds every stage's params when it parses (``pipeline.core.graph``), so they live
apart from the stage code, which imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.core import stage
from pipeline.mechanism.dialogs import parse_positions

POOLINGS = ("last", "mean")
ITEMS = ("all", "controlled")


@dataclass
class LayerCacheParams:
    """Which items' residuals are kept, from which blocks, pooled how."""

    pooling: list[str] = field(default_factory=lambda: list(POOLINGS))
    """Poolings stored per item and block: ``last`` (last read token) and/or ``mean`` (of the
    read positions)."""
    positions: str = "all"
    """Read positions pooled over: ``all`` or ``last:K`` (as the decoder reads)."""
    layers: list[int] | None = None
    """Blocks whose outputs are kept (``hidden_states[layer + 1]``); null: every block."""
    items: str = "all"
    """``all`` dialogs, or ``controlled``: only those under a control (persona, goal, scenario);
    the workflow sets it per item set."""
    max_per_split: int | None = None
    """At most this many items per split (seeded choice); null: all."""
    seed: int = 0
    """Seed of the choice under ``max_per_split``."""
    batch_size: int = 16
    """Dialogs per forward pass."""
    shard_items: int = 512
    """Items per safetensors shard."""
    dtype: str = "float32"
    """The model's compute dtype (the cache itself is bfloat16)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""

    def __post_init__(self) -> None:
        bad = sorted(set(self.pooling) - set(POOLINGS))
        if not self.pooling or bad:
            raise stage.ParamsError(f"layer_cache: pooling must be among {POOLINGS}, not {bad}")
        parse_positions(self.positions)
        if self.items not in ITEMS:
            raise stage.ParamsError(
                f"layer_cache: items must be one of {ITEMS}, not {self.items!r}"
            )
        if self.batch_size < 1 or self.shard_items < 1:
            raise stage.ParamsError("layer_cache: batch_size and shard_items must be positive")
        if self.max_per_split is not None and self.max_per_split < 1:
            raise stage.ParamsError("layer_cache: max_per_split must be null or positive")


@dataclass
class ProbeParams:
    """Readers fitted per block on cached residuals, beside the base model and the decoder."""

    statements_pooling: str = "last"
    """Pooling of the statement residuals the truth readers use (``last`` or ``mean``)."""
    labels_pooling: str = "mean"
    """Pooling of the dialog residuals the label readers use (``last`` or ``mean``)."""
    l2: float = 1e-2
    """L2 penalty of the logistic probes (per feature, on standardised features)."""
    label_l2: float = 1e-3
    """L2 penalty of the label probe's bilinear map."""
    max_iter: int = 100
    """L-BFGS iterations of each logistic fit."""
    ccs_restarts: int = 10
    """CCS random restarts; the one with the lowest unsupervised loss on train is kept."""
    ccs_steps: int = 300
    """Adam steps of each CCS restart."""
    random_directions: int = 20
    """Random directions (or random maps, for labels) averaged in the baseline."""
    min_labels: int = 4
    """A label task (labels sharing one recovery question) needs this many labels per split."""
    max_label_items: int = 64
    """At most this many held-out dialogs per split in the label task (seeded)."""
    label_candidates: int = 5
    """Labels each held-out dialog is named among: its own and seeded distractors of the same
    question and split (chance 1 / candidates); every reader scores the same ones."""
    batch_size: int = 16
    """Prompts per forward pass (zero-shot, decoder)."""
    bootstrap: int = 1000
    """Bootstrap resamples for the 95% confidence intervals."""
    seed: int = 0
    """Seed of restarts, random directions, pair order and the bootstrap."""
    dtype: str = "float32"
    """The model's compute dtype."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""

    def __post_init__(self) -> None:
        for name in ("statements_pooling", "labels_pooling"):
            if getattr(self, name) not in POOLINGS:
                raise stage.ParamsError(f"probes: {name} must be one of {POOLINGS}")
        small = [
            n
            for n in ("max_iter", "ccs_restarts", "ccs_steps", "random_directions", "batch_size")
            if getattr(self, n) < 1
        ]
        small += ["label_candidates"] if self.label_candidates < 2 else []
        if small or self.min_labels < 2 or self.l2 < 0 or self.label_l2 < 0:
            raise stage.ParamsError(f"probes: {small or 'min_labels or l2'} out of range")


@dataclass
class LensParams:
    """The logit lens on relation clozes and a word-translation task."""

    max_facts_per_relation: int = 8
    """Cloze prompts per relation (seeded choice of facts)."""
    relations: list[str] | None = None
    """Relations of ``data/relations.yaml`` (null: all)."""
    translation_pairs: list[str] = field(default_factory=lambda: ["fr-de", "de-fr"])
    """Translation directions ``<source>-<target>`` over the languages of the word list."""
    shots: int = 3
    """Solved examples before each translation prompt (other words of the list)."""
    batch_size: int = 16
    """Prompts per forward pass."""
    seed: int = 0
    """Seed of the fact and example choices."""
    dtype: str = "float32"
    """The model's compute dtype."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""

    def __post_init__(self) -> None:
        for pair in self.translation_pairs:
            source, sep, target = pair.partition("-")
            if not sep or not source or not target or source == target:
                raise stage.ParamsError(
                    f"lens: translation pair {pair!r} is not '<source>-<target>'"
                )
        if self.max_facts_per_relation < 1 or self.shots < 0 or self.batch_size < 1:
            raise stage.ParamsError("lens: max_facts_per_relation/shots/batch_size out of range")
