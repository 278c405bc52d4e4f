"""The report's only way into ``eval.json``: a few small accessors.

Everything the report shows of an evaluation goes through these functions, so that the layer
dimension of results (a decoder reading several blocks) is handled here, not by their callers:
``layer`` None means a metric's own read layer (the decoder's only one, or the one chosen for it);
a layer is a block index, or ``"all"`` for a decoder that reads every layer at once (whose
``by_layer`` also holds each block alone: that block the item's activations, the others the
donor's).
"""

from __future__ import annotations

from typing import Any

CONDITION_LABELS = {
    "true": "true",
    "shuffled": "shuffled",
    "untrained": "untrained",
    "text_only": "text-only",
}
"""The four conditions of every metric, as people read them."""
ALL = "all"
"""The layer of a decoder that reads every layer at once."""

Layer = int | str


def reads_several(report: dict[str, Any]) -> bool:
    """Whether the decoder reads several blocks (each metric then names the block it read)."""
    return len(report.get("decoder", {}).get("read_layers", [])) > 1


def read_layer(report: dict[str, Any]) -> int | None:
    """The block a single-layer decoder read (None where the decoder reads several)."""
    return None if reads_several(report) else report.get("decoder", {}).get("read_layer")


def where_read(layer: Layer | None) -> str:
    """Where a figure was read, for people: "at block 15", "at every read block at once"."""
    if layer is None:
        return ""
    return "at every read block at once" if layer == ALL else f"at block {layer}"


def metrics(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every metric's result by name (skipped ones included), in the evaluation's order."""
    return report.get("metrics", {})


def chosen_layer(report: dict[str, Any], name: str) -> Layer | None:
    """The block a metric's top-level figures were read at: the decoder's read layer, or for a
    decoder that reads several, the one chosen for the metric (``layer``; ``by_layer`` holds
    every layer's figures)."""
    return metrics(report).get(name, {}).get("layer", read_layer(report))


def metric(report: dict[str, Any], name: str, layer: Layer | None = None) -> dict[str, Any] | None:
    """One metric's result at ``layer`` (None: its chosen layer), or None where the evaluation
    has no such metric or skipped it."""
    result = metrics(report).get(name)
    if not result or "conditions" not in result:
        return None
    if layer is None or layer == chosen_layer(report, name):
        return result
    at = result.get("by_layer", {}).get(str(layer))
    if at is None:
        raise KeyError(f"{name} was not evaluated {where_read(layer)}")
    return {**result, **at, "layer": layer}


def at_layer(row: dict[str, Any], layer: Layer | None) -> bool:
    """Whether a ``predictions.jsonl`` row belongs to the figures at ``layer`` (rows without a
    layer, such as text-only answers, belong to every layer; so do the shuffled rows of a decoder
    reading every layer at once, written once under ``all``)."""
    if row.get("layer") is None or layer is None or row["layer"] == layer:
        return True
    return row["layer"] == ALL and row.get("condition") == "shuffled"


def mean(result: dict[str, Any], condition: str) -> float | None:
    """A condition's mean score over the metric's items."""
    return result["conditions"].get(condition, {}).get("mean")


def gap(result: dict[str, Any], name: str = "grounding_gap") -> dict[str, Any]:
    """A paired gap's summary: ``mean``, ``ci95`` [low, high], ``n``."""
    return result.get(name) or {"mean": None, "ci95": [None, None], "n": 0}


def scorer(result: dict[str, Any]) -> str:
    """What scores the metric: ``loglik``, ``match``, ``concept``, ``entity``, ``similarity``."""
    return result.get("kind", "loglik")
