"""The evaluation family of an experiment's graph: the decoder's evaluation, its reading curve
over the adapters training publishes, and decoder-guided control."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.core.cross_checks import check_relations
from pipeline.core.graph.data import EVAL_ONLY, RELATION_SOURCES
from pipeline.core.graph.nodes import Node, full_params


def evaluation_nodes(
    config: Mapping[str, Any], where: str, root: Path, nodes: Mapping[str, Node]
) -> dict[str, Node]:
    """``evaluate``, ``reading_curve`` (when training publishes adapters) and ``control`` (when
    the experiment has a section for it). ``nodes``: the data and training nodes."""
    model, train = nodes["prepare_model"], nodes["train"]
    out = {"evaluate": evaluate_node(config, where, root, nodes)}
    curve = reading_curve_node(config, where, train, out["evaluate"])
    if curve is not None:
        out["reading_curve"] = curve
    if config.get("control") is not None:
        out["control"] = Node(
            "control",
            full_params("control", config["control"], f"{where}.control"),
            {
                "model": model,
                "train": train,
                "prompts": str(root / "data" / "steering" / "prompts.yaml"),
                "qa": str(root / "data" / "steering" / "qa.yaml"),
            },
        )
    return out


def evaluate_node(
    config: Mapping[str, Any], where: str, root: Path, nodes: Mapping[str, Node]
) -> Node:
    """The evaluation, refusing relations both trained on and evaluated on."""
    evaluate = Node(
        "evaluate",
        full_params("evaluate", config.get("evaluate"), f"{where}.evaluate"),
        {"model": nodes["prepare_model"], "train": nodes["train"], "data": nodes["filter"]},
    )
    relations_file = root / "data" / "relations.yaml"
    evaluate.inputs["relations"] = str(relations_file)
    evaluated = evaluate.params["eval_relations"]
    check_relations(f"{where}.evaluate.eval_relations", evaluated, relations_file)
    evaluate.inputs["synonyms"] = str(root / "data" / "synonyms.yaml")
    for source in RELATION_SOURCES:
        if f"data:{source}" not in nodes:
            continue
        trained = nodes[f"data:{source}"].params["relations"]
        check_relations(f"{where}.data.{source}.relations", trained, relations_file)
        shared = sorted(set(evaluated) if trained is None else set(trained) & set(evaluated))
        if shared:
            raise ValueError(
                f"{where}: relations {shared} are both trained on (data.{source}.relations"
                f"{', null: all' if trained is None else ''}) and evaluated on "
                "(evaluate.eval_relations)"
            )
    if f"data:{EVAL_ONLY}" in nodes:
        evaluate.inputs["latentqa"] = nodes[f"data:{EVAL_ONLY}"]
    if "data:public" in nodes:
        evaluate.inputs["public"] = nodes["data:public"]
    return evaluate


def reading_curve_node(
    config: Mapping[str, Any], where: str, train: Node, evaluate: Node
) -> Node | None:
    """The reading curve over the adapters training publishes (``train.adapter_every``), if any."""
    if not train.params["adapter_every"]:
        if config.get("reading_curve") is not None:
            raise ValueError(
                f"{where}.reading_curve needs adapters to read: set train.adapter_every"
            )
        return None
    return Node(
        "reading_curve",
        full_params("reading_curve", config.get("reading_curve"), f"{where}.reading_curve"),
        {"evaluate": evaluate, **evaluate.inputs},
    )
