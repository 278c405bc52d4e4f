"""Every artifact of a store checked against its manifest, and damaged ones moved aside.

A stage checks its inputs' file sizes when it starts; nothing else reads a whole store back.
After a disk or copy error, :func:`check` names each damaged file: missing, another size, or
(``full``) another sha256. :func:`repair` moves the damaged artifacts to ``<store>/_damaged/``,
and with them every artifact built from one (it may have been built from the damaged bytes), so
that the next run rebuilds them all; the views that named them are dated out of date.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline.core import store
from pipeline.core.inventory import ARTIFACT, DAMAGED, INCOMPLETE, Entry, View
from pipeline.core.view import mark_outdated


@dataclass
class Damage:
    """One artifact that does not match its manifest."""

    entry: Entry
    """The artifact."""
    problems: list[str]
    """Each damaged file (or the manifest itself) with what is wrong."""


def check(entry: Entry, full: bool = False) -> list[str]:
    """What is wrong with an artifact: each file missing, of another size, or (``full``) of another
    sha256 than its manifest says; an empty list when nothing is."""
    if entry.kind == INCOMPLETE:
        return [f"{store.MANIFEST} is missing (never completed)"]
    try:
        manifest = json.loads((entry.path / store.MANIFEST).read_text())
        files = manifest["files"]
        if manifest.get("key") != entry.key:
            return [f"{store.MANIFEST} is for key {manifest.get('key')!r}, not {entry.key!r}"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{store.MANIFEST} is unreadable: {exc}"]
    problems = []
    for rel, expected in sorted(files.items()):
        path = entry.path / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
            continue
        size = path.stat().st_size
        if size != expected["size"]:
            problems.append(f"{rel}: {size} bytes, the manifest says {expected['size']}")
        elif full and store.file_sha256(path) != expected["sha256"]:
            problems.append(f"{rel}: sha256 differs from the manifest (same size)")
    return problems


def check_all(entries: Iterable[Entry], full: bool = False) -> list[Damage]:
    """Every damaged artifact among ``entries`` (incomplete folders count as damaged)."""
    damaged = []
    for entry in entries:
        if entry.kind in (ARTIFACT, INCOMPLETE):
            problems = check(entry, full)
            if problems:
                damaged.append(Damage(entry, problems))
    return damaged


def dependants(entries: list[Entry], names: set[str]) -> list[Entry]:
    """The artifacts built, directly or not, from the artifacts ``names``."""
    artifacts = [e for e in entries if e.kind == ARTIFACT]
    tainted_keys = {e.key for e in artifacts if e.name in names}
    found: list[Entry] = []
    grew = True
    while grew:
        grew = False
        for entry in artifacts:
            if entry.name in names or entry in found:
                continue
            if tainted_keys & set(entry.inputs.values()):
                found.append(entry)
                tainted_keys.add(entry.key)
                grew = True
    return found


def repair(store_dir: Path, moved: list[Entry], views: Iterable[View]) -> list[Path]:
    """Move ``moved`` to ``<store>/_damaged/<stage>-<key>-<time>`` and date every view naming one
    of them out of date; returns the views marked."""
    aside = Path(store_dir) / DAMAGED
    aside.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for entry in moved:
        target = aside / f"{entry.stage}-{entry.key}-{stamp}"
        os.replace(entry.path, target)
        os.utime(target)  # `gc --older-than` counts from the move
    names = {entry.name for entry in moved}
    marked = []
    for view in views:
        if view.shown & names and view.path.is_dir():
            mark_outdated(view.path)
            marked.append(view.path)
    return marked
