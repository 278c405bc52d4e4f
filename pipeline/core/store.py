"""The content-addressed store (docs/design.md §3): keys, manifests and their checks.

An artifact lives at ``results/store/<stage>/<key>/``. It is complete exactly when its
``_manifest.json`` exists, which lists every file with its size and sha256; how a stage writes
it (a locked staging folder renamed into place) is ``pipeline.core.staging``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Iterable, Mapping
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
        rel = path.relative_to(directory).as_posix()
        if path.is_file() and rel not in (MANIFEST, HOLDER):
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


def staging_dir(out_dir: str | os.PathLike) -> Path:
    """Where a stage writes before publishing. Stable, so that a killed stage can resume."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".partial")


def read_holder(stage_dir: Path) -> dict[str, Any] | None:
    """The holder record of a staging folder (pid, host, since, run, inputs), if readable."""
    try:
        holder = json.loads((stage_dir / HOLDER).read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


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
