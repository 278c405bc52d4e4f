"""The report's only way into ``eval.json``: a few small accessors.

Everything the report shows of an evaluation goes through these functions, so that a second
dimension of results (several read layers) changes them, not their callers. Each takes
``layer``: None is the decoder's read layer, the only one an evaluation holds today.
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


def read_layer(report: dict[str, Any]) -> int | None:
    """The block the evaluated decoder read."""
    return report.get("decoder", {}).get("read_layer")


def _check_layer(report: dict[str, Any], layer: int | None) -> None:
    if layer is not None and layer != read_layer(report):
        raise KeyError(f"the evaluation read block {read_layer(report)}, not {layer}")


def metrics(report: dict[str, Any], layer: int | None = None) -> dict[str, dict[str, Any]]:
    """Every metric's result by name (skipped ones included), in the evaluation's order."""
    _check_layer(report, layer)
    return report.get("metrics", {})


def metric(report: dict[str, Any], name: str, layer: int | None = None) -> dict[str, Any] | None:
    """One metric's result, or None where the evaluation has no such metric or skipped it."""
    result = metrics(report, layer).get(name)
    return result if result and "conditions" in result else None


def mean(result: dict[str, Any], condition: str) -> float | None:
    """A condition's mean score over the metric's items."""
    return result["conditions"].get(condition, {}).get("mean")


def gap(result: dict[str, Any], name: str = "grounding_gap") -> dict[str, Any]:
    """A paired gap's summary: ``mean``, ``ci95`` [low, high], ``n``."""
    return result.get(name) or {"mean": None, "ci95": [None, None], "n": 0}


def scorer(result: dict[str, Any]) -> str:
    """What scores the metric: ``loglik``, ``match``, ``concept``, ``entity``, ``similarity``."""
    return result.get("kind", "loglik")
