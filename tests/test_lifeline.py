"""Processes that die with their parent: prctl, the getppid watchdog, and subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from processes import kill_all, tagged_env, tagged_processes, wait_until_gone

# The child: arms its lifeline one way or another, says so, then sleeps far past the test.
CHILDREN = {
    "prctl": "from pipeline.core.lifeline import die_with_parent; die_with_parent()",
    "watchdog": (
        "from pipeline.core import lifeline; lifeline._prctl_deathsig = lambda sig: False; "
        "lifeline.die_with_parent()"
    ),
    "none": "pass",
}

PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    from pipeline.core.lifeline import child_lifeline
    mode, child = sys.argv[1], sys.argv[2]
    if mode == "preexec":
        proc = subprocess.Popen(["sleep", "600"], preexec_fn=child_lifeline)
    else:
        code = child + "; import time; print('armed', flush=True); time.sleep(600)"
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "armed"
    print(proc.pid, flush=True)
    time.sleep(600)
    """
)


@pytest.mark.parametrize("mode", ["prctl", "watchdog", "preexec", "none"])
def test_child_dies_with_its_parent(mode):
    env, tag = tagged_env()
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, mode, CHILDREN.get(mode, "")],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        child = int(parent.stdout.readline())
        assert child in tagged_processes(tag)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        survivors = wait_until_gone(tag, timeout=5)
        if mode == "none":  # the control: without a lifeline the child is orphaned
            assert survivors == [child]
        else:
            assert survivors == [], f"{mode}: the child outlived its parent"
    finally:
        kill_all(tagged_processes(tag))
