"""Test-only fault points: a stage stops at a named point, so that kill/resume tests never race.

``LATENTQA_FAULT="<point>:<action>[,<point>:<action>...]"`` arms points by name. The code that
reaches a point names it: ``stage.<stage>.start`` (staging folder locked, nothing run yet),
``stage.<stage>.publish`` (the stage's work done, nothing published yet),
``stage.<stage>.published`` (the artifact renamed into place, the process not yet ended),
``train.step.<n>`` (after optimizer step ``n`` and its checkpoint), ``activation_cache.shard.<n>``
(after shard ``n``); the view (``pipeline.core.view``): ``view.start`` (nothing written),
``view.swap`` (the old view moved aside, the new one not yet in place), ``view.published``.
``<point>/rank<r>`` arms it in process ``r`` of a multi-process stage (rank 0 otherwise).

Actions: a signal name (``SIGKILL``, ``SIGTERM``, ``SIGINT``) that the process sends itself;
``pause``, which records the process id in ``$LATENTQA_FAULT_MARKS/<point>`` and sleeps until a
signal arrives (the test then kills whatever it chooses: the process, its process group, a
parent); ``mark``, which records the process id and carries on. Unset, a point costs one
environment lookup.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

ENV = "LATENTQA_FAULT"
MARKS_ENV = "LATENTQA_FAULT_MARKS"
ACTIONS = ("pause", "mark")


class FaultSpecError(ValueError):
    """A ``LATENTQA_FAULT`` entry that names no known action."""


def armed(point: str, rank: int = 0) -> list[str]:
    """The actions armed for ``point`` in process ``rank``, in the order given."""
    spec = os.environ.get(ENV, "")
    actions = []
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        target, sep, action = entry.rpartition(":")
        if not sep:
            raise FaultSpecError(f"{ENV}: {entry!r} is not <point>:<action>")
        name, _, who = target.partition("/")
        if name == point and (who or "rank0") == f"rank{rank}":
            if action not in ACTIONS and not action.startswith("SIG"):
                raise FaultSpecError(f"{ENV}: {entry!r}: action must be a signal or {ACTIONS}")
            actions.append(action)
    return actions


def _mark(point: str) -> None:
    folder = os.environ.get(MARKS_ENV)
    if not folder:
        return
    path = Path(folder) / point
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)  # a test polling for the mark never reads it half-written


def fault_point(point: str, rank: int = 0) -> None:
    """Carry out whatever ``LATENTQA_FAULT`` arms at ``point``; nothing when unset."""
    if ENV not in os.environ:
        return
    for action in armed(point, rank):
        if action in ACTIONS:
            _mark(point)
            if action == "pause":
                signal.pause()  # returns once a handled signal (SIGTERM in training) arrives
        else:
            os.kill(os.getpid(), signal.Signals[action])
