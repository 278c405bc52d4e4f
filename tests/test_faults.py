"""Fault points: which process a LATENTQA_FAULT entry arms, and what each action does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from pipeline.core import faults


def test_points_are_armed_by_name_and_rank(monkeypatch):
    monkeypatch.setenv(
        faults.ENV, "train.step.4:SIGKILL, train.step.4/rank1:pause,stage.x.start:mark"
    )
    assert faults.armed("train.step.4") == ["SIGKILL"]
    assert faults.armed("train.step.4", rank=1) == ["pause"]
    assert faults.armed("train.step.40") == [] and faults.armed("stage.x.start") == ["mark"]
    monkeypatch.setenv(faults.ENV, "train.step.4:explode")
    with pytest.raises(faults.FaultSpecError, match="explode"):
        faults.armed("train.step.4")


def test_mark_records_the_process_and_carries_on(monkeypatch, tmp_path):
    monkeypatch.setenv(faults.ENV, "stage.x.start:mark")
    monkeypatch.setenv(faults.MARKS_ENV, str(tmp_path))
    faults.fault_point("stage.x.start")
    faults.fault_point("stage.y.start")
    assert (tmp_path / "stage.x.start").read_text() == f"{os.getpid()}\n"
    assert not (tmp_path / "stage.y.start").exists()


def test_a_signal_action_kills_the_process_there():
    code = (
        "from pipeline.core.faults import fault_point\n"
        "fault_point('a'); print('after a', flush=True); fault_point('b'); print('after b')"
    )
    env = {**os.environ, faults.ENV: "b:SIGKILL"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == -signal.SIGKILL
    assert result.stdout == "after a\n"
