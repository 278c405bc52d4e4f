"""The experiments of a config file as the workflow sees them: each one's values with ``defaults``
merged in, and its stage graph.

:func:`load_experiments` is the one place that does it: the workflow (``workflow/rules/
common.smk``), the commands outside Snakemake (``gc --keep``, the layer choice) and the tests call
it, so that each computes the very keys a run would.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
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


@dataclass
class Experiments:
    """A config's experiments as the workflow sees them."""

    values: dict[str, dict[str, Any]]
    """Every experiment's values, ``defaults`` merged in."""
    graphs: dict[str, dict[str, Node]] = field(default_factory=dict)
    """The stage graph of each experiment built that can run on this machine."""
    errors: dict[str, str] = field(default_factory=dict)
    """Why each other experiment built cannot run (its model or data missing here, ...)."""

    def graphs_of(self, names: Iterable[str], where: str = "config") -> dict[str, dict[str, Node]]:
        """The graphs of ``names``; :class:`InputError` naming one unknown or unable to run."""
        names = list(names)
        unknown = [name for name in names if name not in self.values]
        if unknown:
            raise InputError(
                f"{where}: no experiment {', '.join(map(repr, unknown))}; known: "
                f"{sorted(self.values)}"
            )
        for name in names:
            if name in self.errors:
                raise InputError(f"{where}: experiment {name}: {self.errors[name]}")
        return {name: self.graphs[name] for name in names}


Check = Callable[[Mapping[str, Any], dict[str, Node]], str | None]
"""A caller's check of a built experiment (its values, its graph): why it cannot run, or None."""


def load_experiments(
    config: Mapping[str, Any],
    root: str | os.PathLike = ".",
    names: Iterable[str] | None = None,
    check: Check | None = None,
) -> Experiments:
    """Merge ``defaults`` into each experiment and build the graphs of ``names`` (all when None)
    and of the experiments their reports compare with, each after those it compares with.

    A model or data missing on this machine (``FileNotFoundError``), a failed ``check``, or a
    compared experiment that cannot run, leaves that experiment out, with the reason in
    ``errors``: the others still run. A setting that fits no stage raises (the config is wrong).
    """
    defaults = config.get("defaults") or {}
    values = {
        name: deep_merge(defaults, experiment or {})
        for name, experiment in (config.get("experiments") or {}).items()
    }
    needed: set[str] = set()
    todo = list(values if names is None else names)
    while todo:
        name = todo.pop()
        if name in needed or name not in values:
            continue
        needed.add(name)
        todo.extend((values[name].get("report") or {}).get("compare_with", []))
    experiments = Experiments(values)
    graphs, errors = experiments.graphs, experiments.errors
    for name in build_order({n: values[n] for n in values if n in needed}):
        compared = (values[name].get("report") or {}).get("compare_with", [])
        broken = [peer for peer in compared if peer in errors]
        if broken:
            errors[name] = f"it compares with {broken[0]}, which cannot run: {errors[broken[0]]}"
            continue
        try:
            graphs[name] = experiment_graph(name, values[name], root=root, peers=graphs)
        except FileNotFoundError as exc:
            errors[name] = str(exc)
            continue
        reason = check(values[name], graphs[name]) if check is not None else None
        if reason is not None:
            del graphs[name]
            errors[name] = reason
    return experiments


def store_of(config: Mapping[str, Any]) -> str:
    """The store a config's runs use (``store:``, relative to the working directory)."""
    return str(config.get("store") or DEFAULT_STORE)
