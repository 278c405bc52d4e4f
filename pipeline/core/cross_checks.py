"""Checks across the sections of one experiment, made when the workflow parses its config.

The schema checks each setting on its own; these compare a setting with what the rest of the
experiment (or a data file of the repository) provides, so that a name that fits nothing stops
``snakemake -n``, not a job minutes or hours into the run.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from pipeline.core import stages
from pipeline.core.errors import InputError


def mix_name(stage_name: str, params: Mapping[str, Any]) -> str:
    """What ``train.mix`` calls the rows a data stage writes: their ``source`` up to any colon,
    set by the stage's params where it has a ``source`` setting, else by its ``MIX_NAME``."""
    source = params.get("source") or stages.params_class(stage_name).MIX_NAME
    return source.split(":", 1)[0]


def check_sources(
    where: str, setting: str, by_source: Mapping[str, Any] | None, data: Iterable[tuple[str, Any]]
) -> None:
    """Refuse a per-source ``train`` setting (``mix``, ``family_layers``) that names a source
    none of the experiment's training data sections produces. ``data``: (stage name, params) of
    each training data section."""
    if not by_source:
        return
    produced = sorted({mix_name(stage_name, params) for stage_name, params in data})
    unknown = sorted(set(by_source) - set(produced))
    if unknown:
        raise InputError(
            f"{where}.train.{setting}: {', '.join(unknown)} is not a source of this experiment's "
            f"data sections, which produce {', '.join(produced)}"
        )


@functools.cache
def _relation_names(path: str, mtime_ns: int, size: int) -> frozenset[str] | None:
    """The relations a file defines, read once per version of the file (every experiment of a
    config checks the same file, several times each, whenever the workflow parses)."""
    try:
        relations = yaml.safe_load(Path(path).read_text(encoding="utf-8"))["relations"]
        return frozenset(relation["name"] for relation in relations)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
        return None


def check_relations(where: str, names: Iterable[str] | None, relations_file: Path) -> None:
    """Refuse relation names that ``relations_file`` does not define (None: all of them)."""
    try:
        stat = Path(relations_file).stat()
    except OSError:
        return  # a missing file is refused, by name, by the stages reading it
    known = _relation_names(str(relations_file), stat.st_mtime_ns, stat.st_size)
    if known is None:
        return  # an unreadable file is refused, with its faults named, by the stages reading it
    missing = [name for name in names or () if name not in known]
    if missing:
        raise InputError(
            f"{where}: {', '.join(missing)} is not a relation of {relations_file} (it has "
            f"{', '.join(sorted(known))})"
        )
