"""Processes that die with their parent, so that a killed stage leaves nothing behind.

torchrun starts its workers in sessions of their own, so a SIGKILL to the Snakemake process group
kills the launcher and leaves the workers running, still writing into the staging folder. A worker
that calls :func:`die_with_parent` is killed by the kernel when its parent dies (Linux
``prctl(PR_SET_PDEATHSIG)``); elsewhere a watchdog thread polls ``os.getppid()``.
:func:`child_lifeline` is the same for a subprocess a stage starts (``preexec_fn``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
WATCHDOG_INTERVAL_S = 0.5


def _prctl_deathsig(sig: int) -> bool:
    """Ask the kernel to send ``sig`` when the parent dies; False where prctl is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return False
    return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def _watchdog(parent: int, sig: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCHDOG_INTERVAL_S)
    os.kill(os.getpid(), sig)


_watching: set[int] = set()
"""Parents a watchdog thread already watches (a second call must not start another)."""


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """From now on this process receives ``sig`` as soon as its parent dies."""
    parent = os.getppid()
    if not _prctl_deathsig(sig) and parent not in _watching:
        _watching.add(parent)
        threading.Thread(target=_watchdog, args=(parent, sig), daemon=True).start()
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)


def child_lifeline() -> None:
    """``preexec_fn`` for subprocesses: the child dies with the process that started it."""
    _prctl_deathsig(signal.SIGKILL)
