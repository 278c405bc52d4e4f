"""Which folders of a store nothing needs any more, and their removal.

Kept, with the first reason found: every artifact a view's ``view.json`` names; what a view's
experiment wanted when a run last checked it (a run under way has published artifacts that no
view names yet), for a view that exists or was checked within :data:`PENDING_S`; every node of the
experiments given to ``--keep`` (their current graphs, computed from the config); a staging folder
a running stage holds, and the artifacts that stage reads; then, transitively, the artifacts every
kept one was built from. Everything else is garbage: unreferenced artifacts, stale staging folders,
folders without a manifest, damaged copies and what an interrupted ``gc`` left; ``older_than_s``
spares what was used more recently.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.core import usage
from pipeline.core.inventory import (
    ARTIFACT,
    DAMAGED_COPY,
    INCOMPLETE,
    LEFTOVER,
    REMOVING,
    STAGING,
    Entry,
    View,
)

log = logging.getLogger("pipeline.core.gc")

PENDING_S = 3 * 86400.0
"""How long a view that was never written (its experiment's first run under way, or failed) keeps
what it wants."""


@dataclass
class Plan:
    """What ``gc`` removes, and why the rest stays."""

    remove: list[Entry]
    """The folders to remove, with their sizes."""
    kept: dict[str, str]
    """Each kept artifact or staging folder (``<stage>/<key>``), with why."""
    last_used: dict[Path, float]
    """When each entry (by path) was last used (published, wanted by a view, written into)."""

    @property
    def freed(self) -> int:
        return sum(entry.size for entry in self.remove)


def last_used(entry: Entry, wanted: Mapping[str, float]) -> float:
    """An artifact: published or last wanted by a view, whichever is later; anything else: when it
    was last written into (a damaged copy: when it was moved aside)."""
    if entry.kind == ARTIFACT:
        return max(entry.mtime, wanted.get(entry.name, 0.0))
    return entry.mtime


def plan(
    entries: list[Entry],
    views: Iterable[View],
    records: list[dict],
    keep: Mapping[str, str],
    now: float,
    older_than_s: float | None = None,
) -> Plan:
    """What to remove from a store holding ``entries``.

    ``keep``: artifacts (``<stage>/<key>``) to keep whatever the views say, with why (the nodes of
    the ``--keep`` experiments' graphs).
    """
    kept: dict[str, str] = {}

    def hold(name: str, why: str) -> None:
        kept.setdefault(name, why)

    for view in views:
        for name in sorted(view.shown):
            hold(name, f"named by the view {view.path}")
        pending = view.checked is not None and now - view.checked < PENDING_S
        if view.exists or pending:
            for name in sorted(view.wants):
                hold(name, f"wanted by {view.path} (last checked by a run)")
    for name, why in keep.items():
        hold(name, why)
    by_key = {e.key: e.name for e in entries if e.kind == ARTIFACT}
    for entry in entries:
        if entry.kind == STAGING and entry.held:
            hold(entry.name, f"being built ({_holder(entry)})")
            for key in entry.inputs.values():
                if key in by_key:
                    hold(by_key[key], f"read by the running stage {entry.name}")
    inputs = {e.name: e.inputs for e in entries if e.kind == ARTIFACT}
    todo = list(kept)
    while todo:
        name = todo.pop()
        for key in (inputs.get(name) or {}).values():
            if key in by_key and by_key[key] not in kept:
                hold(by_key[key], f"built into {name}")
                todo.append(by_key[key])

    wanted = usage.last_wanted(records)
    used = {entry.path: last_used(entry, wanted) for entry in entries}
    remove = []
    for entry in entries:
        if entry.kind in (ARTIFACT, STAGING, INCOMPLETE) and entry.name in kept:
            continue
        if entry.kind == STAGING and entry.held:
            continue
        if older_than_s is not None and now - last_used(entry, wanted) < older_than_s:
            continue
        remove.append(entry)
    return Plan(remove, kept, used)


def _holder(entry: Entry) -> str:
    holder = entry.holder or {}
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"


def remove(entries: Iterable[Entry]) -> list[tuple[Entry, str | None]]:
    """Remove each entry; returns each with None, or why it stayed (a staging folder that a stage
    took meanwhile). An artifact is first renamed to ``<key>.removing``, so that it stops being
    complete at once and an interrupted removal is finished by the next ``gc``."""
    done: list[tuple[Entry, str | None]] = []
    for entry in entries:
        if entry.kind == STAGING:
            done.append((entry, _remove_staging(entry.path)))
            continue
        path = entry.path
        if entry.kind in (ARTIFACT, INCOMPLETE):
            aside = path.with_name(path.name + REMOVING)
            if aside.exists():
                shutil.rmtree(aside)
            os.replace(path, aside)
            path = aside
        _rmtree(path)
        done.append((entry, None))
        log.info("removed %s", entry.path)
    return done


def _remove_staging(path: Path) -> str | None:
    """Remove a staging folder unless a stage holds it; taken under its lock, so that no stage
    starts in it while it goes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "a stage holds it now"
        aside = path.with_name(path.name[: -len(".partial")] + REMOVING)
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(path, aside)
        _rmtree(aside)
    finally:
        os.close(fd)
    log.info("removed %s", path)
    return None


def _rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


KINDS = {
    ARTIFACT: "no view names it",
    STAGING: "stale staging folder (nobody holds it)",
    INCOMPLETE: "no manifest (never completed)",
    DAMAGED_COPY: "moved aside by verify --repair",
    LEFTOVER: "left by an interrupted gc",
}
"""Why each kind of entry is garbage, as ``gc`` prints it."""
