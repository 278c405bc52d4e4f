"""`latentqa-store du|gc|verify` on stores built here: shared and orphaned artifacts, views of two
working directories, a stage running during gc, damaged files. (The workflow's own store, with a
changed setting and a run under way, is in tests/test_store_workflow.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import view_mtime

from pipeline.core import keeping, staging, store, usage
from pipeline.core.gc import PENDING_S
from pipeline.core.view import OUTDATED, _write_view

DAY = 86400.0


def publish(store_dir: Path, name: str, inputs=(), files=None) -> Path:
    """A published artifact ``<stage>/<key>`` built from the artifacts ``inputs``."""
    stage, key = name.split("/")
    out = store_dir / stage / key
    keys = {f"in{i}": upstream.split("/")[1] for i, upstream in enumerate(inputs)}
    with staging.publishing(out, key, stage, {}, keys) as (work, _):
        for rel, data in (files or {"out.bin": name.encode() * 100}).items():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            (work / rel).write_bytes(data)
    return out


def make_view(workdir: Path, experiment: str, store_dir: Path, names, record=True) -> Path:
    """A view ``<workdir>/results/<experiment>`` naming ``names``, as the workflow writes it."""
    view_dir = workdir / "results" / experiment
    paths = {n.split("/")[0]: str(store_dir / n) for n in names}
    _write_view(view_dir, paths)
    if record:
        usage.record_view(view_dir, paths.values(), store_dir)
    return view_dir


def cli(capsys, *argv) -> tuple[int, dict]:
    code = keeping.main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


K = {name: f"{i:016x}" for i, name in enumerate(["model", "data", "a1", "b1", "a0", "e0", "c0"])}
MODEL, DATA = f"prepare_model/{K['model']}", f"filter/{K['data']}"
TRAIN_A, TRAIN_B, OLD_TRAIN = f"train/{K['a1']}", f"train/{K['b1']}", f"train/{K['a0']}"
OLD_EVAL = f"evaluate/{'e' * 16}"


@pytest.fixture
def shared(tmp_path, monkeypatch):
    """One store, two working directories: `a` (its view found beside it, never recorded) and
    `b` (recorded); the model and data shared, each its own decoder, an old decoder of `a` and its
    evaluation orphaned, a stale staging folder and a folder that never completed."""
    store_dir = tmp_path / "shared" / "store"
    publish(store_dir, MODEL)
    publish(store_dir, DATA, [MODEL])
    for train in (TRAIN_A, TRAIN_B, OLD_TRAIN):
        publish(store_dir, train, [MODEL, DATA])
    publish(store_dir, OLD_EVAL, [OLD_TRAIN])
    stale = store.staging_dir(store_dir / "train" / K["c0"])
    (stale / "checkpoints").mkdir(parents=True)
    (stale / "checkpoints" / "step-2.bin").write_bytes(b"x" * 5000)
    (store_dir / "report" / ("f" * 16)).mkdir(parents=True)  # no manifest
    workdir_a, workdir_b = tmp_path / "a", tmp_path / "b"
    make_view(workdir_a, "exp_a", store_dir, [MODEL, DATA, TRAIN_A], record=False)
    make_view(workdir_b, "exp_b", store_dir, [MODEL, DATA, TRAIN_B])
    monkeypatch.chdir(workdir_a)
    return store_dir


def names(result) -> set[str]:
    return {row["name"] for row in result["remove"]}


def test_du_shows_sizes_views_and_last_use(shared, capsys):
    code, result = cli(capsys, "du", "--store", str(shared))
    assert code == 0
    rows = {row["name"]: row for row in result["entries"]}
    assert rows[MODEL]["views"] == ["exp_a", f"exp_b ({shared.parent.parent / 'b'})"]
    assert rows[TRAIN_A]["views"] == ["exp_a"] and rows[OLD_TRAIN]["views"] == []
    assert rows[f"train/{K['c0']}"]["kind"] == "staging" and not rows[f"train/{K['c0']}"]["held"]
    assert rows[f"train/{K['c0']}"]["size"] >= 5000
    assert result["stages"]["train"]["artifacts"] == 3
    assert result["total"] == sum(row["size"] for row in result["entries"]) > 0
    # Last used: the recorded view wanted it just now; the orphan when it was published.
    assert abs(rows[TRAIN_B]["last_used"] - time.time()) < 60
    assert keeping.main(["du", "--store", str(shared)]) == 0
    text = capsys.readouterr().out
    assert f"{TRAIN_A}" in text and "exp_a" in text and "staging, stale" in text


def test_gc_lists_only_what_nothing_needs_and_removes_it(shared, capsys):
    expected = {OLD_TRAIN, OLD_EVAL, f"train/{K['c0']}", f"report/{'f' * 16}"}
    code, dry = cli(capsys, "gc", "--store", str(shared))
    assert code == 0 and not dry["deleted"] and names(dry) == expected
    assert all((shared / n).exists() or store.staging_dir(shared / n).exists() for n in expected)
    assert dry["kept"][MODEL].startswith("named by the view")

    code, done = cli(capsys, "gc", "--delete", "--store", str(shared))
    assert code == 0 and done["deleted"] and names(done) == expected
    assert done["freed"] == sum(row["size"] for row in dry["remove"])
    left = {f"{p.parent.name}/{p.name}" for p in shared.glob("*/*")}
    assert left == {MODEL, DATA, TRAIN_A, TRAIN_B}
    for name in left:
        store.read_manifest(shared / name, verify="full")
    # Only the latest record of each view stays.
    assert [r["view"] for r in usage.read(shared)] == [
        str(shared.parent.parent / "b/results/exp_b")
    ]
    assert names(cli(capsys, "gc", "--store", str(shared))[1]) == set()


def test_gc_never_touches_a_running_stage_nor_what_it_reads(shared, capsys, tmp_path):
    """A stage (another process) holds the staging folder of an evaluation of the old decoder: the
    folder and the decoder it reads stay, although no view names them."""
    out = shared / "evaluate" / ("d" * 16)
    script = (
        "import sys, time; from pipeline.core import staging, store\n"
        f"with staging.publishing({str(out)!r}, 'd' * 16, 'evaluate', {{}}, "
        f"{{'train': {K['a0']!r}}}) as (work, _):\n"
        "    (work / 'part').write_text('x'); print('holding', flush=True); time.sleep(600)"
    )
    stage = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert stage.stdout.readline().strip() == "holding"
        code, done = cli(capsys, "gc", "--delete", "--store", str(shared))
        assert code == 0
        assert names(done) == {OLD_EVAL, f"train/{K['c0']}", f"report/{'f' * 16}"}
        assert done["kept"][OLD_TRAIN] == f"read by the running stage evaluate/{'d' * 16}"
        assert store.staging_dir(out).is_dir() and (shared / OLD_TRAIN / store.MANIFEST).exists()
    finally:
        stage.kill()
        stage.wait()
    # Once it is gone, its stale folder and the old decoder go too.
    code, done = cli(capsys, "gc", "--delete", "--store", str(shared))
    assert names(done) == {OLD_TRAIN, f"evaluate/{'d' * 16}"}


def test_gc_keeps_what_a_run_under_way_wants_before_its_view_exists(shared, capsys, tmp_path):
    """A first run records what its experiment wants at parse; the view comes at the end. What it
    already published is kept, for PENDING_S; a view gone for longer keeps nothing."""
    first_run = tmp_path / "c" / "results" / "exp_c"
    usage.record_view(first_run, [shared / OLD_TRAIN], shared)
    assert OLD_TRAIN not in names(cli(capsys, "gc", "--store", str(shared))[1])
    entry = {"at": time.time() - PENDING_S - 60, "view": str(first_run), "wants": [OLD_TRAIN]}
    (shared / usage.LOG).write_text(json.dumps(entry) + "\n")
    assert OLD_TRAIN in names(cli(capsys, "gc", "--store", str(shared))[1])


def test_gc_older_than_spares_what_was_used_recently(shared, capsys):
    long_ago = time.time() - 30 * DAY
    os.utime(shared / OLD_TRAIN / store.MANIFEST, (long_ago, long_ago))
    code, result = cli(capsys, "gc", "--older-than", "7", "--store", str(shared))
    assert names(result) == {OLD_TRAIN}  # published long ago; the rest is from today


def test_gc_keep_protects_an_experiments_current_graph(
    tmp_path, capsys, monkeypatch, tiny_model_dir
):
    import yaml
    from conftest import REPO

    from pipeline.core.experiments import load_experiments

    config = {
        "store": "results/store",
        "defaults": {"train": {"read_layers": [1], "max_steps": 2}, "evaluate": {}, "report": {}},
        "experiments": {
            "tiny": {
                "model": {"source": "local", "name": str(tiny_model_dir)},
                "data": {"templates": {"completion_tokens": 4}},
            }
        },
    }
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    graph = load_experiments(config, REPO, ["tiny"]).graphs_of(["tiny"])["tiny"]
    store_dir = tmp_path / "results" / "store"
    for node in graph.values():
        publish(store_dir, f"{node.stage}/{node.key}")
    publish(store_dir, OLD_TRAIN)
    everything = {f"{n.stage}/{n.key}" for n in graph.values()} | {OLD_TRAIN}
    assert names(cli(capsys, "gc")[1]) == everything  # no view: all garbage
    code, result = cli(capsys, "gc", "--keep", "tiny", "--root", str(REPO))
    assert code == 0 and names(result) == {OLD_TRAIN}
    assert result["kept"][f"train/{graph['train'].key}"] == "in the graph of --keep tiny"
    assert keeping.main(["gc", "--keep", "nope"]) == 2
    assert "no experiment 'nope'" in capsys.readouterr().err


def test_a_view_recorded_while_gc_removes_waits_for_it(shared):
    """gc holds the usage record's lock while it decides and removes; a run's parse records its
    views under the same lock, so it either comes first (and is kept) or sees what gc left."""
    recorded = threading.Event()
    with usage.locked(shared):
        writer = threading.Thread(
            target=lambda: (
                usage.record_view(shared.parent / "x" / "v", [shared / OLD_TRAIN], shared),
                recorded.set(),
            )
        )
        writer.start()
        assert not recorded.wait(0.5)
    assert recorded.wait(10)
    assert (
        OLD_TRAIN
        in usage.latest_by_view(usage.read(shared))[str(shared.parent / "x" / "v")]["wants"]
    )


def flip_byte(path: Path, offset: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_names_each_damaged_file_and_repair_moves_it_and_its_dependants(
    shared, capsys, tmp_path
):
    flip_byte(shared / TRAIN_A / "out.bin")  # same size: only sha256 sees it
    (shared / OLD_EVAL / "out.bin").write_bytes(b"short")
    built_on_a = publish(shared, f"evaluate/{'a' * 16}", [TRAIN_A])
    view_a = Path.cwd() / "results" / "exp_a"

    code, fast = cli(capsys, "verify", "--store", str(shared))
    assert code == 1 and list(fast["damaged"]) == [OLD_EVAL, f"report/{'f' * 16}"]
    assert "out.bin: 5 bytes, the manifest says" in fast["damaged"][OLD_EVAL][0]
    code, full = cli(capsys, "verify", "--full", "--store", str(shared))
    assert set(full["damaged"]) == {TRAIN_A, OLD_EVAL, f"report/{'f' * 16}"}
    assert full["damaged"][TRAIN_A] == ["out.bin: sha256 differs from the manifest (same size)"]
    assert full["built_from_damaged"] == [f"evaluate/{'a' * 16}"]
    assert keeping.main(["verify", "--full", "--store", str(shared)]) == 1
    text = capsys.readouterr().out
    assert f"damaged: {shared / TRAIN_A}: out.bin: sha256 differs" in text

    code, repaired = cli(capsys, "verify", "--full", "--repair", "--store", str(shared))
    assert set(repaired["moved"]) == set(full["damaged"]) | {
        built_on_a.parent.name + "/" + "a" * 16
    }
    assert repaired["views_outdated"] == [str(view_a.resolve())] and view_mtime(view_a) <= OUTDATED
    assert not (shared / TRAIN_A).exists() and not built_on_a.exists()
    assert len(list((shared / "_damaged").iterdir())) == 4
    code, after = cli(capsys, "verify", "--full", "--store", str(shared))
    assert code == 0 and after["damaged"] == {}
    # The copies moved aside are garbage for gc.
    kinds = {row["kind"] for row in cli(capsys, "gc", "--store", str(shared))[1]["remove"]}
    assert "damaged" in kinds
