"""The activation cache stage: contents match a direct read, shards resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.core import store
from pipeline.data.schema import write_dialogs
from pipeline.mechanism.dialogs import tokenize_read_dialog
from pipeline.mechanism.modeling import load_model
from pipeline.mechanism.patching import read_activations
from pipeline.training import activation_cache
from pipeline.training.activation_cache import (
    SHARDS,
    ActivationCache,
    plan_shards,
)

REPO = Path(__file__).resolve().parents[1]


def make_dialogs(n: int) -> list[dict]:
    records = []
    for i in range(n):
        persona = f"persona number {i % 7}"
        question = f"Tell me something about the number {i}. " * (1 + i % 4)
        kind = ("stimulus", "control", "system")[i % 3]
        if kind == "system":
            messages = [
                {"role": "system", "content": f"You are {persona}."},
                {"role": "user", "content": question},
            ]
            masked = 1
        else:
            messages = [
                {"role": "user", "content": f"Act as {persona}."},
                {"role": "assistant", "content": "Sure."},
                {"role": "user", "content": question},
            ]
            masked = 2 if kind == "stimulus" else 0
        records.append(
            {
                "label": persona,
                "kind": kind,
                "messages": messages,
                "n_masked_turns": masked,
                "qa": [{"question": "Who?", "answer": persona}],
                "source": "template",
                "split": "train",
            }
        )
    return records


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_dialogs(make_dialogs(24), folder / "dialogs.parquet")
    return folder


def run_stage(out: Path, data: Path, model: Path, params: dict) -> None:
    argv = [
        "--out",
        str(out),
        "--key",
        "testkey",
        "--params",
        json.dumps(params),
        "--input",
        f"data={data}",
        "--input",
        f"model={model}",
    ]
    activation_cache.main(argv)


def test_plan_shards():
    assert plan_shards([3, 3, 3, 3, 3], 5) == [[0, 1], [2, 3], [4]]
    assert plan_shards([10, 1, 1], 5) == [[0], [1, 2]]
    assert plan_shards([1, 1], 100) == [[0, 1]]
    assert plan_shards([], 5) == []


def test_cache_matches_direct_read(tmp_path, data_dir, tiny_model_dir):
    out = tmp_path / "store" / "activation_cache" / "testkey"
    run_stage(
        out,
        data_dir,
        tiny_model_dir,
        {"layers": [2, 1], "batch_size": 5, "shard_tokens": 150, "device": "cpu"},
    )
    cache = ActivationCache(out, verify="full")
    records = make_dialogs(24)
    model, tokenizer = load_model(tiny_model_dir)
    from pipeline.data.schema import read_dialogs

    ids = [r["id"] for r in read_dialogs(data_dir / "dialogs.parquet")]
    assert cache.ids() == ids and len(cache) == 24
    assert cache.layers() == [1, 2] and cache.d_model == model.config.hidden_size
    manifest = store.read_manifest(out)
    assert manifest["info"]["n_shards"] == len(cache.meta["shards"]) > 2
    for dialog_id, record in zip(ids, records, strict=True):
        read = tokenize_read_dialog(tokenizer, record["messages"], record["n_masked_turns"])
        assert cache.read_positions(dialog_id) == read.read_positions
        x = torch.tensor([read.input_ids])
        with torch.no_grad():
            direct = read_activations(model, x, torch.ones_like(x), [1, 2])
        for layer in (1, 2):
            got = cache.get(dialog_id, layer)
            assert got.dtype == torch.float32
            assert got.shape == (len(read.read_positions), model.config.hidden_size)
            want = direct[layer][0, read.read_positions]
            torch.testing.assert_close(got, want.to(torch.bfloat16).float(), rtol=0.02, atol=0.02)
    with pytest.raises(KeyError, match="layer 3"):
        cache.get(ids[0], 3)
    with pytest.raises(KeyError):
        cache.read_positions("nope")


def test_last_k_positions(tmp_path, data_dir, tiny_model_dir):
    out = tmp_path / "cache"
    run_stage(out, data_dir, tiny_model_dir, {"layers": [0], "positions": "last:3"})
    cache = ActivationCache(out)
    for dialog_id in cache.ids():
        assert len(cache.read_positions(dialog_id)) == 3
        assert cache.get(dialog_id, 0).shape[0] == 3


def test_reader_checks_manifest(tmp_path, data_dir, tiny_model_dir):
    out = tmp_path / "cache"
    run_stage(out, data_dir, tiny_model_dir, {"layers": [0], "shard_tokens": 100})
    shard = out / SHARDS / "00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # same size, other content
    shard.write_bytes(bytes(data))
    ActivationCache(out, verify="fast")
    with pytest.raises(store.StoreError, match="sha256"):
        ActivationCache(out, verify="full")
    shard.write_bytes(bytes(data[:-1]))
    with pytest.raises(store.StoreError, match="size"):
        ActivationCache(out)


def test_resume_recomputes_incomplete_shard(tmp_path, data_dir, tiny_model_dir):
    params = {"layers": [1], "shard_tokens": 120}
    reference = tmp_path / "ref"
    run_stage(reference, data_dir, tiny_model_dir, params)
    out = tmp_path / "out"
    partial = store.staging_dir(out)
    (partial / SHARDS).mkdir(parents=True)
    for name in ("00000.safetensors", "00000.index.parquet", "00001.safetensors"):
        (partial / SHARDS / name).write_bytes((reference / SHARDS / name).read_bytes())
    (partial / SHARDS / "00002.safetensors.tmp").write_bytes(b"junk from a killed run")
    run_stage(out, data_dir, tiny_model_dir, params)
    manifest = store.read_manifest(out, verify="full")
    assert manifest["info"]["resumed_shards"] == 1
    assert manifest["files"] == store.read_manifest(reference)["files"]


def _cli(out: Path, data: Path, model: Path, params: dict) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline.training.activation_cache",
        "--out",
        str(out),
        "--key",
        "testkey",
        "--params",
        json.dumps(params),
        "--input",
        f"data={data}",
        "--input",
        f"model={model}",
    ]


def test_sigkill_then_rerun_gives_identical_files(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    data.mkdir()
    write_dialogs(make_dialogs(300), data / "dialogs.parquet")
    params = {"layers": [1, 3], "batch_size": 4, "shard_tokens": 200}
    # one thread: the same kernels in every run, and no oversubscription on a busy machine
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "store" / "activation_cache" / "killed"
    first_index = store.staging_dir(out) / SHARDS / "00000.index.parquet"
    proc = subprocess.Popen(
        _cli(out, data, tiny_model_dir, params),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not first_index.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the stage finished before it could be killed"
    assert not (out / store.MANIFEST).exists()
    done = sorted((store.staging_dir(out) / SHARDS).glob("*.index.parquet"))
    assert done  # at least the first shard survived the kill

    rerun = subprocess.run(
        _cli(out, data, tiny_model_dir, params),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "tok/s" in rerun.stderr
    resumed = store.read_manifest(out, verify="full")
    n_shards = resumed["info"]["n_shards"]
    assert 1 <= resumed["info"]["resumed_shards"] == len(done) < n_shards

    clean = tmp_path / "store" / "activation_cache" / "clean"
    subprocess.run(
        _cli(clean, data, tiny_model_dir, params),
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    reference = store.read_manifest(clean, verify="full")
    assert resumed["files"] == reference["files"]
    assert len([f for f in reference["files"] if f.endswith(".safetensors")]) == n_shards
