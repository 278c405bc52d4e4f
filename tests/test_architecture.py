"""The package's shape: concept floors that only import downwards, no import circle, and a
workflow that parses without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "pipeline"
FLOORS = [
    "core",
    "mechanism",
    "data",
    "curation",
    "training",
    "evaluation",
    "control",
    "analysis",
    "report",
    "bench",
]
"""Lowest first: a module may import its own floor and the floors below it, never one above.
The top-level entry points (``pipeline/read.py``, and ``pipeline/api.py`` for notebooks) stand
above every floor."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The pipeline modules a file imports anywhere in it (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            candidates = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found.update(name for name in candidates if name in modules)
    return found


def _floor(module: str) -> int:
    parts = module.split(".")
    if len(parts) < 3:  # pipeline, pipeline.read, pipeline.<floor> (its __init__)
        return len(FLOORS) if len(parts) == 2 and parts[1] not in FLOORS else -1
    return FLOORS.index(parts[1])


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, as the modules on it (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_concept_is_a_subpackage_and_top_level_holds_only_entry_points():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert set(top) <= {"__init__.py", "__main__.py", "read.py", "api.py"}, top
    for floor in FLOORS:
        assert (PACKAGE / floor / "__init__.py").exists(), floor
    strays = [p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name not in FLOORS]
    assert set(strays) <= {"__pycache__"}, strays


def test_no_import_circle():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_floor_imports_a_higher_one():
    upward = [
        f"{module} (floor {FLOORS[_floor(module)]}) imports {target}"
        for module, targets in _graph().items()
        for target in sorted(targets)
        if 0 <= _floor(module) < _floor(target)
    ]
    assert upward == []


def test_floor_of_modules():
    assert _floor("pipeline.core.store") == 0
    assert _floor("pipeline.bench.worker") == len(FLOORS) - 1
    assert _floor("pipeline.read") == len(FLOORS)


def test_parsing_the_workflow_does_not_import_torch():
    """What workflow/rules/common.smk runs at parse time: graphs, views, the config schema."""
    script = """
import sys
import yaml
from pipeline.core import config_schema, stages
from pipeline.core.experiments import load_experiments
from pipeline.core.view import refresh_view

config = yaml.safe_load(open("config/config.yaml"))
# An experiment whose model is not on this machine (Llama-3 from the hub cache) is left out.
experiments = load_experiments(config, root=".")
assert experiments.graphs, experiments.errors
for name in stages.STAGES:
    stages.params_class(name)
config_schema.render()
heavy = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
print(",".join(heavy))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"parsing the workflow imported {out.stdout.strip()}"
