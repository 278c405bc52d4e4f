"""Process helpers for kill tests: find a run's processes wherever they went, kill, wait for marks.

A run is tagged by an environment variable that every descendant inherits, so its processes are
found even when they left the launcher's process group or session (as torchrun's workers do).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

TAG = "LATENTQA_TEST_RUN"


def tagged_env(env: dict[str, str] | None = None) -> tuple[dict[str, str], str]:
    """A copy of ``env`` (default: os.environ) with a fresh run tag, and the tag."""
    tag = uuid.uuid4().hex
    return {**(os.environ if env is None else env), TAG: tag}, tag


def tagged_processes(tag: str) -> list[int]:
    """Live (not zombie) processes whose environment carries ``tag``."""
    needle = f"{TAG}={tag}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(entry.name))
    return sorted(found)


def wait_until_gone(tag: str, timeout: float = 20.0) -> list[int]:
    """Wait for every process of the run to end; return those still alive at the deadline."""
    deadline = time.time() + timeout
    while (alive := tagged_processes(tag)) and time.time() < deadline:
        time.sleep(0.1)
    return alive


def kill_all(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def wait_for_mark(marks: Path, point: str, proc=None, timeout: float = 180.0) -> int:
    """Wait until a fault point was reached (``pipeline.core.faults``); return the process id."""
    path = marks / point
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            return int(path.read_text())
        if proc is not None and proc.poll() is not None:
            output = proc.stdout.read() if getattr(proc, "stdout", None) else ""
            raise AssertionError(f"the run ended before reaching {point}:\n{output[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"{point} was not reached within {timeout} s")
