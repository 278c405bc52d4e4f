"""A node of an experiment's stage graph: its stage, full params, inputs, and content key."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core import stage as stage_cli
from pipeline.core import stages, store


@dataclass
class Node:
    """One artifact of the graph."""

    stage: str
    """The stage that builds it."""
    params: dict[str, Any]
    """Its full params, defaults filled in."""
    inputs: dict[str, Node | str] = field(default_factory=dict)
    """Upstream nodes, or external paths (digested into the key)."""
    external: dict[str, str] = field(default_factory=dict)
    """Identities of external inputs (file digests, model fingerprints)."""
    key: str = ""
    """The content key, set by :func:`assign_key` once the graph is complete."""

    def path(self, store_dir: str | Path) -> str:
        return f"{store_dir}/{self.stage}/{self.key}"


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for name, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(name), Mapping):
            merged[name] = deep_merge(merged[name], value)
        else:
            merged[name] = copy.deepcopy(value)
    return merged


def full_params(stage_name: str, values: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """Validate against the stage's dataclass and fill in its defaults."""
    params = stage_cli.build_params(stages.params_class(stage_name), values or {}, where)
    return dataclasses.asdict(params)


def dir_digest(path: Path, pattern: str = "*") -> str:
    """The identity of the files of a folder an input names (their absolute paths and bytes)."""
    files = sorted(p for p in path.glob(pattern) if p.is_file())
    if not files:
        raise FileNotFoundError(f"no files matching {pattern} in {path}")
    return store.source_digest([p.resolve() for p in files], root="/")


def assign_key(node: Node) -> str:
    """Set the node's key, and its upstream nodes' first: params, code digest, inputs' keys."""
    if node.key:
        return node.key
    keys = {}
    for input_name, upstream in node.inputs.items():
        if isinstance(upstream, Node):
            keys[input_name] = assign_key(upstream)
        elif input_name in node.external:
            keys[input_name] = node.external[input_name]
        else:
            keys[input_name] = "sha256:" + store.file_sha256(upstream)
    for input_name, identity in node.external.items():
        keys.setdefault(input_name, identity)
    node.key = store.compute_key(node.stage, node.params, stages.code_digest(node.stage), keys)
    return node.key
