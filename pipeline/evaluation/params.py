"""The params of the evaluate stage, importable without torch (and by the item builders)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.core.choices import Dtype, Similarity
from pipeline.core.stage import bounded
from pipeline.evaluation.scoring import JudgeParams

EVAL_RELATIONS = (
    "landmark_city",
    "element_symbol",
    "book_author",
    "painting_painter",
    "company_country",
    "instrument_family",
)
"""Relations the default decoder never trains on (``data.relation_qa`` takes the others)."""


@dataclass
class EvalParams:
    """Decoder evaluation: item caps, generation lengths and scorers."""

    batch_size: int = bounded(16, minimum=1)
    """Decoder prompts per forward pass."""
    max_new_tokens: int = bounded(16, minimum=1)
    """Greedy tokens generated for control recovery (answers are short noun phrases)."""
    relation_tokens: int = bounded(20, minimum=1)
    """Feature extraction: the object must appear within this many generated tokens."""
    max_loglik_items: int = bounded(48, minimum=0)
    """Held-out (dialog, QA pair) items whose reference answers are scored by log-likelihood."""
    max_recovery_items: int = bounded(24, minimum=0)
    """Control-recovery items, for seen labels and again for held-out labels."""
    max_latentqa_items: int = bounded(16, minimum=0)
    """Imported LatentQA (dialog, QA pair) items (when that data is given)."""
    max_relation_items: int = bounded(60, minimum=0)
    """Relation-fact items (feature extraction, and subject identification on the same
    sentences), balanced over the eval relations."""
    max_truth_items: int = bounded(60, minimum=0)
    """Statements of the eval relations' facts (true and corrupted, half each) whose truth the
    decoder is asked (0: none)."""
    max_task_items: int = bounded(40, minimum=0)
    """Texts per public classification task (held-out tasks, and unseen texts of trained ones),
    when the experiment has a ``data.public`` source."""
    eval_relations: list[str] = field(default_factory=lambda: list(EVAL_RELATIONS))
    """Relations of ``data/relations.yaml`` evaluated on; none may be trained on."""
    recovery_qa_index: int = bounded(0, minimum=0)
    """Which QA pair of a template dialog asks for its control (the first: "What persona ...")."""
    max_read_tokens: int = bounded(384, minimum=1)
    """Items whose read dialog is longer (in target tokens) are left out."""
    latentqa_source: str = "latentqa-import"
    """The ``source`` of imported LatentQA rows; other rows count as template data."""
    similarity: Similarity = "auto"
    """LatentQA scorer: ``minilm`` (sentence embeddings), ``token_f1`` (lexical) or ``auto``."""
    layers: Literal["chosen", "all"] = "chosen"
    """``chosen``: each metric at the read layer the validation split chose for its kind of
    question; ``all``: at every read layer of the decoder too (``by_layer``), each costing about
    as much again."""
    judge: JudgeParams = field(default_factory=JudgeParams)
    """The optional LLM judge of LatentQA answers (off by default)."""
    bootstrap: int = bounded(1000, minimum=0)
    """Bootstrap resamples for the 95% confidence intervals."""
    seed: int = 0
    """Seed of item sampling, the derangement and the bootstrap."""
    dtype: Dtype = "float32"
    """Compute dtype of the model."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
