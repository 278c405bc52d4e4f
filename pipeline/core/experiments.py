"""The experiments of a config file as the workflow sees them: each one's values with ``defaults``
merged in, and its stage graph.

``workflow/rules/common.smk`` does the same merge inline for the workflow (and
``pipeline.analysis.layers`` for one experiment); this module is what a command outside Snakemake
uses, so that it computes the very keys a run would.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.errors import InputError
from pipeline.core.graph import Node, build_order, deep_merge, experiment_graph

DEFAULT_CONFIG = Path("config") / "config.yaml"
DEFAULT_STORE = "results/store"


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not YAML: {exc}") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: a config is a mapping, not {type(config).__name__}")
    return config


def experiment_values(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every experiment's values, ``defaults`` merged in (as the workflow does)."""
    defaults = config.get("defaults") or {}
    return {
        name: deep_merge(defaults, values or {})
        for name, values in (config.get("experiments") or {}).items()
    }


def experiment_graphs(
    config: Mapping[str, Any],
    names: Iterable[str],
    root: str | os.PathLike = ".",
    where: str = "config",
) -> dict[str, dict[str, Node]]:
    """The stage graphs of the experiments ``names`` (and of those their reports compare with).

    An unknown name, or an experiment whose graph cannot be computed (its model or data missing
    on this machine), raises :class:`InputError` naming it.
    """
    values = experiment_values(config)
    names = list(names)
    unknown = [name for name in names if name not in values]
    if unknown:
        raise InputError(
            f"{where}: no experiment {', '.join(map(repr, unknown))}; known: {sorted(values)}"
        )
    needed: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in needed or name not in values:
            continue
        needed.add(name)
        todo.extend((values[name].get("report") or {}).get("compare_with", []))
    graphs: dict[str, dict[str, Node]] = {}
    for name in build_order({n: values[n] for n in needed}):
        try:
            graphs[name] = experiment_graph(name, values[name], root=root, peers=graphs)
        except (FileNotFoundError, ValueError) as exc:
            raise InputError(f"{where}: experiment {name}: {exc}") from exc
    return {name: graphs[name] for name in names}


def store_of(config: Mapping[str, Any]) -> str:
    """The store a config's runs use (``store:``, relative to the working directory)."""
    return str(config.get("store") or DEFAULT_STORE)
