"""The report's first lines: does the decoder read? One sentence per reading metric, its grounding
gap (true minus shuffled, paired per item) with its 95% interval, and the four conditions."""

from __future__ import annotations

from typing import Any

from pipeline.report import eval_view

READING = {
    "answer_loglik": "the held-out persona or goal (log-likelihood of its reference answers)",
    "recovery_heldout": "a held-out persona or goal, named word for word",
    "recovery_heldout_concept": "a held-out persona or goal, named (key words or synonyms)",
    "recovery_heldout_similarity": "a held-out persona or goal (similarity of the answer)",
    "feature_extraction": "a fact about the entity of a read sentence (unseen relations)",
    "subject_identification": "the entity of a read sentence (unseen relations)",
    "latentqa_loglik": "LatentQA's evaluation split (log-likelihood of its answers)",
    "latentqa_recovery": "LatentQA's evaluation split (similarity of the answer)",
    "truth": "whether a read statement is true (the likelier of Yes and No)",
    "truth_debiased": "whether a read statement is true (Yes or No, its own bias removed)",
    "truth_pairwise": "which statement of a true/false pair is true (as the probes score it)",
    "heldout_tasks": "the label of a text, on classification tasks never trained on",
    "trained_tasks": "the label of an unseen text of a classification task trained on",
}
"""The reading metrics of the headline, in order, and what each says the decoder reads. The
seen-label metrics measure fitting and stay in the tables."""
BINARY = ("match", "concept", "entity", "choice", "debiased", "pairwise")
"""Scorers that score an item 0 or 1 (``debiased``, ``pairwise``: 0.5 on a tie): their means are
shares of items (of pairs), their gaps points."""


def _number(value: float, kind: str, signed: bool = False) -> str:
    """A score as the metric counts it: a percentage (of items hit), nats, or a similarity."""
    sign = "+" if signed else ""
    if kind in BINARY:
        text = f"{100 * value:{sign}.1f}".removesuffix(".0")
        return text if signed else text + "%"
    return f"{value:{sign}.{3 if kind == 'loglik' else 2}f}"


def format_gap(summary: dict[str, Any], kind: str) -> str:
    """``+0.407 nats/token [0.329, 0.482]``, ``+23.3 points [13.3, 35]``, ``+0.13 [0.06, 0.21]``."""
    if summary.get("mean") is None:
        return "–"
    unit = {"loglik": " nats/token", **dict.fromkeys(BINARY, " points")}.get(kind, "")
    low, high = summary["ci95"]
    interval = f" [{_number(low, kind, True)}, {_number(high, kind, True)}]".replace("+", "")
    return _number(summary["mean"], kind, signed=True) + unit + interval


def verdict(summary: dict[str, Any]) -> str:
    """``reads`` when the interval of the gap lies above zero, and otherwise what it shows."""
    low, high = summary.get("ci95") or (None, None)
    if low is None:
        return "not measured"
    if low > 0:
        return "reads"
    if high < 0:
        return "reads less than with shuffled activations"
    return "not shown to read"


def sentence(name: str, result: dict[str, Any], several_layers: bool = False) -> str:
    kind = eval_view.scorer(result)
    summary = eval_view.gap(result)
    conditions = ", ".join(
        f"{label} {_number(value, kind)}"
        for condition, label in eval_view.CONDITION_LABELS.items()
        if (value := eval_view.mean(result, condition)) is not None
    )
    word = verdict(summary)
    # Where the decoder reads several blocks, the figures are those of the metric's own.
    where = f" {eval_view.where_read(result['layer'])}" if several_layers else ""
    chance = f", chance {_number(result['chance'], kind)}" if "chance" in result else ""
    true, untrained = (eval_view.mean(result, c) for c in ("true", "untrained"))
    # A gap over shuffled that the base model matches unaided is not the adapter's reading.
    caveat = (
        ", but no better than the base model with its adapter off"
        if word == "reads" and None not in (true, untrained) and untrained >= true
        else ""
    )
    return (
        f"**{word[0].upper() + word[1:]}** {READING[name]}{where}: {format_gap(summary, kind)} "
        f"over shuffled{caveat} ({conditions}; n = {result['n']}{chance})."
    )


def headline_lines(report: dict[str, Any], layer: eval_view.Layer | None = None) -> list[str]:
    """Markdown: the answer to "does it read?", then one list item per reading metric, each at
    its own read layer unless ``layer`` names one."""
    shown = [
        (name, result)
        for name in READING
        if (result := eval_view.metric(report, name, layer)) is not None
    ]
    if not shown:
        return ["The evaluation has no reading metric with items."]
    reads = sum(verdict(eval_view.gap(r)) == "reads" for _, r in shown)
    answer = "Yes" if reads == len(shown) else ("Partly" if reads else "Not shown")
    lines = [
        f"**Does it read? {answer}**: on {reads} of {len(shown)} reading metrics the 95% "
        "interval of the gap between reading the item's own activations and another item's "
        "(shuffled) lies above zero.",
        "",
    ]
    several = eval_view.reads_several(report)
    return lines + [f"- {sentence(name, result, several)}" for name, result in shown]
