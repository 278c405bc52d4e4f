"""Which views use a store, and when each artifact was last wanted: the record `gc` keeps by.

A store may serve several working directories (``store:`` in each one's config pointing at one
path), so the views that reference it cannot be found by looking next to it. Every time a view is
written or checked (each Snakemake parse checks every experiment's view), it appends one line to
``<store>/_usage.jsonl``: when, the view folder's absolute path, and the artifacts its experiment
wants now (``<stage>/<key>``; not all built yet while a run is under way). The latest line of a
view says what that working directory needs; the latest line naming an artifact says when it was
last wanted. Writers take an exclusive ``flock`` on the file for each line; ``gc`` holds it while
it decides and removes, so no run can start to rely on an artifact that ``gc`` is removing.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("pipeline.core.usage")

LOG = "_usage.jsonl"


def artifact_name(path: str | os.PathLike, store_dir: str | os.PathLike) -> str | None:
    """``<stage>/<key>`` of an artifact path inside ``store_dir`` (relative paths are taken from
    the current directory); None for a path elsewhere."""
    try:
        rel = Path(path).resolve().relative_to(Path(store_dir).resolve())
    except ValueError:
        return None
    return rel.as_posix() if len(rel.parts) == 2 else None


@contextmanager
def locked(store_dir: str | os.PathLike) -> Iterator[IO[str]]:
    """The usage file, opened for appending and reading under an exclusive lock.

    ``gc`` replaces the file when it compacts it; a writer that waited on the old one opens the
    new one (the lock follows the inode, as in ``staging.lock_staging``).
    """
    path = Path(store_dir) / LOG
    while True:
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield handle
                return
        finally:
            handle.close()  # the lock goes with it


def record_view(
    view_dir: str | os.PathLike,
    artifacts: Iterable[str | os.PathLike],
    store_dir: str | os.PathLike,
) -> None:
    """Note that the view ``view_dir`` wants ``artifacts`` now (paths into ``store_dir``).

    A store that does not exist yet, or that this user cannot write, is left alone with a
    warning: the record protects artifacts from ``gc``, it is not needed to build them.
    """
    store_dir = Path(store_dir)
    if not store_dir.is_dir():
        return
    names = sorted({n for a in artifacts if (n := artifact_name(a, store_dir)) is not None})
    entry = {"at": time.time(), "view": str(Path(view_dir).resolve()), "wants": names}
    try:
        with locked(store_dir) as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
    except OSError as exc:
        log.warning("could not record the view %s in %s: %s", view_dir, store_dir / LOG, exc)


def parse(text: str) -> list[dict[str, Any]]:
    """The records of a usage file; a torn or foreign line is skipped, not fatal."""
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("at"), int | float):
            entries.append(entry)
    return entries


def read(store_dir: str | os.PathLike) -> list[dict[str, Any]]:
    try:
        return parse((Path(store_dir) / LOG).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []


def latest_by_view(entries: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The latest record of each view folder."""
    latest: dict[str, dict[str, Any]] = {}
    for entry in entries:
        view = entry.get("view")
        if isinstance(view, str) and (view not in latest or entry["at"] >= latest[view]["at"]):
            latest[view] = entry
    return latest


def last_wanted(entries: Iterable[dict[str, Any]]) -> dict[str, float]:
    """When each artifact (``<stage>/<key>``) was last wanted by a view."""
    when: dict[str, float] = {}
    for entry in entries:
        for name in entry.get("wants") or ():
            when[name] = max(when.get(name, 0.0), float(entry["at"]))
    return when


def compact(
    handle: IO[str],
    store_dir: str | os.PathLike,
    entries: list[dict],
    keep_names: set[str],
    forget_views: set[str] = frozenset(),
) -> None:
    """Rewrite the usage file (its lock held through ``handle``): the latest record of each view
    but ``forget_views``, and for every artifact in ``keep_names`` (those still in the store) its
    last use."""
    views = {k: v for k, v in latest_by_view(entries).items() if k not in forget_views}
    lines = [json.dumps(entry, sort_keys=True) for entry in views.values()]
    covered = last_wanted(views.values())
    for name, at in sorted(last_wanted(entries).items()):
        if name in keep_names and at > covered.get(name, 0.0):
            lines.append(json.dumps({"at": at, "wants": [name]}, sort_keys=True))
    path = Path(store_dir) / LOG
    tmp = path.with_name(f".{LOG}.{os.getpid()}.tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)
    handle.flush()
