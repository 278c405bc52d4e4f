"""A persistent, content-addressed cache of completed API calls.

One JSON file per completed call, at ``<cache_dir>/<key[:2]>/<key>.json``, written to a temporary
file and renamed into place: a crash never leaves a half-written entry, and loses no completed
call. The key is a sha256 over the model, the messages, the sampling parameters (including the
requested response format and schema), the prompt-template version and the sample index, so a
rerun, or a run resumed after a crash, finds every completed call and repeats none. Changing any
of those makes a new key (a new call); nothing else does. The cache lives outside the store so it
survives changes to a stage's key. Entries hold the request and the response, never credentials.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pipeline.core.store import canonical_json

CACHE_FORMAT = 1


def request_key(
    model: str,
    messages: list[dict[str, str]],
    sampling: dict[str, Any],
    template_version: str | int,
    sample_index: int,
) -> str:
    """The full sha256 hex digest identifying one call."""
    payload = {
        "format": CACHE_FORMAT,
        "model": model,
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "sampling": sampling,
        "template_version": str(template_version),
        "sample_index": sample_index,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


class RequestCache:
    """Completed calls under one directory; safe for concurrent writers (last rename wins)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.writes = 0

    def path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a sha256 hex key: {key!r}")
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored entry, or None; an unreadable entry counts as absent (and is replaced)."""
        path = self.path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != key or "response" not in entry:
            return None
        self.hits += 1
        return entry

    def put(self, key: str, request: dict[str, Any], response: dict[str, Any]) -> Path:
        """Store one completed call atomically (temp file + fsync + rename)."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"key": key, "format": CACHE_FORMAT, "request": request, "response": response}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(entry, handle, ensure_ascii=False, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.writes += 1
        return path

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("??/*.json"))
