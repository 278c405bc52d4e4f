"""The registry of stages: module, params dataclass, authored data files, and source digests.

A stage's code digest covers its module and every ``pipeline`` module it imports, transitively,
so editing a shared helper reruns every stage that uses it, and nothing else.
"""

from __future__ import annotations

import ast
import glob
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

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
    threads: int | str = "all"
    """Threads of its job by default: ``all`` (the cores Snakemake was given) or a number."""
    mem_mb: int = 16000
    """Memory of its job by default, in MB."""
    runtime: int = 120
    """Wall time of its job by default, in minutes."""
    launcher: Literal["python", "torchrun"] = "python"
    """``python`` (one process) or ``torchrun`` (one process per device, ``resources.nproc``)."""
    report_patterns: tuple[str, ...] = ()
    """Files of its artifact that ``snakemake --report`` shows (Snakemake report patterns)."""
    reads: Mapping[str, str] = field(default_factory=dict)
    """A stage wired by this declaration alone: its input names and the nodes they read
    (``{"data": "filter", "train": "train"}``); an experiment runs it when it has a section of
    the stage's name. Empty for the stages the graph package (``pipeline/core/graph/``) wires
    itself."""
    section: str = ""
    """The experiment's config section holding its params, where it is not the stage's name
    (``model`` for ``prepare_model``, ``cache`` for ``activation_cache``): the one place that
    mapping lives."""
    start_check: str = ""
    """``<module>:<function>`` checking the stage's external inputs when the graph is built, as
    ``check(where, params, inputs)``: a missing or altered file stops ``snakemake -n``, not a job
    hours into the run. In a module that does not import torch, and that the stage's own module
    does not import (so that the check is no part of its code digest)."""

    def __post_init__(self) -> None:
        if self.launcher not in ("python", "torchrun"):
            raise ValueError(f"{self.module}: launcher {self.launcher!r} is not python or torchrun")


# Each entry is a stage's whole declaration: the workflow makes one rule of each
# (workflow/rules/stages.smk), with these defaults for its job's resources, which an
# experiment's `resources:` section overrides. Stages that only reshape small files take one
# thread and little memory.
_SMALL = {"threads": 1, "mem_mb": 2000, "runtime": 10}
STAGES: dict[str, StageSpec] = {
    "prepare_model": StageSpec(
        "mechanism.prepare_model",
        "core.model_source:ModelSpec",
        mem_mb=8000,
        runtime=60,
        section="model",
    ),
    "templates": StageSpec(
        "data.templates",
        "data.templates:TemplateParams",
        ("data/templates/*.yaml",),
        mem_mb=8000,
        runtime=60,
    ),
    "import_latentqa": StageSpec(
        "data.import_latentqa",
        "data.import_latentqa:ImportParams",
        start_check="data.latentqa_files:check_folder",
        **_SMALL,
    ),
    # Calls an OpenAI-compatible endpoint; completed calls are cached outside the store, so a
    # rerun after a crash (or with a changed filter) repeats none of them.
    "curate": StageSpec(
        "curation.curate",
        "curation.params:CurateParams",
        ("data/curation/*.yaml",),
        **{**_SMALL, "runtime": 240},
    ),
    "texts": StageSpec("data.texts", "data.texts:TextParams", mem_mb=4000, runtime=60),
    "context": StageSpec("data.context", "data.context:ContextParams", **_SMALL),
    "classification": StageSpec(
        "data.classification", "data.classification:ClassificationParams", **_SMALL
    ),
    "relation_qa": StageSpec("data.relation_qa", "data.relation_qa:RelationQAParams", **_SMALL),
    "public_tasks": StageSpec(
        "data.public_tasks",
        "data.public_tasks:PublicTaskParams",
        ("data/public/*.jsonl",),
        **_SMALL,
    ),
    "filter": StageSpec("data.filter", "data.filter:FilterParams", **{**_SMALL, "mem_mb": 4000}),
    "statements": StageSpec("data.statements", "data.statements:StatementParams", **_SMALL),
    "activation_cache": StageSpec(
        "training.activation_cache", "training.cache_params:CacheParams", section="cache"
    ),
    # One allocation, one node: torchrun's standalone rendezvous starts one process per device.
    "train": StageSpec(
        "training.train", "training.params:TrainParams", runtime=240, launcher="torchrun"
    ),
    "evaluate": StageSpec("evaluation.evaluate", "evaluation.params:EvalParams"),
    "explain": StageSpec("evaluation.explain", "evaluation.explain:ExplainParams", runtime=60),
    # The reading metrics on a few evaluation items at every adapter training published along
    # the way (train.adapter_every): the report's reading curve, against steps.
    "reading_curve": StageSpec("evaluation.curve", "evaluation.curve:CurveParams", runtime=60),
    "control": StageSpec("control.control", "control.params:ControlParams"),
    "layer_cache": StageSpec(
        "analysis.layer_cache", "analysis.params:LayerCacheParams", runtime=60
    ),
    "probes": StageSpec("analysis.probes", "analysis.params:ProbeParams", runtime=60),
    "lens": StageSpec("analysis.lens", "analysis.params:LensParams", mem_mb=8000, runtime=30),
    # Its figures and text-only pages go into `snakemake --report` too (summary.html shows the
    # figures by relative path, which the Snakemake report does not carry).
    "report": StageSpec(
        "report.report",
        "report.report:ReportParams",
        **_SMALL,
        report_patterns=("{name}.png", "{name,headline|examples}.html"),
    ),
}


def section(stage: str) -> str:
    """The experiment config section holding the stage's params (its name unless declared)."""
    return STAGES[stage].section or stage


def params_class(stage: str) -> type:
    """The stage's params dataclass; its module is imported, never the stage's own code."""
    module, _, name = STAGES[stage].params.partition(":")
    return getattr(importlib.import_module(f"pipeline.{module}"), name)


def start_check(stage: str) -> Callable[[str, dict, dict], None] | None:
    """The stage's start check (``StageSpec.start_check``), if it declares one."""
    module, _, name = STAGES[stage].start_check.partition(":")
    return getattr(importlib.import_module(f"pipeline.{module}"), name) if module else None


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
