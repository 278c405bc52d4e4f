"""What a store holds, and which views reference it: the ground `du`, `gc` and `verify` stand on.

A store folder holds ``<stage>/<key>/`` artifacts (complete when ``_manifest.json`` exists),
``<stage>/<key>.partial/`` staging folders (held by a running stage, or stale: a killed run's,
kept for its resume), ``<stage>/<key>.removing/`` (what an interrupted ``gc`` was removing),
``_damaged/`` (artifacts ``verify --repair`` moved aside) and ``_usage.jsonl``
(``pipeline.core.usage``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core import staging, store, usage

DAMAGED = "_damaged"
PARTIAL = ".partial"
REMOVING = ".removing"

ARTIFACT, STAGING, INCOMPLETE, DAMAGED_COPY, LEFTOVER = (
    "artifact",
    "staging",
    "incomplete",
    "damaged",
    "leftover",
)
"""Kinds of entry: a complete artifact; a staging folder; a folder under an artifact's name without
a manifest; an artifact moved aside by ``verify --repair``; what an interrupted ``gc`` left."""


@dataclass
class Entry:
    """One folder of the store."""

    kind: str
    """One of the kinds above."""
    path: Path
    """Where it is."""
    stage: str
    """The stage that built it."""
    key: str
    """Its key (for a damaged copy: the key it had)."""
    size: int = 0
    """Bytes it takes on disk."""
    mtime: float = 0.0
    """Published (an artifact: its manifest's mtime), moved aside, or last written into."""
    held: bool = False
    """A staging folder that a running stage holds."""
    holder: dict[str, Any] | None = None
    """The holder record of a held staging folder."""
    inputs: dict[str, str] = field(default_factory=dict)
    """The keys it was built from (a staging folder: those its running stage reads)."""

    @property
    def name(self) -> str:
        return f"{self.stage}/{self.key}"


def disk_size(path: Path) -> tuple[int, float]:
    """Bytes on disk (allocated blocks, as ``du`` counts) under ``path``, and its newest mtime."""
    size, newest = 0, 0.0
    try:
        top = path.lstat()
    except FileNotFoundError:
        return 0, 0.0
    size, newest = top.st_blocks * 512, top.st_mtime
    if not path.is_dir() or path.is_symlink():
        return size, newest
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                stat = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue  # removed while counted (a running stage's temporary)
            size += stat.st_blocks * 512
            newest = max(newest, stat.st_mtime)
    return size, newest


def _artifact(path: Path, stage: str) -> Entry:
    size, _ = disk_size(path)
    manifest_path = path / store.MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        inputs = dict(manifest.get("inputs") or {})
    except (OSError, ValueError):
        inputs = {}  # unreadable: `verify` names it
    return Entry(
        ARTIFACT, path, stage, path.name, size, manifest_path.stat().st_mtime, False, None, inputs
    )


def _staging(path: Path, stage: str) -> Entry:
    size, newest = disk_size(path)
    held = staging.is_held(path)
    holder = store.read_holder(path) if held else None
    inputs = dict((holder or {}).get("inputs") or {})
    return Entry(
        STAGING, path, stage, path.name[: -len(PARTIAL)], size, newest, held, holder, inputs
    )


def scan(store_dir: str | os.PathLike) -> list[Entry]:
    """Every folder of the store, by stage and key."""
    store_dir = Path(store_dir)
    entries: list[Entry] = []
    if not store_dir.is_dir():
        return entries
    for stage_dir in sorted(store_dir.iterdir()):
        if not stage_dir.is_dir() or stage_dir.is_symlink():
            continue
        if stage_dir.name == DAMAGED:
            for copy in sorted(stage_dir.iterdir()):
                stage, _, rest = copy.name.partition("-")
                size, _ = disk_size(copy)
                entries.append(Entry(DAMAGED_COPY, copy, stage, rest, size, copy.lstat().st_mtime))
            continue
        if stage_dir.name.startswith(("_", ".")):
            continue
        for path in sorted(stage_dir.iterdir()):
            stage = stage_dir.name
            if path.name.endswith(PARTIAL):
                entries.append(_staging(path, stage))
            elif path.name.endswith(REMOVING):
                size, newest = disk_size(path)
                key = path.name[: -len(REMOVING)]
                entries.append(Entry(LEFTOVER, path, stage, key, size, newest))
            elif (path / store.MANIFEST).is_file():
                entries.append(_artifact(path, stage))
            else:
                size, newest = disk_size(path)
                entries.append(Entry(INCOMPLETE, path, stage, path.name, size, newest))
    return entries


@dataclass
class View:
    """A view folder (``results/<experiment>`` of some working directory) that uses the store."""

    path: Path
    """The view folder."""
    shown: set[str]
    """The artifacts (``<stage>/<key>``) its ``view.json`` names now."""
    wants: set[str]
    """What its experiment wanted when last checked (not all built while a run is under way)."""
    checked: float | None
    """When that was (None: found beside the working directory, never recorded)."""

    @property
    def exists(self) -> bool:
        return (self.path / "view.json").is_file()

    @property
    def experiment(self) -> str:
        return self.path.name


def shown_by(view_dir: Path, store_dir: Path) -> set[str]:
    """The artifacts of ``store_dir`` a view's ``view.json`` names (paths in it are relative to
    the view's working directory, ``results/<experiment>/../..``)."""
    try:
        named = json.loads((view_dir / "view.json").read_text())
    except (OSError, ValueError):
        return set()
    workdir = view_dir.parent.parent
    found = set()
    for path in named.values() if isinstance(named, dict) else ():
        path = Path(path)
        name = usage.artifact_name(path if path.is_absolute() else workdir / path, store_dir)
        if name is not None:
            found.add(name)
    return found


def find_views(
    store_dir: str | os.PathLike, records: list[dict[str, Any]], workdirs: list[Path]
) -> list[View]:
    """The views recorded in the store, and those under ``<workdir>/results/`` that name it (views
    written before the store kept a record, or whose record was lost)."""
    store_dir = Path(store_dir)
    views: dict[Path, View] = {}
    for path, record in usage.latest_by_view(records).items():
        view_dir = Path(path)
        views[view_dir] = View(
            view_dir, shown_by(view_dir, store_dir), set(record.get("wants") or ()), record["at"]
        )
    for workdir in workdirs:
        for view_json in sorted((workdir / "results").glob("*/view.json")):
            view_dir = view_json.parent.resolve()
            if view_dir not in views and (shown := shown_by(view_dir, store_dir)):
                views[view_dir] = View(view_dir, shown, set(), None)
    return sorted(views.values(), key=lambda v: str(v.path))


def view_label(view: View, cwd: Path) -> str:
    """The experiment's name, with its working directory when it is not ``cwd``."""
    workdir = view.path.parent.parent
    return view.experiment if workdir == cwd.resolve() else f"{view.experiment} ({workdir})"


def size_text(size: int) -> str:
    """Bytes for a person: ``4.6 MB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def when_text(stamp: float | None) -> str:
    """A time stamp for a person, ``-`` if none."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)) if stamp else "-"
