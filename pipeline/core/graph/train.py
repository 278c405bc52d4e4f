"""The training family of an experiment's graph: the activation cache (cached mode) and the
decoder's training, with the checks of the blocks it reads and writes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.core import stages
from pipeline.core.cross_checks import check_sources
from pipeline.core.graph.data import training_sources
from pipeline.core.graph.nodes import Node, full_params
from pipeline.core.layer_range import check_layers


def train_nodes(
    config: Mapping[str, Any], where: str, model: Node, filtered: Node, depth: int | None
) -> dict[str, Node]:
    """``activation_cache`` (when ``train.mode`` is cached) and ``train``.

    ``depth``: the model's number of blocks, which every layer named must be under.
    """
    params = full_params("train", config.get("train"), f"{where}.train")
    sources = training_sources(filtered).values()
    produced = [(node.stage, node.params) for node in sources]
    for setting in ("mix", "family_layers"):
        check_sources(where, setting, params[setting], produced)
    nodes: dict[str, Node] = {}
    train = Node("train", params, {"model": model, "data": filtered})
    model_name = model.params["name"]
    if params["mode"] == "cached":
        # The cache holds what training reads: its read layers (unless set) and its positions.
        section = stages.section("activation_cache")
        cache_values = dict(config.get(section) or {})
        cache_values.setdefault("layers", list(params["read_layers"]))
        cache_values["positions"] = params["positions"]
        cache = Node(
            "activation_cache",
            full_params("activation_cache", cache_values, f"{where}.{section}"),
            {"model": model, "data": filtered},
        )
        nodes["activation_cache"] = cache
        train.inputs["cache"] = cache
        check_layers(f"{where}.{section}.layers", cache.params["layers"], depth, model_name)
    check_layers(f"{where}.train.read_layers", params["read_layers"], depth, model_name)
    if params["write_layer"] is not None:
        check_layers(f"{where}.train.write_layer", [params["write_layer"]], depth, model_name)
    nodes["train"] = train
    return nodes
