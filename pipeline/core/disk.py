"""A full disk (or an exhausted quota) told apart from other errors, to end a stage on one line.

Libraries report it in their own ways: Python's ``OSError`` carries ``errno.ENOSPC``; safetensors
and polars wrap the OS error in their own exception with the OS message in the text; torch's
writer says only "file write failed". The free space left where the stage writes settles the
last kind.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE_TEXTS = ("no space left on device", "disk quota exceeded", "storagefull", "quotaexceeded")
"""How a wrapped OS error reads (the OS's message, or Rust's ``ErrorKind`` in safetensors)."""
NEARLY_FULL_BYTES = 1 << 20
"""Below this much free space, a failed write is put down to the full disk."""


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes for an unprivileged writer on the filesystem of ``path`` (or of its nearest
    existing parent); None where that cannot be told."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def out_of_space(exc: BaseException, folder: str | os.PathLike) -> bool:
    """Whether ``exc``, raised while writing into ``folder``, comes from a full disk or quota."""
    for error in _chain(exc):
        if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
            return True
        text = str(error).lower().replace(" ", "").replace("_", "")
        if any(needle.replace(" ", "") in text for needle in NO_SPACE_TEXTS):
            return True
    free = free_bytes(folder)
    return free is not None and free < NEARLY_FULL_BYTES


def describe(folder: str | os.PathLike) -> str:
    """The folder and its filesystem's free space (the line a full disk ends a stage with)."""
    free = free_bytes(folder)
    return f"{folder} ({'free space unknown' if free is None else f'{free / 1e6:.1f} MB free'})"
