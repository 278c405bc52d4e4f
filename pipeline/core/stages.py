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

from pipeline.core import store

PACKAGE_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = PACKAGE_DIR.parent


@dataclass(frozen=True)
class StageSpec:
    """How to run one stage and what its key depends on besides params and inputs."""

    module: str
    """The module run as ``python -m pipeline.<module>`` (``<concept>.<stage>``)."""
    params: str
    """``<module>:<class>`` of its params dataclass, in a module that does not import torch."""
    data_globs: tuple[str, ...] = ()
    """Authored files under the repository that the stage reads (part of its code digest)."""


STAGES: dict[str, StageSpec] = {
    "prepare_model": StageSpec("mechanism.prepare_model", "core.model_source:ModelSpec"),
    "templates": StageSpec(
        "data.templates", "data.templates:TemplateParams", ("data/templates/*.yaml",)
    ),
    "import_latentqa": StageSpec("data.import_latentqa", "data.import_latentqa:ImportParams"),
    "curate": StageSpec(
        "curation.curate", "curation.curate:CurateParams", ("data/curation/*.yaml",)
    ),
    "texts": StageSpec("data.texts", "data.texts:TextParams"),
    "context": StageSpec("data.context", "data.context:ContextParams"),
    "classification": StageSpec("data.classification", "data.classification:ClassificationParams"),
    "relation_qa": StageSpec("data.relation_qa", "data.relation_qa:RelationQAParams"),
    "public_tasks": StageSpec(
        "data.public_tasks", "data.public_tasks:PublicTaskParams", ("data/public/*.jsonl",)
    ),
    "filter": StageSpec("data.filter", "data.filter:FilterParams"),
    "statements": StageSpec("data.statements", "data.statements:StatementParams"),
    "activation_cache": StageSpec("training.activation_cache", "training.params:CacheParams"),
    "train": StageSpec("training.train", "training.params:TrainParams"),
    "evaluate": StageSpec("evaluation.evaluate", "evaluation.params:EvalParams"),
    "explain": StageSpec("evaluation.explain", "evaluation.explain:ExplainParams"),
    "reading_curve": StageSpec("evaluation.curve", "evaluation.curve:CurveParams"),
    "control": StageSpec("control.control", "control.params:ControlParams"),
    "layer_cache": StageSpec("analysis.layer_cache", "analysis.params:LayerCacheParams"),
    "probes": StageSpec("analysis.probes", "analysis.params:ProbeParams"),
    "lens": StageSpec("analysis.lens", "analysis.params:LensParams"),
    "report": StageSpec("report.report", "report.report:ReportParams"),
}


def params_class(stage: str) -> type:
    """The stage's params dataclass; its module is imported, never the stage's own code."""
    module, _, name = STAGES[stage].params.partition(":")
    return getattr(importlib.import_module(f"pipeline.{module}"), name)


def module_file(module: str) -> Path:
    """The file of a ``pipeline`` module given relative to the package (``training.train``)."""
    return PACKAGE_DIR.joinpath(*module.split(".")).with_suffix(".py")


def _pipeline_imports(path: Path) -> set[str]:
    """The pipeline modules a file imports (anywhere in it), relative to the package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "pipeline" or node.module.startswith("pipeline."):
                base = node.module.removeprefix("pipeline").lstrip(".")
                names = [base] if base else []
                names += [f"{base}.{a.name}".lstrip(".") for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name[9:] for a in node.names if a.name.startswith("pipeline.")]
        found.update(n for n in names if module_file(n).exists())
    return found


def source_files(module: str) -> list[Path]:
    """The module's file and every pipeline module it imports, transitively."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(_pipeline_imports(module_file(name)) - seen)
    return sorted(module_file(name) for name in seen)


@cache
def code_digest(stage: str) -> str:
    """The digest of a stage's code and authored data files (repository-relative paths)."""
    spec = STAGES[stage]
    files = source_files(spec.module)
    for pattern in spec.data_globs:
        files.extend(Path(p) for p in sorted(glob.glob(str(REPO_DIR / pattern))))
    return store.source_digest([f.relative_to(REPO_DIR) for f in files], root=REPO_DIR)
