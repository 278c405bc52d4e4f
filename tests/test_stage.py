"""The stage command line: an artifact published meanwhile is reused, a full disk ends the stage
on one line and leaves what a rerun resumes from."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.analysis.params import LayerCacheParams
from pipeline.core import stage, staging, store
from pipeline.curation.params import CurateParams
from pipeline.data.templates import TemplateParams
from pipeline.training.params import TrainParams

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
    with staging.publishing(out, "k", "demo", {}, {}) as (work, _):
        (work / "result").write_text("built by another run")
    done = run_stage(tmp_path, out)
    assert done.returncode == 0, done.stderr
    assert "already published" in done.stderr and "reusing it" in done.stderr
    assert not (tmp_path / "ran").exists()
    assert (out / "result").read_text() == "built by another run"


def test_a_full_disk_ends_the_stage_on_one_line_and_keeps_the_staging_folder(tmp_path):
    out = tmp_path / "store" / "demo" / "k"
    folder = store.staging_dir(out)
    for fail in ("enospc", "wrapped"):
        done = run_stage(tmp_path, out, fail)
        assert done.returncode == 1
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith(f"demo: error: no space left on device in {folder} ("), last
        assert "Traceback" not in done.stderr and "free space and rerun" in last
        assert not out.exists() and (folder / "part").exists()
        assert not (folder / store.HOLDER).exists()
        assert not staging.is_held(folder)  # the lock went with the process
    done = run_stage(tmp_path, out)  # space freed: the rerun resumes in the same folder
    assert done.returncode == 0, done.stderr
    assert "resuming from ['part']" in done.stderr
    assert sorted(store.read_manifest(out)["files"]) == ["part", "result"]


def test_a_bug_keeps_its_traceback(tmp_path):
    done = run_stage(tmp_path, tmp_path / "store" / "demo" / "k", "bug")
    assert done.returncode == 1 and "Traceback" in done.stderr and "KeyError" in done.stderr


def test_a_value_outside_its_literal_is_refused_with_the_field_and_the_choices():
    train = {"read_layers": [1]}
    with pytest.raises(stage.ParamsError) as info:
        stage.build_params(TrainParams, {**train, "parallel": "zero3"}, "experiments.x.train")
    assert str(info.value) == "experiments.x.train.parallel: 'zero3' is not one of 'ddp', 'fsdp'"
    with pytest.raises(
        stage.ParamsError, match=r"pooling\[1\]: 'max' is not one of 'last', 'mean'"
    ):
        stage.build_params(LayerCacheParams, {"pooling": ["last", "max"]})
    with pytest.raises(stage.ParamsError, match="inject: True is not one of"):
        stage.build_params(TrainParams, {**train, "inject": True})
    assert stage.build_params(TrainParams, {**train, "parallel": "fsdp"}).parallel == "fsdp"


def test_declared_ranges_are_checked_where_params_are_built():
    train = {"read_layers": [1]}
    for values, message in (
        ({"lr": -1.0}, "train.lr: -1.0 is out of range: must be > 0"),
        ({"lr": 0}, "train.lr: 0.0 is out of range: must be > 0"),
        ({"max_steps": 0}, "train.max_steps: 0 is out of range: must be >= 1"),
        ({"write_layer": -1}, "train.write_layer: -1 is out of range: must be >= 0"),
    ):
        with pytest.raises(stage.ParamsError) as info:
            stage.build_params(TrainParams, {**train, **values}, "train")
        assert str(info.value) == message
    assert stage.build_params(TrainParams, {**train, "write_layer": None}).write_layer is None
    nested = {"filters": {"near_duplicate_threshold": 1.5}}
    with pytest.raises(stage.ParamsError, match=r"filters\.near_duplicate_threshold: 1\.5 .* <= 1"):
        stage.build_params(CurateParams, nested)
    with pytest.raises(TypeError, match="atLeast"):

        @dataclass
        class Params:
            n: int = stage.bounded(1, atLeast=1)


def test_a_dataclass_check_raises_params_error_on_one_line():
    with pytest.raises(stage.ParamsError):
        TrainParams(read_layers=[3, 1])
    with pytest.raises(stage.ParamsError) as info:
        stage.build_params(TemplateParams, {"families": []}, "experiments.x.data.templates")
    assert str(info.value) == (
        "experiments.x.data.templates: templates: families must name at least one family"
    )


def test_the_shared_command_line_parses_inputs_and_refuses_what_it_cannot_read(capsys):
    argv = ["--out", "o", "--key", "k", "--params", '{"a": 1}', "--input", "model=m=1"]
    args = stage.parse_stage_args(argv + ["--input", "data=d"])
    assert args == stage.StageArgs(
        Path("o"), "k", {"a": 1}, {"model": Path("m=1"), "data": Path("d")}
    )
    assert stage.parse_stage_args(["--out", "o", "--key", "k"]).params == {}
    for params in ("{", "[1]"):
        with pytest.raises(stage.ParamsError, match="--params is not a JSON object"):
            stage.parse_stage_args(["--out", "o", "--key", "k", "--params", params])
    with pytest.raises(SystemExit, match="--input expects NAME=PATH, got 'model'"):
        stage.parse_stage_args(["--out", "o", "--key", "k", "--input", "model"])
    with pytest.raises(SystemExit):  # a stage's artifact has a key
        stage.parse_stage_args(["--out", "o", "--input", "a=b"])
    assert "--key" in capsys.readouterr().err
    # Without a key (the view): no --key, no --params.
    view = stage.parse_stage_args(["--out", "v", "--input", "a=b"], keyed=False)
    assert view == stage.StageArgs(Path("v"), None, {}, {"a": Path("b")})
    with pytest.raises(SystemExit):
        stage.parse_stage_args(["--out", "v", "--key", "k"], keyed=False)
    assert "unrecognized arguments: --key k" in capsys.readouterr().err
