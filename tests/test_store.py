"""Keys, manifests and atomic publication of the content-addressed store."""

import json
import os
import subprocess
import sys
import time

import pytest

from pipeline.core import staging, store


def test_key_is_stable_and_order_independent():
    a = store.compute_key("train", {"lr": 1e-3, "steps": 10}, "code", {"data": "k1", "model": "k2"})
    b = store.compute_key("train", {"steps": 10, "lr": 1e-3}, "code", {"model": "k2", "data": "k1"})
    assert a == b and len(a) == store.KEY_LENGTH
    assert all(c in "0123456789abcdef" for c in a)


@pytest.mark.parametrize(
    "change",
    [
        {"stage": "evaluate"},
        {"params": {"lr": 2e-3, "steps": 10}},
        {"code": "other code"},
        {"inputs": {"data": "k1", "model": "k3"}},
    ],
)
def test_key_changes_with_each_ingredient(change):
    base = {
        "stage": "train",
        "params": {"lr": 1e-3, "steps": 10},
        "code": "code",
        "inputs": {"data": "k1", "model": "k2"},
    }
    assert store.compute_key(**base) != store.compute_key(**{**base, **change})


def test_source_digest_sees_content_and_names(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    first = store.source_digest(["a.py", "b.py"], root=tmp_path)
    assert first == store.source_digest(["b.py", "a.py"], root=tmp_path)
    (tmp_path / "a.py").write_text("x = 3\n")
    assert store.source_digest(["a.py", "b.py"], root=tmp_path) != first


def test_publish_writes_manifest_last_and_renames(tmp_path):
    out = tmp_path / "store" / "stage" / "abc"
    with staging.publishing(out, "abc", "stage", {"p": 1}, {"in": "k"}) as (work, info):
        assert work == store.staging_dir(out) and not out.exists()
        (work / "sub").mkdir()
        (work / "sub" / "x.bin").write_bytes(b"hello")
        info["figure"] = 3
    manifest = store.read_manifest(out, verify="full")
    assert manifest["key"] == "abc" and manifest["params"] == {"p": 1}
    assert manifest["files"]["sub/x.bin"]["size"] == 5
    assert manifest["files"]["sub/x.bin"]["sha256"] == store.file_sha256(out / "sub" / "x.bin")
    assert manifest["info"] == {"figure": 3}
    assert store.HOLDER not in manifest["files"] and not (out / store.HOLDER).exists()
    assert not store.staging_dir(out).exists()


def test_failed_stage_publishes_nothing_and_keeps_staging_for_resume(tmp_path):
    out = tmp_path / "abc"
    with pytest.raises(RuntimeError):
        with staging.publishing(out, "abc", "stage", {}, {}) as (work, _):
            (work / "done-part").write_text("kept")
            raise RuntimeError("killed")
    assert not out.exists()
    with staging.publishing(out, "abc", "stage", {}, {}) as (work, _):
        assert (work / "done-part").read_text() == "kept"
    assert (out / store.MANIFEST).exists()


def test_a_second_run_of_the_key_is_refused_while_the_first_holds_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(staging, "LOCK_GRACE_S", 0.5)
    out = tmp_path / "abc"
    with staging.publishing(out, "abc", "stage", {}, {}) as (work, _):
        (work / "first").write_text("mine")
        with pytest.raises(staging.StagingBusy) as refused:
            with staging.publishing(out, "abc", "stage", {}, {}) as (other, _):
                (other / "second").write_text("must not happen")
        message = str(refused.value)
        assert str(store.staging_dir(out)) in message and f"pid {os.getpid()}" in message
        assert sorted(p.name for p in work.iterdir()) == [store.HOLDER, "first"]
    assert (out / "first").read_text() == "mine" and not (out / "second").exists()


def test_lock_is_released_when_a_stage_fails(tmp_path):
    out = tmp_path / "abc"
    with pytest.raises(RuntimeError):
        with staging.publishing(out, "abc", "stage", {}, {}):
            raise RuntimeError("killed")
    os.close(staging.lock_staging(store.staging_dir(out)))  # free again


def test_a_stale_staging_folder_keeps_only_what_a_resume_uses(tmp_path):
    out = tmp_path / "abc"
    stale = store.staging_dir(out)
    (stale / "checkpoints" / "step-000002").mkdir(parents=True)
    (stale / "checkpoints" / "step-000002" / "complete").write_text("{}")
    (stale / "half-written.tmp").write_text("x")
    (stale / store.HOLDER).write_text('{"pid": 1}')
    with staging.publishing(out, "abc", "stage", {}, {}, keep=("checkpoints",)) as (work, _):
        assert (work / "checkpoints" / "step-000002" / "complete").exists()
        assert not (work / "half-written.tmp").exists()
    assert "half-written.tmp" not in store.read_manifest(out)["files"]


def test_scratch_stays_until_publication_and_is_never_published(tmp_path):
    """Checkpoints survive a stage killed after its work (a resume needs them), not publication."""
    out = tmp_path / "abc"
    with pytest.raises(RuntimeError):
        with staging.publishing(
            out, "abc", "train", {}, {}, ("checkpoints",), ("checkpoints",)
        ) as (
            work,
            _,
        ):
            (work / "checkpoints" / "step-000004").mkdir(parents=True)
            (work / "adapter.bin").write_bytes(b"done")
            raise RuntimeError("killed between the work and its publication")
    assert (store.staging_dir(out) / "checkpoints" / "step-000004").is_dir()
    with staging.publishing(out, "abc", "train", {}, {}, ("checkpoints",), ("checkpoints",)) as (
        work,
        _,
    ):
        assert (work / "checkpoints" / "step-000004").is_dir()  # resumed from
        (work / "adapter.bin").write_bytes(b"done")
    assert not (out / "checkpoints").exists()
    assert list(store.read_manifest(out, verify="full")["files"]) == ["adapter.bin"]


def test_another_process_is_refused_when_told_not_to_wait_and_free_after_it_dies(tmp_path):
    out = tmp_path / "abc"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pipeline.core import staging, store\n"
            f"with staging.publishing({str(out)!r}, 'abc', 'stage', {{}}, {{}}):\n"
            "    print('holding', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        # A live holder is waited for (below); wait_s=0 refuses at once after the grace.
        with pytest.raises(staging.StagingBusy, match=f"pid {holder.pid}"):
            staging.lock_staging(store.staging_dir(out), grace_s=0.5, wait_s=0)
    finally:
        holder.kill()
        holder.wait()
    with staging.publishing(out, "abc", "stage", {}, {}):
        pass
    assert (out / store.MANIFEST).exists()


def test_publish_refuses_to_overwrite(tmp_path):
    out = tmp_path / "abc"
    with staging.publishing(out, "abc", "stage", {}, {}):
        pass
    with pytest.raises(store.StoreError, match="already published"):
        with staging.publishing(out, "abc", "stage", {}, {}):
            pass


def test_read_manifest_detects_tampering(tmp_path):
    out = tmp_path / "abc"
    with staging.publishing(out, "abc", "stage", {}, {}) as (work, _):
        (work / "w.txt").write_text("12345")
    (out / "w.txt").write_text("54321")
    store.read_manifest(out, verify="fast")  # same size: only the full check sees it
    with pytest.raises(store.StoreError, match="sha256"):
        store.read_manifest(out, verify="full")
    (out / "w.txt").write_text("1")
    with pytest.raises(store.StoreError, match="size"):
        store.read_manifest(out, verify="fast")
    (out / store.MANIFEST).unlink()
    with pytest.raises(store.StoreError, match="not a complete artifact"):
        store.read_manifest(out)


def test_stage_cli_rejects_unknown_params(tmp_path):
    out = tmp_path / "store" / "prepare_model" / "0123456789abcdef"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.mechanism.prepare_model",
            "--out",
            str(out),
            "--key",
            "0123456789abcdef",
            "--params",
            json.dumps({"sorce": "local"}),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "unknown field(s) ['sorce']" in result.stderr
    assert not out.exists()


def test_a_holder_that_lets_go_within_the_grace_is_waited_for(tmp_path):
    """A worker of a killed run closes its files only as it finishes dying: the rerun waits."""
    out = tmp_path / "abc"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from pipeline.core import staging, store\n"
            f"with staging.publishing({str(out)!r}, 'abc', 'stage', {{}}, {{}}) as (work, _):\n"
            "    (work / 'part').write_text('x'); print('holding', flush=True); time.sleep(2)\n"
            "    raise SystemExit(3)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        start = time.monotonic()
        fd = staging.lock_staging(store.staging_dir(out), grace_s=30)
        waited = time.monotonic() - start
        os.close(fd)
        holder.wait(timeout=30)
    finally:
        holder.kill()
    assert holder.returncode == 3 and 0.5 < waited < 30


def _holder_process(out, body: str) -> subprocess.Popen:
    """A process that holds the staging folder of ``out`` (``publishing``) and runs ``body``."""
    script = (
        "import os, signal, sys, time; from pipeline.core import staging, store\n"
        "staging.HEARTBEAT_S = 0.2\n"
        f"with staging.publishing({str(out)!r}, 'abc', 'stage', {{}}, {{'data': 'k1'}}) as (work, _"
        "):\n"
        "    (work / 'part').write_text('x'); print('holding', flush=True)\n"
        + "".join(f"    {line}\n" for line in body.splitlines())
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    return holder


def test_a_live_holder_is_waited_for_and_what_it_publishes_is_reused(tmp_path, monkeypatch, caplog):
    """Two runs of one key at once: the second waits while the first beats, then finds it
    published (and builds nothing)."""
    monkeypatch.setattr(staging, "LOCK_GRACE_S", 0.3)
    out = tmp_path / "abc"
    holder = _holder_process(out, "time.sleep(3)")
    try:
        holder_record = store.read_holder(store.staging_dir(out))
        assert holder_record["pid"] == holder.pid and holder_record["inputs"] == {"data": "k1"}
        start = time.monotonic()
        with pytest.raises(staging.AlreadyPublished):
            with staging.publishing(out, "abc", "stage", {}, {}) as (work, _):
                (work / "second").write_text("must not happen")
        waited = time.monotonic() - start
        assert holder.wait(timeout=30) == 0
    finally:
        holder.kill()
    assert waited > 1.5  # it waited for the holder (however loaded the machine)
    assert "being built by another run" in caplog.text and f"pid {holder.pid}" in caplog.text
    assert sorted(store.read_manifest(out, verify="full")["files"]) == ["part"]
    assert not store.staging_dir(out).exists()


def test_a_waiter_resumes_what_a_holder_left_when_it_stops_without_publishing(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(staging, "LOCK_GRACE_S", 0.3)
    out = tmp_path / "abc"
    holder = _holder_process(out, "time.sleep(2)\nraise SystemExit(3)")
    try:
        with staging.publishing(out, "abc", "stage", {}, {}) as (work, _):
            assert (work / "part").read_text() == "x"  # resumed from the failed run's folder
            (work / "rest").write_text("y")
        assert holder.wait(timeout=30) == 3
    finally:
        holder.kill()
    assert sorted(store.read_manifest(out)["files"]) == ["part", "rest"]


def test_a_holder_whose_heartbeat_stopped_is_refused(tmp_path, monkeypatch):
    """A stopped run (Ctrl-Z, SIGSTOP) or a hung one: waiting for it could last for ever."""
    monkeypatch.setattr(staging, "LOCK_GRACE_S", 0.3)
    monkeypatch.setattr(staging, "HEARTBEAT_STALE_S", 1.5)
    out = tmp_path / "abc"
    holder = _holder_process(out, "os.kill(os.getpid(), signal.SIGSTOP)")
    try:
        start = time.monotonic()
        with pytest.raises(staging.StagingBusy, match=f"pid {holder.pid}.*heartbeat stopped"):
            staging.lock_staging(store.staging_dir(out))
        assert time.monotonic() - start >= 1.5
    finally:
        holder.kill()
        holder.wait()
    os.close(staging.lock_staging(store.staging_dir(out)))  # free once it is gone


def test_the_heartbeat_renews_the_holder_file_until_publication(tmp_path, monkeypatch):
    monkeypatch.setattr(staging, "HEARTBEAT_S", 0.05)
    out = tmp_path / "abc"
    with staging.publishing(out, "abc", "stage", {}, {}) as (work, _):
        holder = work / store.HOLDER
        first = holder.stat().st_mtime_ns
        time.sleep(0.5)
        assert holder.stat().st_mtime_ns > first
    assert (
        not (out / store.HOLDER).exists() and store.HOLDER not in store.read_manifest(out)["files"]
    )


def test_the_other_processes_of_a_launch_follow_their_rank_0(tmp_path, monkeypatch):
    """torchrun ranks above 0 take no lock: they work once their own rank 0 holds the folder, and
    do nothing when another launch published the artifact (their rank 0 then reuses it)."""
    import threading

    out = tmp_path / "abc"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-a")
    with staging.publishing(out, "abc", "stage", {}, {}):
        assert staging.follows_holder(out, poll_s=0.01)
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-b")
        answer = []
        follower = threading.Thread(target=lambda: answer.append(staging.follows_holder(out, 0.01)))
        follower.start()
        time.sleep(0.3)
        assert follower.is_alive()  # another launch holds it: wait
    follower.join(timeout=10)
    assert answer == [False]
