"""The report family of an experiment's graph: the report (with the experiments it compares with,
which are built first), and the nodes each view of the experiment links."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.core.graph.analysis import ANALYSIS_NODES
from pipeline.core.graph.nodes import Node, full_params

READERS = ("probes", "lens", "explain")
"""The analysis nodes a report with ``readers: true`` shows."""


def report_node(
    config: Mapping[str, Any],
    name: str,
    nodes: Mapping[str, Node],
    peers: Mapping[str, Mapping[str, Node]] | None,
) -> Node:
    """The report of experiment ``name`` on its ``nodes``; ``peers``: the graphs of the
    experiments built before, which ``report.compare_with`` may name."""
    where = f"experiments.{name}"
    params = full_params("report", config.get("report"), f"{where}.report")
    inputs: dict[str, Node | str] = {
        "train": nodes["train"],
        "evaluate": nodes["evaluate"],
        "data": nodes["filter"],
    }
    if "reading_curve" in nodes:
        inputs["curve"] = nodes["reading_curve"]
    if "control" in nodes:
        inputs["control"] = nodes["control"]
    for peer in params["compare_with"]:
        if peer == name or peer not in (peers or {}):
            raise ValueError(
                f"{where}.report.compare_with: {peer!r} is not another experiment of the config"
            )
        inputs[f"peer_{peer}_train"] = peers[peer]["train"]
        inputs[f"peer_{peer}_evaluate"] = peers[peer]["evaluate"]
    if params["readers"]:
        if config.get("analysis") is None:
            raise ValueError(f"{where}.report.readers needs an analysis section (`analysis: {{}}`)")
        inputs.update({reader: nodes[reader] for reader in READERS})
    return Node("report", params, inputs)


def build_order(experiments: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Experiment names, each after those its ``report.compare_with`` names (which it reads)."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order or name not in experiments:
            return  # an unknown name is reported by report_node, with its field
        if name in path:
            raise ValueError(f"experiments {' -> '.join((*path, name))}: compare_with circle")
        for peer in (experiments[name].get("report") or {}).get("compare_with", []):
            visit(peer, (*path, name))
        order.append(name)

    for name in experiments:
        visit(name, ())
    return order


def view_nodes(graph: Mapping[str, Node]) -> dict[str, Node]:
    """The nodes ``results/<experiment>`` links: all but analysis nodes the report does not read
    (those have their own view, ``results/<experiment>_analysis``, and are built on demand)."""
    shown = {name for name, up in graph["report"].inputs.items() if isinstance(up, Node)}
    if shown & set(ANALYSIS_NODES):
        return dict(graph)
    return {name: node for name, node in graph.items() if name not in ANALYSIS_NODES}
