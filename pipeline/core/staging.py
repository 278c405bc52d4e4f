"""Staging folders and atomic publication of the store's artifacts (docs/design.md §3).

A stage writes into a staging directory that is renamed into place once its manifest is written
there, so a reader never sees a half-written artifact under its final name. A run holds an
exclusive ``flock`` on the staging directory for its whole life, so two runs of one key never
write into the same folder; a staging directory nobody holds is stale, and a new run resumes from
what it kept there. A second run of a key whose holder is alive (its heartbeat, the mtime of the
holder file, keeps moving) waits for it, then reuses what it published (:class:`AlreadyPublished`)
or resumes what it left; a holder whose heartbeat stops (a stopped or hung process, a host gone
away) is refused (:class:`StagingBusy`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Collection, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.core.store import (
    HOLDER,
    MANIFEST,
    StoreError,
    read_holder,
    staging_dir,
    write_manifest,
)

log = logging.getLogger("pipeline.core.staging")


class StagingBusy(StoreError):
    """Another process holds the lock on the staging directory of the same key and waiting for it
    is wrong: it is this process, or its heartbeat stopped."""


class AlreadyPublished(StoreError):
    """The artifact is published (by another run, while this one waited): nothing to build."""


LOCK_GRACE_S = 10.0
"""How long a stage waits, silently, for the holder of its staging folder to let go: a worker of a
run that was just killed releases its files only as it finishes dying."""
HEARTBEAT_S = 5.0
"""How often the holder of a staging folder renews the mtime of its holder file."""
HEARTBEAT_STALE_S = 120.0
"""A holder file unchanged this long (by the waiter's clock) belongs to a stopped or hung run."""
WAIT_NOTICE_S = 600.0
"""How often a waiting stage says again that it is still waiting."""


def _holder(stage_dir: Path) -> str:
    holder = read_holder(stage_dir)
    try:
        return f"pid {holder['pid']} on {holder['host']} since {holder['since']}"
    except (TypeError, KeyError):
        return "holder unknown"


def _beat(stage_dir: Path) -> float | None:
    try:
        return (stage_dir / HOLDER).stat().st_mtime
    except OSError:
        return None


def _is_me(holder: dict[str, Any] | None) -> bool:
    return bool(holder) and holder.get("pid") == os.getpid() and holder.get("host") == _HOST


_HOST = socket.gethostname()


def lock_staging(stage_dir: Path, grace_s: float | None = None, wait_s: float | None = None) -> int:
    """Create ``stage_dir`` if needed and take an exclusive lock on it; return the descriptor.

    A held folder is another run building the same artifact (or a killed run's worker that has
    not finished dying): this one says so and waits, then locks the folder, which the holder
    published (the caller finds the artifact and reuses it) or left for a resume. After
    ``grace_s`` seconds (default :data:`LOCK_GRACE_S`) it waits only for a holder that is alive by
    its heartbeat (the holder file's mtime, renewed every :data:`HEARTBEAT_S` by
    :func:`publishing`), and at most ``wait_s`` seconds more (None: as long as the holder lives).
    Raises :class:`StagingBusy` where waiting is wrong: the holder is this very process, its
    heartbeat stopped (or it wrote no holder file) for :data:`HEARTBEAT_STALE_S` (a stopped or
    hung run, a host gone away), or ``wait_s`` ran out.
    """
    started = time.monotonic()
    grace = LOCK_GRACE_S if grace_s is None else grace_s
    last_beat, beat_seen = None, started
    noticed = None
    while True:
        stage_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(stage_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            now = time.monotonic()
            beat = _beat(stage_dir)
            if beat != last_beat:
                last_beat, beat_seen = beat, now
            holder = read_holder(stage_dir)
            if _is_me(holder):
                raise StagingBusy(
                    f"{stage_dir} is locked by this very process ({_holder(stage_dir)}): "
                    "waiting would never end"
                ) from None
            if noticed is None or now - noticed > WAIT_NOTICE_S:
                log.warning(
                    "%s is being built by another run (%s); waiting for it (%.0f s so far), then "
                    "reusing what it publishes or resuming what it leaves",
                    stage_dir,
                    _holder(stage_dir),
                    now - started,
                )
                noticed = now
            if now - started < grace:
                time.sleep(0.2)
                continue
            why = None
            if now - beat_seen > HEARTBEAT_STALE_S:
                why = (
                    f"whose heartbeat stopped {now - beat_seen:.0f} s ago (stopped or hung)"
                    if beat is not None
                    else f"which has written no holder file for {now - beat_seen:.0f} s"
                )
            elif wait_s is not None and now - started > grace + wait_s:
                why = f"which is still writing there after {now - started:.0f} s"
            if why:
                raise StagingBusy(
                    f"{stage_dir} is locked by another run of this stage ({_holder(stage_dir)}), "
                    f"{why}; wait for it to finish or stop it, then rerun"
                ) from None
            time.sleep(1.0)
            continue
        try:
            current = os.stat(stage_dir)
        except FileNotFoundError:
            current = None
        held = os.fstat(fd)
        if current is not None and (current.st_ino, current.st_dev) == (held.st_ino, held.st_dev):
            if noticed is not None:
                log.info("%s is free again after %.0f s", stage_dir, time.monotonic() - started)
            return fd
        os.close(fd)  # published or removed between mkdir and flock: look again


def is_held(stage_dir: Path) -> bool:
    """Whether a run holds the lock on ``stage_dir`` now (False for a missing folder)."""
    try:
        fd = os.open(stage_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # a lock taken here goes with the descriptor
    return False


@contextmanager
def _heartbeat(stage_dir: Path, holder: Mapping[str, Any]):
    """Write the holder file and renew its mtime every :data:`HEARTBEAT_S` until the block ends."""
    path = stage_dir / HOLDER
    path.write_text(json.dumps(dict(holder)) + "\n")
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                os.utime(path)
            except OSError:
                return

    thread = threading.Thread(target=beat, name="staging-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        path.unlink(missing_ok=True)


def _clean_stale(stage_dir: Path, keep: Collection[str] | None) -> None:
    """Remove what a killed run left in ``stage_dir`` except the entries a resume reuses."""
    removed = []
    for entry in sorted(stage_dir.iterdir()):
        if entry.name != HOLDER and keep is not None and entry.name not in keep:
            removed.append(entry.name)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    kept = sorted(p.name for p in stage_dir.iterdir() if p.name != HOLDER)
    if kept or removed:
        log.info("stale staging folder %s: resuming from %s; removed %s", stage_dir, kept, removed)


@contextmanager
def publishing(
    out_dir: str | os.PathLike,
    key: str,
    stage: str,
    params: Mapping[str, Any],
    inputs: Mapping[str, str],
    keep: Collection[str] | None = None,
    scratch: Collection[str] = (),
):
    """Yield a locked staging directory; on success write the manifest and rename it to ``out_dir``.

    The staging directory of a killed run is reused: ``keep`` names the top-level entries a
    resumed run may skip work with (``None``: all of them); the rest is removed first. On an
    exception the staging directory is left for the next attempt and nothing is published.
    ``scratch`` names top-level entries that only serve a resume (checkpoints): they stay until
    the stage's work is done and are removed just before the manifest, never published.
    """
    out_dir = Path(out_dir)
    stage_dir = staging_dir(out_dir)
    fd = lock_staging(stage_dir)
    try:
        if (out_dir / MANIFEST).exists():
            if not any(stage_dir.iterdir()):
                stage_dir.rmdir()
            raise AlreadyPublished(f"{out_dir} is already published; refusing to overwrite it")
        (stage_dir / HOLDER).unlink(missing_ok=True)  # a killed run's
        holder = {
            "pid": os.getpid(),
            "host": _HOST,
            "since": time.ctime(),
            # The launch this process belongs to (torchrun's run id): its other processes, which
            # take no lock, tell from it that their rank 0 holds the folder.
            "run": launch_id(),
            # What it reads: `gc` keeps them while it runs.
            "inputs": dict(inputs),
        }
        extra: dict[str, Any] = {}
        try:
            # The heartbeat goes on until the manifest is written (hashing a large artifact takes
            # a while): a waiter must not take a publishing holder for a stopped one.
            with _heartbeat(stage_dir, holder):
                _clean_stale(stage_dir, keep)
                yield stage_dir, extra
                (stage_dir / MANIFEST).unlink(missing_ok=True)
                for name in scratch:
                    entry = stage_dir / name
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink(missing_ok=True)
                write_manifest(stage_dir, key, stage, params, inputs, extra)
        except BaseException:
            if not any(stage_dir.iterdir()):
                stage_dir.rmdir()  # nothing to resume from
            raise
        if out_dir.exists():
            # Snakemake may have created an empty output directory; an incomplete one is stale.
            shutil.rmtree(out_dir)
        os.replace(stage_dir, out_dir)
    finally:
        os.close(fd)  # the lock goes with it (it followed the folder through the rename)


def launch_id() -> str | None:
    """What the processes of one multi-process launch share: torchrun's run id, else the
    rendezvous address of their process group; None for a process on its own."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return os.environ["TORCHELASTIC_RUN_ID"]
    if "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
        return f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    return None


def follows_holder(out_dir: str | os.PathLike, poll_s: float = 0.2) -> bool:
    """For a process of a multi-process stage that takes no lock (a torchrun rank above 0): wait
    until this launch's rank 0 holds the staging folder (True: work with it) or another run has
    published the artifact (False: rank 0 reuses it, nothing to do). A rank 0 that fails instead
    ends the launch, and torchrun this process with it."""
    out_dir = Path(out_dir)
    stage_dir = staging_dir(out_dir)
    run = launch_id()
    while True:
        holder = read_holder(stage_dir)
        if holder is not None and run is not None and holder.get("run") == run:
            return True
        if (out_dir / MANIFEST).exists():
            return False
        time.sleep(poll_s)
