"""The stage command line: an artifact published meanwhile is reused, a full disk ends the stage
on one line and leaves what a rerun resumes from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline.core import store

STAGE = """
import errno, sys
from dataclasses import dataclass
from pathlib import Path
from pipeline.core import stage

@dataclass
class Params:
    fail: str = ""
    \"\"\"How the work fails: "", "enospc", "wrapped" or "bug".\"\"\"

def run(params, inputs, workdir, info):
    Path(sys.argv[-1]).write_text("ran")
    (workdir / "part").write_text("done before the disk filled")
    if params.fail == "enospc":
        raise OSError(errno.ENOSPC, "No space left on device", str(workdir / "shard.tmp"))
    if params.fail == "wrapped":
        raise RuntimeError("Error while serializing: No space left on device (os error 28)")
    if params.fail == "bug":
        raise KeyError("a bug keeps its traceback")
    (workdir / "result").write_text("ok")

stage.main("demo", Params, run, sys.argv[1:-1], resumable=("part",))
"""


def run_stage(tmp_path: Path, out: Path, fail: str = "") -> subprocess.CompletedProcess:
    script = tmp_path / "demo_stage.py"
    script.write_text(STAGE)
    marker = tmp_path / "ran"
    marker.unlink(missing_ok=True)
    params = f'{{"fail": "{fail}"}}'
    return subprocess.run(
        [sys.executable, str(script), "--out", str(out), "--key", "k", "--params", params, marker],
        capture_output=True,
        text=True,
    )


def test_an_artifact_published_meanwhile_is_reused_without_running(tmp_path):
    out = tmp_path / "store" / "demo" / "k"
    with store.publishing(out, "k", "demo", {}, {}) as (work, _):
        (work / "result").write_text("built by another run")
    done = run_stage(tmp_path, out)
    assert done.returncode == 0, done.stderr
    assert "already published" in done.stderr and "reusing it" in done.stderr
    assert not (tmp_path / "ran").exists()
    assert (out / "result").read_text() == "built by another run"


def test_a_full_disk_ends_the_stage_on_one_line_and_keeps_the_staging_folder(tmp_path):
    out = tmp_path / "store" / "demo" / "k"
    staging = store.staging_dir(out)
    for fail in ("enospc", "wrapped"):
        done = run_stage(tmp_path, out, fail)
        assert done.returncode == 1
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith(f"demo: error: no space left on device in {staging} ("), last
        assert "Traceback" not in done.stderr and "free space and rerun" in last
        assert not out.exists() and (staging / "part").exists()
        assert not (staging / store.HOLDER).exists()
        assert not store.is_held(staging)  # the lock went with the process
    done = run_stage(tmp_path, out)  # space freed: the rerun resumes in the same folder
    assert done.returncode == 0, done.stderr
    assert "resuming from ['part']" in done.stderr
    assert sorted(store.read_manifest(out)["files"]) == ["part", "result"]


def test_a_bug_keeps_its_traceback(tmp_path):
    done = run_stage(tmp_path, tmp_path / "store" / "demo" / "k", "bug")
    assert done.returncode == 1 and "Traceback" in done.stderr and "KeyError" in done.stderr
