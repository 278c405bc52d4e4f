"""The workflow's store over time, on the tiny experiment run by Snakemake: `verify` finds a byte
flipped in an adapter and in a cache shard and the next run rebuilds exactly those stages and
their dependants; a stage that fills its disk (a tmpfs, as root) ends on one line and resumes from
its complete shards once space is freed; two runs from two working directories on one store build
each shared artifact once; `gc` removes only what nothing needs, a run under way included, and
after a changed training setting lists exactly the old training and what was built from it.

`make test-store` runs them (a few minutes on two cores).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from processes import kill_all, tagged_env, tagged_processes, wait_for_mark, wait_until_gone
from workspace import Workspace

from pipeline.core import staging, store
from pipeline.core.experiments import load_experiments
from pipeline.core.faults import ENV as FAULT
from pipeline.core.faults import MARKS_ENV as MARKS
from pipeline.core.inventory import PARTIAL

pytestmark = pytest.mark.store

SHARD_TOKENS = 80
"""Read tokens per activation-cache shard: the tiny data makes several shards."""
AFTER_TRAIN = {"train", "evaluate", "reading_curve", "control", "report"}
AFTER_EVALUATE = ("evaluate", "reading_curve", "report")
"""The stages an evaluation setting changes (the reading curve scores the evaluation's items)."""


def tiny_workspace(root: Path, model_dir: Path, store_dir: Path | None = None) -> Workspace:
    workspace = Workspace(root, model_dir)
    workspace.config["experiments"]["tiny"]["cache"] = {"shard_tokens": SHARD_TOKENS}
    if store_dir is not None:
        workspace.config["store"] = str(store_dir)
    workspace.write_config()
    return workspace


def names(view: dict) -> dict[str, str]:
    """A view's artifacts as ``<stage>/<key>``, wherever its store is."""
    return {name: "/".join(Path(path).parts[-2:]) for name, path in view.items()}


def keeping(workspace: Workspace, *args: str) -> tuple[int, dict]:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.core.keeping", *args, "--json"],
        cwd=workspace.root,
        env=workspace.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def removed(result: dict) -> set[str]:
    return {row["name"] for row in result["remove"]}


def tensors(path: Path) -> dict[str, str]:
    """A safetensors file by its tensors' bytes (the header's key order may vary)."""
    import hashlib

    import torch
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {
            name: hashlib.sha256(
                handle.get_tensor(name).contiguous().reshape(-1).view(torch.uint8).numpy()
            ).hexdigest()
            for name in handle.keys()
        }


def manifest(root: Path, name: str) -> dict:
    return json.loads((root / "results" / "store" / name / store.MANIFEST).read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_dir):
    workspace = tiny_workspace(tmp_path_factory.mktemp("store_workflow"), tiny_model_dir)
    workspace.snakemake()
    view = names(workspace.view())
    workspace.reference = {
        "view": view,
        "manifests": {stage: manifest(workspace.root, name) for stage, name in view.items()},
    }
    assert workspace.reference["manifests"]["activation_cache"]["info"]["n_shards"] >= 3
    return workspace


def test_gc_on_a_fresh_run_lists_nothing(built):
    code, result = keeping(built, "gc")
    assert code == 0 and result["remove"] == [] and not result["deleted"]


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_finds_a_flipped_byte_and_the_next_run_rebuilds_exactly_those(built):
    root, view = built.root, built.reference["view"]
    adapter = Path("adapter") / "adapter_model.safetensors"
    shard = Path("shards") / "00001.safetensors"
    good = tensors(root / "results" / "store" / view["train"] / adapter)
    flip_byte(root / "results" / "store" / view["train"] / adapter)
    flip_byte(root / "results" / "store" / view["activation_cache"] / shard)

    assert keeping(built, "verify")[1]["damaged"] == {}  # the sizes are right
    code, found = keeping(built, "verify", "--full")
    assert code == 1
    assert found["damaged"] == {
        view["train"]: [f"{adapter}: sha256 differs from the manifest (same size)"],
        view["activation_cache"]: [f"{shard}: sha256 differs from the manifest (same size)"],
    }
    assert set(found["built_from_damaged"]) == {view[s] for s in AFTER_TRAIN - {"train"}}

    before = {
        s: (root / "results" / "store" / n / store.MANIFEST).stat().st_mtime
        for s, n in view.items()
    }
    code, repaired = keeping(built, "verify", "--full", "--repair")
    assert set(repaired["moved"]) == {view[s] for s in AFTER_TRAIN | {"activation_cache"}}
    assert repaired["views_outdated"] == [str((root / "results" / "tiny").resolve())]
    rebuilt = AFTER_TRAIN | {"activation_cache"}
    assert set(built.scheduled()) == rebuilt | {"experiment"}

    built.snakemake()
    assert names(built.view()) == view
    assert keeping(built, "verify", "--full")[1]["damaged"] == {}
    for stage, name in view.items():
        published = (root / "results" / "store" / name / store.MANIFEST).stat().st_mtime
        assert (published > before[stage]) == (stage in rebuilt), stage
    # Rebuilt to the same content: the shards byte for byte, the adapter tensor for tensor.
    files = manifest(root, view["activation_cache"])["files"]
    reference = built.reference["manifests"]["activation_cache"]["files"]
    assert {f: e["sha256"] for f, e in files.items()} == {
        f: e["sha256"] for f, e in reference.items()
    }
    assert tensors(root / "results" / "store" / view["train"] / adapter) == good
    assert built.scheduled() == {}
    # The copies moved aside are what gc removes now.
    assert {row["kind"] for row in keeping(built, "gc")[1]["remove"]} == {"damaged"}
    keeping(built, "gc", "--delete")


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB tmpfs (root only)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def model_of(workspace: Workspace) -> Path:
    return Path(workspace.config["experiments"]["tiny"]["model"]["name"])


def page(size: int) -> int:
    return -(-size // 4096) * 4096


def test_a_full_disk_stops_the_cache_on_one_line_and_it_resumes(built, tmp_path, small_disk):
    view = built.reference["view"]
    store_dir = small_disk / "store"
    workspace = tiny_workspace(tmp_path / "disk", model_of(built), store_dir)
    workspace.snakemake(target=str(store_dir / view["filter"]))
    # Room for the first two shards, the holder file and half of the third shard: its write fails.
    files = built.reference["manifests"]["activation_cache"]["files"]
    room = sum(
        page(files[f"shards/0000{i}.{ext}"]["size"])
        for i in (0, 1)
        for ext in ("safetensors", "index.parquet")
    )
    room += 4096 + page(files["shards/00002.safetensors"]["size"]) // 8192 * 4096
    ballast = small_disk / "ballast"
    with open(ballast, "wb") as handle:
        free = os.statvfs(small_disk)
        os.posix_fallocate(handle.fileno(), 0, free.f_bavail * free.f_frsize - room)

    failed = subprocess.run(
        workspace.command(),
        cwd=workspace.root,
        env=workspace.env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert failed.returncode != 0
    cache = store_dir / view["activation_cache"]
    staged = store.staging_dir(cache)
    log = workspace.root / "results" / "logs" / "activation_cache" / f"{cache.name}.log"
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith(f"activation_cache: error: no space left on device in {staged} ("), last
    assert "Traceback" not in log.read_text()
    assert not cache.exists() and not (staged / store.HOLDER).exists()
    assert not staging.is_held(staged)
    complete = sorted((staged / "shards").glob("*.index.parquet"))
    n_shards = built.reference["manifests"]["activation_cache"]["info"]["n_shards"]
    assert 1 <= len(complete) < n_shards, complete

    ballast.unlink()
    workspace.snakemake()
    assert f"{n_shards} shards ({len(complete)} already complete)" in log.read_text()
    assert names(workspace.view()) == view
    resumed = json.loads((cache / store.MANIFEST).read_text())["files"]
    assert {f: e["sha256"] for f, e in resumed.items()} == {
        f: e["sha256"] for f, e in files.items()
    }
    assert not list(store_dir.glob(f"*/*{PARTIAL}"))


STAGE_RULES = (
    "prepare_model",
    "templates",
    "filter",
    "activation_cache",
    "train",
    "evaluate",
    "reading_curve",
    "control",
    "report",
)


def test_two_runs_at_once_on_one_store_build_each_shared_artifact_once(built, tmp_path):
    """Two working directories, each with `store:` pointing at one folder, started together: `x`
    runs the tiny experiment, `y` the same with another evaluation setting, both training on two
    torchrun processes. Every shared artifact is built by one run; the other waits on its
    staging lock or finds it published, and reuses it."""
    from pipeline.core.graph import view_nodes

    shared = tmp_path / "shared" / "store"
    runs = {}
    for name in ("x", "y"):
        workspace = tiny_workspace(tmp_path / name, model_of(built), shared)
        workspace.config["experiments"]["tiny"]["resources"] = {"train": {"nproc": 2, "threads": 1}}
        if name == "y":
            workspace.config["experiments"]["tiny"]["evaluate"]["max_new_tokens"] = 5
        workspace.write_config()
        runs[name] = workspace
    graph = load_experiments(runs["y"].config, runs["y"].root, ["tiny"]).graphs_of(["tiny"])["tiny"]
    expected = {
        "x": built.reference["view"],
        "y": {n.replace(":", "_"): f"{v.stage}/{v.key}" for n, v in view_nodes(graph).items()},
    }
    shared_stages = {s for s, n in expected["x"].items() if expected["y"][s] == n}
    assert shared_stages == {"prepare_model", "data_templates", "filter", "activation_cache"} | {
        "train",
        "control",
    }

    procs, tags = {}, []
    marks = {name: tmp_path / f"marks-{name}" for name in runs}
    for name, workspace in runs.items():
        marks[name].mkdir()
        faults = ",".join(f"stage.{rule}.start:mark" for rule in STAGE_RULES)
        env, tag = tagged_env({**workspace.env, FAULT: faults, MARKS: str(marks[name])})
        tags.append(tag)
        with open(tmp_path / f"run-{name}.log", "w") as log:
            procs[name] = subprocess.Popen(
                workspace.command(cores=1),
                cwd=workspace.root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    try:
        for name, proc in procs.items():
            code = proc.wait(timeout=1500)
            assert code == 0, (tmp_path / f"run-{name}.log").read_text()[-6000:]
        assert all(wait_until_gone(tag) == [] for tag in tags)
    finally:
        for tag in tags:
            kill_all(tagged_processes(tag))

    waited = []
    for stage in sorted(shared_stages):
        rule = stage.removeprefix("data_")
        builders = [name for name in runs if (marks[name] / f"stage.{rule}.start").exists()]
        assert len(builders) == 1, f"{stage} was built by {builders or 'no run'}"
        other = runs["y" if builders == ["x"] else "x"]
        log = other.root / "results" / "logs" / rule / f"{expected['x'][stage].split('/')[1]}.log"
        text = log.read_text()
        assert "already published" in text and "reusing it" in text, f"{stage}: {text[-2000:]}"
        waited += [stage] if "being built by another run" in text else []
    assert waited, "no run waited on another's staging lock"
    for name in ("x", "y"):
        assert names(runs[name].view()) == expected[name]
        for stage in AFTER_EVALUATE:
            assert (marks[name] / f"stage.{stage}.start").exists()
    code, checked = keeping(runs["x"], "verify", "--full")
    assert code == 0 and checked["checked"] == len(shared_stages) + 2 * len(AFTER_EVALUATE)
    assert not list(shared.glob(f"*/*{PARTIAL}"))
    # Both working directories' views are in the store's record: gc from either keeps both.
    assert keeping(runs["x"], "gc")[1]["remove"] == []


def test_gc_keeps_a_run_under_way_then_lists_exactly_the_old_training(built, tmp_path):
    """Done when: after a changed training setting and a rerun, gc lists exactly the old train,
    evaluate, reading curve, control and report artifacts; during the rerun, it removes only true
    orphans."""
    root, store_dir = built.root, built.root / "results" / "store"
    before = names(built.view())
    # An orphan: an evaluation setting built, then reverted.
    built.set("evaluate", "max_relation_items", 3)
    built.snakemake()
    other = names(built.view())
    orphans = {other[s] for s in AFTER_EVALUATE}
    built.set("evaluate", "max_relation_items", 4)
    assert built.scheduled() == {}
    assert removed(keeping(built, "gc")[1]) == orphans

    # A training setting changed; the run is stopped as evaluation starts: the new decoder is
    # published, no view names it, the evaluation's staging folder is held.
    built.set("train", "lr", 5e-4)
    marks = tmp_path / "marks"
    marks.mkdir()
    env, tag = tagged_env({**built.env, FAULT: "stage.evaluate.start:pause", MARKS: str(marks)})
    with open(tmp_path / "run.log", "w") as log:
        proc = subprocess.Popen(
            built.command(),
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_mark(marks, "stage.evaluate.start", proc, timeout=600)
        new_train = [
            f"train/{p.name}"
            for p in (store_dir / "train").iterdir()
            if p.name not in before["train"]
        ]
        assert len(new_train) == 1 and (store_dir / new_train[0] / store.MANIFEST).exists()
        running = list((store_dir / "evaluate").glob(f"*{PARTIAL}"))
        assert len(running) == 1 and staging.is_held(running[0])
        code, result = keeping(built, "gc", "--delete")
        assert code == 0 and removed(result) == orphans
        assert result["kept"][new_train[0]].startswith("wanted by")
        assert staging.is_held(running[0]) and (store_dir / new_train[0] / store.MANIFEST).exists()
        assert all((store_dir / name / store.MANIFEST).exists() for name in before.values())
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        wait_until_gone(tag)
        kill_all(tagged_processes(tag))
    built.snakemake("--unlock")
    built.snakemake()
    after = names(built.view())
    assert {s for s in before if before[s] != after[s]} == AFTER_TRAIN

    code, result = keeping(built, "gc")
    assert removed(result) == {before[s] for s in AFTER_TRAIN}
    assert {row["kind"] for row in result["remove"]} == {"artifact"}
    keeping(built, "gc", "--delete")
    # Removed, and nothing else: switching back rebuilds exactly them.
    built.set("train", "lr", 1e-3)
    assert set(built.scheduled()) == AFTER_TRAIN | {"experiment"}
