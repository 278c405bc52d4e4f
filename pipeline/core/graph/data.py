"""The data family of an experiment's graph: the model's texts, one node per ``data`` source, and
the filter that merges and splits the training sources."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.core import stages
from pipeline.core.errors import InputError
from pipeline.core.graph.nodes import Node, dir_digest, full_params

DATA_SOURCES = {
    "templates": "templates",
    "latentqa": "import_latentqa",
    "latentqa_eval": "import_latentqa",
    "curated": "curate",
    "context": "context",
    "classification": "classification",
    "relation_qa": "relation_qa",
    "statements": "statements",
    "public": "public_tasks",
}
"""Config keys under ``data`` and the stage each one runs. ``latentqa_eval`` is evaluation only:
it feeds the evaluate stage, never the filter or training."""
RELATION_SOURCES = ("relation_qa", "statements")
"""Data sources made from relation facts: none may name a relation evaluated on."""
OPTIONAL = "optional"
"""A LatentQA source's setting: when its folder is absent, the source is left out (with a note)
instead of stopping the experiment."""
EVAL_ONLY = "latentqa_eval"
FROM_TEXTS = ("context", "classification")
"""Data stages that read the model's own texts (the ``texts`` stage, configured under ``texts``)."""


def data_nodes(config: Mapping[str, Any], where: str, root: Path, model: Node) -> dict[str, Node]:
    """``texts`` (when a source reads it), ``data:<source>`` per source, and ``filter``."""
    sources = config.get("data") or {}
    if not sources:
        raise ValueError(f"{where}.data names no data source (one of {sorted(DATA_SOURCES)})")
    nodes: dict[str, Node] = {}
    if any(source in FROM_TEXTS for source in sources):
        nodes["texts"] = Node(
            "texts",
            full_params("texts", config.get("texts"), f"{where}.texts"),
            {"model": model, "prompts": str(root / "data" / "curriculum" / "texts.yaml")},
        )
    training: dict[str, Node] = {}
    for source, values in sources.items():
        node = source_node(source, dict(values or {}), f"{where}.data.{source}", root, nodes, model)
        if node is None:
            continue
        nodes[f"data:{source}"] = node
        if source != EVAL_ONLY:
            training[f"data_{source}"] = node
    if not training:
        raise ValueError(f"{where}.data has no training source, only {EVAL_ONLY}")
    nodes["filter"] = Node(
        "filter",
        full_params("filter", config.get("filter"), f"{where}.filter"),
        {**training, "model": model},
    )
    return nodes


def training_sources(filtered: Node) -> dict[str, Node]:
    """The data nodes the filter reads, as ``data_<source>``: every source but the eval split."""
    return {name: up for name, up in filtered.inputs.items() if name.startswith("data_")}


def source_node(
    source: str,
    values: dict[str, Any],
    where: str,
    root: Path,
    nodes: Mapping[str, Node],
    model: Node,
) -> Node | None:
    """The node of one ``data`` source; None for an optional LatentQA folder holding no data."""
    stage_name = DATA_SOURCES[source]
    node = Node(stage_name, {})
    if stage_name == "templates":
        node.inputs["model"] = model
    elif stage_name in FROM_TEXTS:
        node.inputs["texts"] = nodes["texts"]
    elif stage_name in RELATION_SOURCES:
        node.inputs["relations"] = str(root / "data" / "relations.yaml")
    elif stage_name == "public_tasks":
        node.inputs["tasks"] = str(root / "data" / "public" / "tasks.yaml")
    elif stage_name == "import_latentqa":
        src = root / values.pop("path")
        # The repository ships the folder with its README and checksums only: no data in it
        # counts as absent; some of the files but not all is refused by the stage's start check.
        if values.pop(OPTIONAL, False) and not any(src.glob("*.json")):
            print(
                f"{where}: {src} holds no LatentQA files, so it is left out "
                "(README: where to get the LatentQA data)",
                file=sys.stderr,
            )
            return None
        # Imported training data is split by label in the filter; the evaluation split stays.
        values.setdefault("split", "eval" if source == EVAL_ONLY else "train")
        node.inputs["source"] = str(src)
    node.params = full_params(stage_name, values, where)
    if source == EVAL_ONLY and node.params["split"] != "eval":
        raise InputError(
            f"{where}.split: the evaluation split stays 'eval', not {node.params['split']!r}"
        )
    check = stages.start_check(stage_name)
    if check is not None:
        check(where, node.params, node.inputs)
    if stage_name == "import_latentqa":
        node.external["source"] = dir_digest(src, "*.json")
    return node
