"""Generate workflow/schemas/config.schema.yaml from the stages' params dataclasses.

The dataclasses are the single source of truth for stage settings; the JSON Schema that Snakemake
validates the config against at start is derived from them, so the two cannot drift apart
(tests/test_config_schema.py fails when the committed schema is stale). Regenerate with
``python -m pipeline.core.config_schema > workflow/schemas/config.schema.yaml``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
import types
import typing
from typing import Any

import yaml

from pipeline.core import graph, stage, stages

RESOURCE_FIELDS = {
    "threads": {
        "description": "CPU threads, or 'all' for the cores Snakemake was given",
        "type": ["integer", "string"],
    },
    "mem_mb": {"description": "memory in MB", "type": "integer"},
    "runtime": {"description": "wall time in minutes", "type": "integer"},
    "gpu": {"description": "GPUs per job (SLURM)", "type": "integer"},
    "nproc": {"description": "processes torchrun starts (one per GPU)", "type": "integer"},
}


def field_docs(cls: type) -> dict[str, str]:
    """The one-line docstrings written under each dataclass field."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for current, following in zip(body, body[1:], strict=False):
        if (
            isinstance(current, ast.AnnAssign)
            and isinstance(current.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[current.target.id] = " ".join(following.value.value.split())
    return docs


def type_schema(annotation: Any) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [type_schema(arg) for arg in typing.get_args(annotation)]
        return {"anyOf": options}
    if annotation is type(None):
        return {"type": "null"}
    if origin is typing.Literal:
        return {"enum": list(typing.get_args(annotation))}
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        item = type_schema(args[0]) if args and args[0] is not Ellipsis else {}
        return {"type": "array", "items": item}
    if origin is dict or annotation is dict:
        return {"type": "object"}
    if dataclasses.is_dataclass(annotation):
        return dataclass_schema(annotation)
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if annotation in simple:
        return {"type": simple[annotation]}
    return {}


def dataclass_schema(cls: type, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    properties = {}
    for f in dataclasses.fields(cls):
        prop = type_schema(hints[f.name])
        prop.update({name: f.metadata[name] for name in stage.BOUNDS if name in f.metadata})
        if f.name in docs:
            prop["description"] = docs[f.name]
        properties[f.name] = prop
    properties.update(extra or {})
    return {"type": "object", "additionalProperties": False, "properties": properties}


def experiment_schema() -> dict[str, Any]:
    sections = {}
    for name in ("prepare_model", "texts", "filter", "activation_cache", "train", "evaluate",
                 "control", "reading_curve", "report"):  # fmt: skip
        sections[stages.section(name)] = dataclass_schema(stages.params_class(name))
    # `control: null` turns the stage off in an experiment whose defaults enable it.
    sections["control"] = {"anyOf": [sections["control"], {"type": "null"}]}
    for name, spec in stages.STAGES.items():
        if spec.reads:
            sections[name] = dataclass_schema(stages.params_class(name))
    data = {}
    for source, stage_name in graph.DATA_SOURCES.items():
        extra = {}
        if stage_name == "import_latentqa":
            extra["path"] = {"type": "string", "description": "folder of the source files"}
            extra[graph.OPTIONAL] = {
                "type": "boolean",
                "description": "leave the source out (with a note) when its folder is absent",
            }
        data[source] = dataclass_schema(stages.params_class(stage_name), extra)
    sections["data"] = {
        "type": "object",
        "additionalProperties": False,
        "properties": data,
        "description": "data sources, each run by its own stage",
    }
    analysis = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            name: dataclass_schema(stages.params_class(name)) for name in graph.ANALYSIS_STAGES
        },
        "description": "readers beside the decoder (layer caches, probes, logit lens, explanation "
        "scoring), one section per stage; null or absent: none",
    }
    sections["analysis"] = {"anyOf": [analysis, {"type": "null"}]}
    resource = {"type": "object", "additionalProperties": False, "properties": RESOURCE_FIELDS}
    sections["resources"] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {name: resource for name in stages.STAGES},
        "description": "per-stage scheduling resources (not part of any key)",
    }
    sections["description"] = {"type": "string", "description": "what the experiment is for"}
    return {"type": "object", "additionalProperties": False, "properties": sections}


def config_schema() -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": "config/config.yaml (generated by python -m pipeline.core.config_schema)",
        "type": "object",
        "additionalProperties": False,
        "required": ["experiments"],
        "properties": {
            "store": {"type": "string", "description": "the content-addressed store"},
            "logs": {"type": "string", "description": "where rule logs go"},
            "default_experiments": {
                "type": "array",
                "items": {"type": "string"},
                "description": "what a bare `snakemake` builds",
            },
            "defaults": {
                "$ref": "#/$defs/experiment",
                "description": "settings every experiment starts from",
            },
            "experiments": {
                "type": "object",
                "additionalProperties": {"$ref": "#/$defs/experiment"},
            },
        },
        "$defs": {"experiment": experiment_schema()},
    }


def render() -> str:
    return yaml.safe_dump(config_schema(), sort_keys=False, width=100)


if __name__ == "__main__":
    sys.stdout.write(render())
