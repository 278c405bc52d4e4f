"""The registry of stages: module, params dataclass, authored data files, and source digests.

A stage's code digest covers its module and every ``pipeline`` module it imports, transitively,
so editing a shared helper reruns every stage that uses it, and nothing else.
"""

from __future__ import annotations

import ast
import glob
import importlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pipeline import store

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent


@dataclass(frozen=True)
class StageSpec:
    """How to run one stage and what its key depends on besides params and inputs."""

    module: str
    """The module run as ``python -m pipeline.<module>``."""
    params_class: str
    """The name of the params dataclass in that module."""
    data_globs: tuple[str, ...] = ()
    """Authored files under the repository that the stage reads (part of its code digest)."""


STAGES: dict[str, StageSpec] = {
    "prepare_model": StageSpec("prepare_model", "ModelSpec"),
    "templates": StageSpec("templates", "TemplateParams", ("data/templates/*.yaml",)),
    "import_latentqa": StageSpec("import_latentqa", "ImportParams"),
    "curate": StageSpec("curate", "CurateParams", ("data/curation/*.yaml",)),
    "filter": StageSpec("filter", "FilterParams"),
    "activation_cache": StageSpec("activation_cache", "CacheParams"),
    "train": StageSpec("train", "TrainParams"),
    "evaluate": StageSpec("evaluate", "EvalParams"),
    "control": StageSpec("control", "ControlParams"),
    "report": StageSpec("report", "ReportParams"),
}


def params_class(stage: str) -> type:
    spec = STAGES[stage]
    return getattr(importlib.import_module(f"pipeline.{spec.module}"), spec.params_class)


def _pipeline_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "pipeline":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("pipeline."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pipeline."):
                    found.add(alias.name.split(".")[1])
    return {name for name in found if (PACKAGE_DIR / f"{name}.py").exists()}


def source_files(module: str) -> list[Path]:
    """The module's file and every pipeline module it imports, transitively."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(_pipeline_imports(PACKAGE_DIR / f"{name}.py") - seen)
    return sorted(PACKAGE_DIR / f"{name}.py" for name in seen)


@cache
def code_digest(stage: str) -> str:
    """The digest of a stage's code and authored data files (repository-relative paths)."""
    spec = STAGES[stage]
    files = source_files(spec.module)
    for pattern in spec.data_globs:
        files.extend(Path(p) for p in sorted(glob.glob(str(REPO_DIR / pattern))))
    return store.source_digest([f.relative_to(REPO_DIR) for f in files], root=REPO_DIR)
