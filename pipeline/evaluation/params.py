"""The params of the evaluate stage, importable without torch (and by the item builders)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.core import stage
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

    batch_size: int = 16
    """Decoder prompts per forward pass."""
    max_new_tokens: int = 16
    """Greedy tokens generated for control recovery (answers are short noun phrases)."""
    relation_tokens: int = 20
    """Feature extraction: the object must appear within this many generated tokens."""
    max_loglik_items: int = 48
    """Held-out (dialog, QA pair) items whose reference answers are scored by log-likelihood."""
    max_recovery_items: int = 24
    """Control-recovery items, for seen labels and again for held-out labels."""
    max_latentqa_items: int = 16
    """Imported LatentQA (dialog, QA pair) items (when that data is given)."""
    max_relation_items: int = 60
    """Relation-fact items (feature extraction, and subject identification on the same
    sentences), balanced over the eval relations."""
    max_truth_items: int = 60
    """Statements of the eval relations' facts (true and corrupted, half each) whose truth the
    decoder is asked (0: none)."""
    max_task_items: int = 40
    """Texts per public classification task (held-out tasks, and unseen texts of trained ones),
    when the experiment has a ``data.public`` source."""
    eval_relations: list[str] = field(default_factory=lambda: list(EVAL_RELATIONS))
    """Relations of ``data/relations.yaml`` evaluated on; none may be trained on."""
    recovery_qa_index: int = 0
    """Which QA pair of a template dialog asks for its control (the first: "What persona ...")."""
    max_read_tokens: int = 384
    """Items whose read dialog is longer (in target tokens) are left out."""
    latentqa_source: str = "latentqa-import"
    """The ``source`` of imported LatentQA rows; other rows count as template data."""
    similarity: str = "auto"
    """LatentQA scorer: ``minilm`` (sentence embeddings), ``token_f1`` (lexical) or ``auto``."""
    layers: str = "chosen"
    """``chosen``: each metric at the read layer the validation split chose for its kind of
    question; ``all``: at every read layer of the decoder too (``by_layer``), each costing about
    as much again."""
    judge: JudgeParams = field(default_factory=JudgeParams)
    """The optional LLM judge of LatentQA answers (off by default)."""
    bootstrap: int = 1000
    """Bootstrap resamples for the 95% confidence intervals."""
    seed: int = 0
    """Seed of item sampling, the derangement and the bootstrap."""
    dtype: str = "float32"
    """Compute dtype of the model."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""

    def __post_init__(self) -> None:
        if self.similarity not in ("auto", "minilm", "token_f1"):
            raise stage.ParamsError(
                f"evaluate: similarity {self.similarity!r} is not one of auto, minilm, token_f1"
            )
        if self.layers not in ("chosen", "all"):
            raise stage.ParamsError(f"evaluate: layers {self.layers!r} is not one of chosen, all")
        small = [
            n
            for n in ("batch_size", "max_new_tokens", "relation_tokens", "max_read_tokens")
            if getattr(self, n) < 1
        ]
        small += [
            n
            for n in (
                "max_loglik_items",
                "max_recovery_items",
                "max_latentqa_items",
                "max_relation_items",
                "max_truth_items",
                "max_task_items",
                "recovery_qa_index",
                "bootstrap",
            )
            if getattr(self, n) < 0
        ]
        if small:
            raise stage.ParamsError(f"evaluate: {small} out of range")
