"""Stage `curate` against a local OpenAI-compatible server: faults, filters, crash and rerun."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from openai_server import FakeOpenAI, fingerprint

from pipeline.core import stage
from pipeline.curation.curate import run
from pipeline.curation.filters import (
    CurationFilters,
    filter_generated,
    is_refusal,
    near_duplicates,
)
from pipeline.curation.params import FAMILY_FILES, CurateParams
from pipeline.curation.request_cache import RequestCache
from pipeline.data.filter import FilterParams
from pipeline.data.filter import run as filter_run
from pipeline.data.schema import read_dialogs

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-test-0123456789-never-logged"


def params(server: FakeOpenAI, tmp_path: Path, **kw) -> CurateParams:
    values = dict(
        base_url=server.base_url,
        model="fake",
        api_key_env="",
        samples_per_family=8,
        dialogs_per_sample=2,
        qa_per_sample=2,
        concurrency=4,
        timeout_s=0.5,
        max_attempts=4,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        cache_dir=str(tmp_path / "cache"),
    )
    values.update(kw)
    return stage.build_params(CurateParams, values)


def run_stage(p: CurateParams, workdir: Path) -> tuple[list[dict], dict]:
    workdir.mkdir(parents=True)
    run(p, {}, workdir, {})
    return read_dialogs(workdir / "dialogs.parquet"), json.loads(
        (workdir / "curate_report.json").read_text()
    )


PERSONA_FAULTS = {
    1: ["429", "ok"],
    2: ["500", "500", "ok"],
    3: ["sleep", "ok"],
    4: ["malformed"],
    5: ["truncated"],
    6: ["refusal"],
    7: ["refusal_text"],
}


def persona_faults(info, n):
    actions = PERSONA_FAULTS.get(info["seed"], ["ok"]) if info["family"] == "persona" else ["ok"]
    return actions[min(n, len(actions) - 1)]


def test_stage_survives_faults_and_a_rerun_sends_nothing(tmp_path):
    with FakeOpenAI(persona_faults, retry_after="0.1", sleep_s=1.2) as server:
        p = params(server, tmp_path)
        rows, report = run_stage(p, tmp_path / "a")
        calls = server.calls.copy()
        # Fully cached: no client is made, so not even a key is needed.
        p.api_key_env = "CURATE_TEST_UNSET_KEY"
        again, report2 = run_stage(p, tmp_path / "b")
    # 24 calls, plus 1 + 2 + 1 retries; never more than max_attempts per request.
    assert calls.total() == 24 + 4 and max(calls.values()) <= p.max_attempts
    assert report["backend"]["by_error"] == {"429": 1, "500": 2, "timeout": 1}
    dropped = report["responses_dropped"]
    assert (dropped["malformed_json"], dropped["truncated"], dropped["refusal"]) == (1, 1, 2)
    assert dropped["request_failed"] == dropped["schema"] == 0
    # 20 good items x 2 kinds x 2 dialog turns, all valid rows of the shared schema.
    assert len(rows) == 80 and report["rows_written"] == 80
    assert {r["source"] for r in rows} == {"openai:fake"}
    assert {(r["kind"], r["n_masked_turns"]) for r in rows} == {
        ("system", 1),
        ("stimulus_completion", 2),
    }
    assert all(r["label"].split("-")[0] in FAMILY_FILES for r in rows)
    assert {r["split"] for r in rows} == {"train"}  # unsplit: the filter stage splits
    assert report["tokens"]["fresh"]["completion"] == 50 * 24
    # The rerun is served entirely from the cache and writes the same data.
    assert server.calls == calls
    assert report2["sent"] == 0 and report2["cached_before_run"] == 24
    assert [r["id"] for r in again] == [r["id"] for r in rows]
    assert report2["tokens"]["cached"] == report["tokens"]["fresh"]


def test_calls_failing_after_retries_fail_the_stage_and_only_they_are_resent(tmp_path):
    broken = {"on": True}

    def faults(info, n):
        return "500" if broken["on"] and info["seed"] == 2 else "ok"

    with FakeOpenAI(faults) as server:
        p = params(server, tmp_path, families=["goal"], max_attempts=2)
        with pytest.raises(RuntimeError, match="1 of 8 calls failed"):
            run_stage(p, tmp_path / "a")
        assert len(RequestCache(p.cache_dir)) == 7
        before = server.calls.total()
        broken["on"] = False
        rows, report = run_stage(p, tmp_path / "b")
    assert server.calls.total() - before == 1 and report["sent"] == 1
    assert report["cached_before_run"] == 7 and len(rows) == 8 * 2 * 2


def test_curated_rows_are_split_once_by_the_filter_stage(tmp_path, tokenizer_dir):
    with FakeOpenAI() as server:
        rows, _ = run_stage(params(server, tmp_path), tmp_path / "curated")
    labels = {r["label"] for r in rows}
    assert len(labels) == 24 and {r["split"] for r in rows} == {"train"}
    work = tmp_path / "filter"
    work.mkdir()
    inputs = {"data_curated": tmp_path / "curated", "model": tokenizer_dir}
    filter_run(FilterParams(eval_fraction=0.25, validation_fraction=0.125), inputs, work, {})
    report = json.loads((work / "filter_report.json").read_text())
    # Split once: exactly the filter's shares of the 24 labels, none fixed to eval upstream (a
    # second split upstream would have fixed some labels to eval and added them to the 6).
    assert report["labels"] == {"train": 15, "validation": 3, "eval": 6, "fixed_eval": 0}
    by_split = {s: read_dialogs(work / f"{s}.parquet") for s in ("train", "validation", "eval")}
    assert sum(len(v) for v in by_split.values()) == len(rows)
    train, held = by_split["train"], by_split["validation"] + by_split["eval"]
    assert not {r["label"] for r in train} & {r["label"] for r in held}
    assert not {r["id"] for r in train} & {r["id"] for r in held}


def test_crash_then_rerun_repeats_no_completed_call(tmp_path, monkeypatch):
    out = tmp_path / "store" / "curate" / "k1"
    with FakeOpenAI(delay_s=0.4) as server:
        p = dict(
            base_url=server.base_url,
            model="fake",
            api_key_env="CURATE_TEST_KEY",
            families=["persona"],
            samples_per_family=16,
            dialogs_per_sample=2,
            concurrency=2,
            timeout_s=5.0,
            backoff_base_s=0.01,
            cache_dir=str(tmp_path / "cache"),
        )
        argv = ["--out", str(out), "--key", "k1", "--params", json.dumps(p)]
        env = dict(os.environ, CURATE_TEST_KEY=SECRET, HF_HUB_OFFLINE="1")
        log = open(tmp_path / "first.log", "w")
        child = subprocess.Popen(
            [sys.executable, "-m", "pipeline.curation.curate", *argv],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        cache = RequestCache(tmp_path / "cache")
        deadline = time.monotonic() + 60
        while len(cache) < 4 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        log.close()
        completed = {
            fingerprint(
                {"messages": e["request"]["messages"], "seed": e["request"]["sampling"]["seed"]}
            )
            for e in (json.loads(f.read_text()) for f in (tmp_path / "cache").glob("??/*.json"))
        }
        assert 4 <= len(completed) < 16, (tmp_path / "first.log").read_text()[-2000:]
        assert not (out / "_manifest.json").exists()
        before = server.calls.copy()
        server.delay_s = 0.0

        monkeypatch.setenv("CURATE_TEST_KEY", SECRET)
        stage.main("curate", CurateParams, run, argv)
    assert all(server.calls[fp] == before[fp] == 1 for fp in completed)
    assert len(server.calls) == 16 and max(server.calls.values()) <= 2  # in flight at the kill
    assert all(entry["auth"] == f"Bearer {SECRET}" for entry in server.log)
    report = json.loads((out / "curate_report.json").read_text())
    assert report["cached_before_run"] == len(completed)
    assert report["sent"] == 16 - len(completed) and report["rows_written"] == 16 * 2 * 2
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["params"]["api_key_env"] == "CURATE_TEST_KEY"
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path


def dialog(label: str, control: str, user: str, reply: str, kind: str = "system") -> dict:
    return {
        "label": label,
        "kind": kind,
        "n_masked_turns": 1,
        "source": "openai:m",
        "split": "train",
        "messages": [
            {"role": "system", "content": control},
            {"role": "user", "content": user},
            {"role": "assistant", "content": reply},
        ],
        "qa": [{"question": "What persona?", "answer": label}],
    }


def test_filters_drop_by_reason_and_leave_rows_unsplit():
    words = "amber basalt cedar dune ember fjord garnet harbor indigo juniper kelp lantern".split()
    rows = []
    for i in range(8):
        control = f"You are persona {i}: " + " ".join(words[i:] + words[:i])
        rows.append(
            dialog(f"persona-p{i}", control, f"Question {i} about weather?", f"Answer {i}.")
        )
    rows.append(dict(rows[0]))  # exact duplicate
    rows.append(dialog("persona-r", "You are a cook.", "Soup?", "As an AI, I cannot cook."))
    rows.append(dialog("persona-s", "You are a baker.", "Bread?", "."))
    rows.append(dialog("persona-long", "You are a baker.", "Bread?", "dough " * 2000))
    # Same control as persona-p1 but one word changed: a near duplicate under another label.
    rows.append(dialog("persona-twin", rows[1]["messages"][0]["content"] + " truly", "Q?", "A."))
    # Same label and control, a reworded copy of a dialog turn.
    rows.append(
        dialog(
            "persona-p2",
            rows[2]["messages"][0]["content"],
            "Question 2 about weather!",
            "Answer 2.",
        )
    )
    rows.append({**rows[3], "kind": "sideways"})
    kept, report = filter_generated(rows, CurationFilters())
    assert report["dropped"] == {
        "invalid": 1,
        "duplicate": 1,
        "refusal": 1,
        "too_short": 1,
        "too_long": 1,
        "near_duplicate_control": 1,
        "near_duplicate": 1,
    }
    assert sorted(r["label"] for r in kept) == [f"persona-p{i}" for i in range(8)]
    assert report["labels"] == 8 and {r["split"] for r in kept} == {"train"}


def test_near_duplicates_use_shingle_jaccard():
    texts = [
        "the quick brown fox jumps over the lazy dog today",
        "The quick brown fox jumps over the lazy dog, today!",
        "the quick brown fox naps under the warm sun today",
        "a completely different sentence about tea",
    ]
    assert near_duplicates(texts, 0.8, 3) == [None, 0, None, None]
    assert near_duplicates(texts, 0.2, 1)[2] == 0
    assert is_refusal("I\u2019m sorry, but I can\u2019t help with that.")
    assert not is_refusal("Sorry to hear the ferry left; I can help you rebook.")


def test_params_refuse_a_key_in_place_of_a_variable_name():
    with pytest.raises(stage.ParamsError) as info:
        stage.build_params(CurateParams, {"api_key_env": SECRET})
    assert SECRET not in str(info.value)
    with pytest.raises(stage.ParamsError):
        stage.build_params(CurateParams, {"kinds": ["poem"]})


def test_no_eval_or_exec_anywhere_in_the_package():
    pattern = re.compile(r"(?<![\w.])(eval|exec)\s*\(")
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        source = path.read_text()
        assert not pattern.search(source), f"{path}: eval/exec call"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in {"eval", "exec", "compile"}, path
