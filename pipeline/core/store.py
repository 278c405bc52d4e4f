"""The content-addressed store (docs/design.md §3): keys, manifests and atomic publication.

An artifact lives at ``results/store/<stage>/<key>/``. It is complete exactly when its
``_manifest.json`` exists; the manifest is written last, inside a staging directory that is then
renamed into place, so a reader never sees a half-written artifact under its final name. A run
holds an exclusive ``flock`` on the staging directory for its whole life, so two runs of one key
never write into the same folder; a staging directory nobody holds is stale, and a new run resumes
from what it kept there.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Collection, Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.core.lifeline import child_lifeline

log = logging.getLogger("pipeline.core.store")

MANIFEST = "_manifest.json"
HOLDER = "_holder.json"
"""Inside a staging directory: who holds its lock (for the message a second run gets)."""
KEY_LENGTH = 16
_CHUNK = 1 << 20


class StoreError(RuntimeError):
    """An artifact is missing, incomplete or does not match its manifest."""


class StagingBusy(StoreError):
    """Another process holds the lock on the staging directory of the same key."""


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def source_digest(paths: Iterable[str | os.PathLike], root: str | os.PathLike = ".") -> str:
    """Digest of source files by path (relative to ``root``) and content, order-independent."""
    root = Path(root)
    entries = []
    for path in paths:
        path = Path(path)
        name = path.relative_to(root).as_posix() if path.is_absolute() else path.as_posix()
        entries.append((name, file_sha256(root / path if not path.is_absolute() else path)))
    return hashlib.sha256(canonical_json(sorted(entries)).encode()).hexdigest()


def compute_key(stage: str, params: Mapping[str, Any], code: str, inputs: Mapping[str, str]) -> str:
    """The store key of a stage: a digest of everything that determines its output.

    ``inputs`` maps input names to the keys of upstream artifacts (or file digests).
    """
    payload = {"stage": stage, "params": params, "code": code, "inputs": dict(inputs)}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:KEY_LENGTH]


def _versions() -> dict[str, str]:
    versions = {}
    for name in ("torch", "transformers", "peft", "polars", "safetensors"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        versions[name] = getattr(module, "__version__", "unknown")
    return versions


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            preexec_fn=child_lifeline,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def _file_entries(directory: Path) -> dict[str, dict[str, Any]]:
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            rel = path.relative_to(directory).as_posix()
            files[rel] = {"sha256": file_sha256(path), "size": path.stat().st_size}
    return files


def write_manifest(
    directory: Path,
    key: str,
    stage: str,
    params: Mapping[str, Any],
    inputs: Mapping[str, str],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    manifest = {
        "key": key,
        "stage": stage,
        "params": dict(params),
        "inputs": dict(inputs),
        "files": _file_entries(directory),
        "versions": _versions(),
        "git_commit": _git_commit(),
    }
    if extra:
        manifest["info"] = dict(extra)
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, directory / MANIFEST)
    return manifest


LOCK_GRACE_S = 10.0
"""How long a stage waits for the holder of its staging folder to let go before refusing to run."""


def staging_dir(out_dir: str | os.PathLike) -> Path:
    """Where a stage writes before publishing. Stable, so that a killed stage can resume."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".partial")


def _holder(stage_dir: Path) -> str:
    try:
        holder = json.loads((stage_dir / HOLDER).read_text())
        return f"pid {holder['pid']} on {holder['host']} since {holder['since']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


def lock_staging(stage_dir: Path, grace_s: float | None = None) -> int:
    """Create ``stage_dir`` if needed and take an exclusive lock on it; return the descriptor.

    A holder gets ``grace_s`` seconds (default :data:`LOCK_GRACE_S`) to let go: a worker of a run
    that was just killed releases its files only as it finishes dying. After that, raises
    :class:`StagingBusy`: that run is still writing there (an orphaned worker of a killed run
    included), and waiting on it longer could outlast a scheduler's time limit without a word.
    """
    deadline = time.monotonic() + (LOCK_GRACE_S if grace_s is None else grace_s)
    while True:
        stage_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(stage_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise StagingBusy(
                f"{stage_dir} is locked by another run of this stage ({_holder(stage_dir)}), "
                "which is still writing there; wait for it to finish or stop it, then rerun"
            ) from None
        try:
            current = os.stat(stage_dir)
        except FileNotFoundError:
            current = None
        held = os.fstat(fd)
        if current is not None and (current.st_ino, current.st_dev) == (held.st_ino, held.st_dev):
            return fd
        os.close(fd)  # published or removed between mkdir and flock: look again


def _clean_stale(stage_dir: Path, keep: Collection[str] | None) -> None:
    """Remove what a killed run left in ``stage_dir`` except the entries a resume reuses."""
    removed = []
    for entry in sorted(stage_dir.iterdir()):
        if entry.name == HOLDER or (keep is not None and entry.name not in keep):
            removed.append(entry.name)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    kept = sorted(p.name for p in stage_dir.iterdir())
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
            raise StoreError(f"{out_dir} is already published; refusing to overwrite it")
        _clean_stale(stage_dir, keep)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.ctime()}
        (stage_dir / HOLDER).write_text(json.dumps(holder) + "\n")
        extra: dict[str, Any] = {}
        try:
            yield stage_dir, extra
        except BaseException:
            (stage_dir / HOLDER).unlink(missing_ok=True)
            if not any(stage_dir.iterdir()):
                stage_dir.rmdir()  # nothing to resume from
            raise
        (stage_dir / HOLDER).unlink(missing_ok=True)
        (stage_dir / MANIFEST).unlink(missing_ok=True)
        for name in scratch:
            entry = stage_dir / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
        write_manifest(stage_dir, key, stage, params, inputs, extra)
        if out_dir.exists():
            # Snakemake may have created an empty output directory; an incomplete one is stale.
            shutil.rmtree(out_dir)
        os.replace(stage_dir, out_dir)
    finally:
        os.close(fd)  # the lock goes with it (it followed the folder through the rename)


def read_manifest(directory: str | os.PathLike, verify: str = "fast") -> dict[str, Any]:
    """Load an artifact's manifest, checking its files.

    ``verify``: ``"none"``, ``"fast"`` (every file exists with its size) or ``"full"`` (sha256).
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.exists():
        raise StoreError(f"{directory} is not a complete artifact: {MANIFEST} is missing")
    manifest = json.loads(path.read_text())
    if verify == "none":
        return manifest
    for rel, entry in manifest["files"].items():
        file = directory / rel
        if not file.is_file():
            raise StoreError(f"{directory}: {rel} is listed in the manifest but missing")
        if file.stat().st_size != entry["size"]:
            raise StoreError(
                f"{directory}: {rel} has size {file.stat().st_size}, manifest says {entry['size']}"
            )
        if verify == "full" and file_sha256(file) != entry["sha256"]:
            raise StoreError(f"{directory}: {rel} does not match its sha256 in the manifest")
    return manifest
