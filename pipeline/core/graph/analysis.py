"""The analysis family of an experiment's graph: readers beside the decoder (layer caches, probes,
the logit lens, explanations), opt-in by an ``analysis`` section."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.core.graph.nodes import Node, full_params

ANALYSIS_STAGES = ("statements", "layer_cache", "probes", "lens", "explain")
"""The sections of an experiment's ``analysis`` config, one per stage."""


def analysis_nodes(
    values: Mapping[str, Any], where: str, root: Path, model: Node, data: Node, train: Node
) -> dict[str, Node]:
    """The readers beside the decoder: layer caches, probes, the logit lens, explanations.

    Both layer caches read the positions the decoder reads (``train.positions``), one the
    filter's dialogs under a control, one the statements. Every node but ``probes`` and
    ``explain`` is independent of the decoder, so they can be built before training.
    """
    values = dict(values or {})
    unknown = sorted(set(values) - set(ANALYSIS_STAGES))
    if unknown:
        raise ValueError(
            f"{where}.analysis: unknown section(s) {unknown}; known: {ANALYSIS_STAGES}"
        )
    where = f"{where}.analysis"

    def params(stage_name: str, **fixed: Any) -> dict[str, Any]:
        section = {**dict(values.get(stage_name) or {}), **fixed}
        return full_params(stage_name, section, f"{where}.{stage_name}")

    relations = str(root / "data" / "relations.yaml")
    statements = Node("statements", params("statements"), {"relations": relations})
    cache = dict(values.get("layer_cache") or {})
    positions = cache.get("positions", train.params["positions"])
    dialogs_cache = Node(
        "layer_cache",
        params("layer_cache", positions=positions, items="controlled"),
        {"model": model, "data": data},
    )
    statements_cache = Node(
        "layer_cache",
        params("layer_cache", positions=positions, items="all"),
        {"model": model, "data": statements},
    )
    lens = Node(
        "lens",
        params("lens"),
        {
            "model": model,
            "relations": relations,
            "translation": str(root / "data" / "lens" / "translation.yaml"),
        },
    )
    probes = Node(
        "probes",
        params("probes"),
        {
            "model": model,
            "statements": statements,
            "statements_cache": statements_cache,
            "data": data,
            "dialogs_cache": dialogs_cache,
            "train": train,
        },
    )
    explain = Node("explain", params("explain"), {"model": model, "train": train, "data": data})
    return {
        "statements": statements,
        "layer_cache:dialogs": dialogs_cache,
        "layer_cache:statements": statements_cache,
        "lens": lens,
        "probes": probes,
        "explain": explain,
    }


BEFORE_TRAINING = ("statements", "layer_cache:dialogs", "layer_cache:statements", "lens")
"""Analysis nodes that need no decoder (the layer choice reads them before training)."""
ANALYSIS_NODES = (*BEFORE_TRAINING, "probes", "explain")
"""Every analysis node (the view ``results/<experiment>_analysis``)."""
