"""One experiment's whole graph: the model, then each family's nodes in the order they read each
other, the stages wired by their declaration alone, the report, and every node's key."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.core import stages
from pipeline.core.graph.analysis import analysis_nodes
from pipeline.core.graph.data import data_nodes
from pipeline.core.graph.evaluate import evaluation_nodes
from pipeline.core.graph.nodes import Node, assign_key, full_params
from pipeline.core.graph.report import report_node
from pipeline.core.graph.train import train_nodes
from pipeline.core.model_source import fingerprint, model_depth


def experiment_graph(
    name: str,
    config: Mapping[str, Any],
    root: str | Path = ".",
    peers: Mapping[str, dict[str, Node]] | None = None,
) -> dict[str, Node]:
    """The nodes of one experiment, keyed by stage name (data sources as ``data:<source>``).

    ``config``: the experiment's values, ``defaults`` merged in (``experiments.load_experiments``
    builds every experiment of a config). ``peers``: the graphs of experiments built before,
    which ``report.compare_with`` may name.
    """
    root = Path(root)
    where = f"experiments.{name}"
    section = stages.section("prepare_model")
    model = Node(
        "prepare_model", full_params("prepare_model", config[section], f"{where}.{section}")
    )
    model.external["model"] = fingerprint(model.params)
    nodes: dict[str, Node] = {"prepare_model": model}
    depth = model_depth(model.params)
    nodes.update(data_nodes(config, where, root, model))
    nodes.update(train_nodes(config, where, model, nodes["filter"], depth))
    nodes.update(evaluation_nodes(config, where, root, nodes))
    if config.get("analysis") is not None:
        nodes.update(
            analysis_nodes(config["analysis"], where, root, model, nodes["filter"], nodes["train"])
        )
    nodes.update(declared_nodes(config, where, nodes))
    nodes["report"] = report_node(config, name, nodes, peers)
    for node in nodes.values():
        assign_key(node)
    return nodes


def declared_nodes(
    config: Mapping[str, Any], where: str, nodes: Mapping[str, Node]
) -> dict[str, Node]:
    """The stages wired by their declaration alone (``StageSpec.reads``) that the experiment has
    a section for, each reading the nodes its declaration names."""
    out = {}
    for stage_name, spec in stages.STAGES.items():
        if not spec.reads or stage_name not in config:
            continue
        missing = sorted(up for up in spec.reads.values() if up not in nodes)
        if missing:
            raise ValueError(
                f"{where}.{stage_name}: the stage reads {missing}, which this experiment does "
                "not build"
            )
        out[stage_name] = Node(
            stage_name,
            full_params(stage_name, config[stage_name], f"{where}.{stage_name}"),
            {name: nodes[up] for name, up in spec.reads.items()},
        )
    return out
