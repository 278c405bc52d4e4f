"""The params of the analysis stages (layer cache, probes, lens), importable without torch.

The workflow builds every stage's params when it parses (``pipeline.core.graph``), so they live
apart from the stage code, which imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from pipeline.core import stage
from pipeline.core.choices import Dtype
from pipeline.core.stage import bounded
from pipeline.mechanism.dialogs import parse_positions

Pooling = Literal["last", "mean"]
"""How an item's read positions become one vector: the ``last`` one, or their ``mean``."""
POOLINGS = get_args(Pooling)


@dataclass
class LayerCacheParams:
    """Which items' residuals are kept, from which blocks, pooled how."""

    pooling: list[Pooling] = field(default_factory=lambda: list(POOLINGS))
    """Poolings stored per item and block: ``last`` (last read token) and/or ``mean`` (of the
    read positions)."""
    positions: str = "all"
    """Read positions pooled over: ``all`` or ``last:K`` (as the decoder reads)."""
    layers: list[int] | None = None
    """Blocks whose outputs are kept (``hidden_states[layer + 1]``); null: every block."""
    items: Literal["all", "controlled"] = "all"
    """``all`` dialogs, or ``controlled``: only those under a control (persona, goal, scenario);
    the workflow sets it per item set."""
    max_per_split: int | None = bounded(None, minimum=1)
    """At most this many items per split (seeded choice); null: all."""
    seed: int = 0
    """Seed of the choice under ``max_per_split``."""
    batch_size: int = bounded(16, minimum=1)
    """Dialogs per forward pass."""
    shard_items: int = bounded(512, minimum=1)
    """Items per safetensors shard."""
    dtype: Dtype = "float32"
    """The model's compute dtype (the cache itself is bfloat16)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""

    def __post_init__(self) -> None:
        if not self.pooling:
            raise stage.ParamsError("layer_cache: pooling must name at least one pooling")
        try:
            parse_positions(self.positions)
        except ValueError as exc:
            raise stage.ParamsError(f"layer_cache: {exc}") from None


@dataclass
class ProbeParams:
    """Readers fitted per block on cached residuals, beside the base model and the decoder."""

    statements_pooling: Pooling = "last"
    """Pooling of the statement residuals the truth readers use (``last`` or ``mean``)."""
    labels_pooling: Pooling = "mean"
    """Pooling of the dialog residuals the label readers use (``last`` or ``mean``)."""
    l2: float = bounded(1e-2, minimum=0)
    """L2 penalty of the logistic probes (per feature, on standardised features)."""
    label_l2: float = bounded(1e-3, minimum=0)
    """L2 penalty of the label probe's bilinear map."""
    max_iter: int = bounded(100, minimum=1)
    """L-BFGS iterations of each logistic fit."""
    ccs_restarts: int = bounded(10, minimum=1)
    """CCS random restarts; the one with the lowest unsupervised loss on train is kept."""
    ccs_steps: int = bounded(300, minimum=1)
    """Adam steps of each CCS restart."""
    random_directions: int = bounded(20, minimum=1)
    """Random directions (or random maps, for labels) averaged in the baseline."""
    min_labels: int = bounded(4, minimum=2)
    """A label task (labels sharing one recovery question) needs this many labels per split."""
    max_label_items: int = bounded(64, minimum=1)
    """At most this many held-out dialogs per split in the label task (seeded)."""
    label_candidates: int = bounded(5, minimum=2)
    """Labels each held-out dialog is named among: its own and seeded distractors of the same
    question and split (chance 1 / candidates); every reader scores the same ones."""
    batch_size: int = bounded(16, minimum=1)
    """Prompts per forward pass (zero-shot, decoder)."""
    bootstrap: int = bounded(1000, minimum=0)
    """Bootstrap resamples for the 95% confidence intervals."""
    seed: int = 0
    """Seed of restarts, random directions, pair order and the bootstrap."""
    dtype: Dtype = "float32"
    """The model's compute dtype."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""


@dataclass
class LensParams:
    """The logit lens on relation clozes and a word-translation task."""

    max_facts_per_relation: int = bounded(8, minimum=1)
    """Cloze prompts per relation (seeded choice of facts)."""
    relations: list[str] | None = None
    """Relations of ``data/relations.yaml`` (null: all)."""
    translation_pairs: list[str] = field(default_factory=lambda: ["fr-de", "de-fr"])
    """Translation directions ``<source>-<target>`` over the languages of the word list."""
    shots: int = bounded(3, minimum=0)
    """Solved examples before each translation prompt (other words of the list)."""
    batch_size: int = bounded(16, minimum=1)
    """Prompts per forward pass."""
    seed: int = 0
    """Seed of the fact and example choices."""
    dtype: Dtype = "float32"
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
