"""The LatentQA importer: real counts, dialog construction, and every malformed case."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.stage import ParamsError, build_params
from pipeline.data.import_latentqa import ImportParams, import_folder, run
from pipeline.data.schema import DataError, read_dialogs

REPO = Path(__file__).resolve().parents[1]
SHARED_EVAL = REPO.parent / "shared" / "latentqa_eval"

CONTROL = [{"control_user": "Talk like a pirate.", "label": "persona-pirate"}]
STIMULUS = [
    {
        "control_user": "Talk like a pirate.",
        "control_thought": "ok",
        "control_model": "Arr, I will.",
        "stimulus_user": "How is the weather?",
        "label": "persona-pirate",
    }
]
SYSTEM = [
    {
        "system": "You are a pirate.",
        "stimulus_user": "How is the weather?",
        "label": "persona-pirate",
    }
]
QA = {"persona-pirate": [["Who is the assistant?", "A pirate."], ["Why?", "It was asked to."]]}


def write_source(folder: Path, **overrides) -> Path:
    """A tiny valid source folder; an override replaces a file's JSON value, a str its text."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"control": CONTROL, "stimulus": STIMULUS, "system": SYSTEM, "qa": QA}
    files.update(overrides)
    for name, value in files.items():
        text = value if isinstance(value, str) else json.dumps(value)
        (folder / f"{name}.json").write_text(text)
    return folder


def cli(source: Path, out: Path, params: str = "{}") -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.data.import_latentqa",
            "--out",
            str(out),
            "--key",
            "test",
            "--params",
            params,
            "--input",
            f"source={source}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )


def test_builds_dialogs_as_the_reference(tmp_path):
    records, summary = import_folder(write_source(tmp_path / "src"), ImportParams())
    by_kind = {r["kind"]: r for r in records}
    assert [m["role"] for m in by_kind["control"]["messages"]] == ["user"]
    assert by_kind["control"]["n_masked_turns"] == 0
    stim = by_kind["stimulus"]
    assert [(m["role"], m["content"]) for m in stim["messages"]] == [
        ("user", "Talk like a pirate."),
        ("assistant", "Arr, I will."),
        ("user", "How is the weather?"),
    ]
    assert stim["n_masked_turns"] == 2
    assert [m["role"] for m in by_kind["system"]["messages"]] == ["system", "user"]
    assert by_kind["system"]["n_masked_turns"] == 1
    for r in records:
        assert r["qa"] == [
            {"question": "Who is the assistant?", "answer": "A pirate."},
            {"question": "Why?", "answer": "It was asked to."},
        ]
        assert (r["source"], r["split"], r["label"]) == (
            "latentqa-import",
            "eval",
            "persona-pirate",
        )
    assert summary["dialogs_by_kind"] == {"control": 1, "stimulus": 1, "system": 1}


def test_stimulus_completion_and_params(tmp_path):
    item = {**STIMULUS[0], "stimulus_model": "Stormy, matey."}
    src = write_source(tmp_path / "src", stimulus_completion=[item])
    records, _ = import_folder(src, ImportParams(kinds=["stimulus_completion"], split="train"))
    (rec,) = records
    assert [m["role"] for m in rec["messages"]] == ["user", "assistant", "user", "assistant"]
    assert rec["n_masked_turns"] == 2 and rec["split"] == "train"
    with pytest.raises(ParamsError, match=r"kinds\[0\]: 'story' is not one of"):
        build_params(ImportParams, {"kinds": ["story"]})
    with pytest.raises(ParamsError, match="kinds must name at least one"):
        ImportParams(kinds=[])
    with pytest.raises(
        ParamsError, match=r"split: 'test' is not one of 'train', 'validation', 'eval'"
    ):
        build_params(ImportParams, {"split": "test"})


def test_run_writes_dialogs_and_info(tmp_path):
    info: dict = {}
    work = tmp_path / "work"
    work.mkdir()
    run(ImportParams(), {"source": write_source(tmp_path / "src")}, work, info)
    rows = read_dialogs(work / "dialogs.parquet")
    assert len(rows) == 3 and info["dialogs"] == 3 and info["qa_labels"] == 1
    assert info["unique_ids"] == 3


def test_published_eval_split_counts(tmp_path):
    if not (SHARED_EVAL / "qa.json").exists():
        pytest.skip(f"LatentQA eval data not found at {SHARED_EVAL} (../shared/latentqa_eval)")
    out = tmp_path / "store" / "import_latentqa" / "k"
    result = cli(SHARED_EVAL, out)
    assert result.returncode == 0, result.stderr
    rows = read_dialogs(out / "dialogs.parquet")
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["info"]["dialogs_by_kind"] == {"control": 500, "stimulus": 567, "system": 567}
    assert manifest["info"]["qa_labels"] == 976
    assert len(rows) == 1634
    assert {r["kind"] for r in rows} == {"control", "stimulus", "system"}
    assert all(len(r["qa"]) == 2 and r["split"] == "eval" for r in rows)


# (file override, file, record index or None, field, words in the reason)
MALFORMED = [
    (
        {"control": '[{"control_user": "x", "label": '},
        "control.json",
        None,
        "<json>",
        "invalid JSON at line 1",
    ),
    ({"qa": "{not json"}, "qa.json", None, "<json>", "invalid JSON"),
    ({"stimulus": {"a": 1}}, "stimulus.json", None, "<top level>", "expected a list"),
    ({"qa": [["q", "a"]]}, "qa.json", None, "<top level>", "expected an object"),
    (
        {"control": [CONTROL[0], {"label": "persona-pirate"}]},
        "control.json",
        1,
        "control_user",
        "missing",
    ),
    ({"system": [{"system": "s", "stimulus_user": "u"}]}, "system.json", 0, "label", "missing"),
    (
        {"stimulus": [{**STIMULUS[0], "control_model": 5}]},
        "stimulus.json",
        0,
        "control_model",
        "expected a string",
    ),
    ({"control": [CONTROL[0], "text"]}, "control.json", 1, "<item>", "expected an object"),
    (
        {"system": [SYSTEM[0], SYSTEM[0], {**SYSTEM[0], "stimulus_user": "  "}]},
        "system.json",
        2,
        "stimulus_user",
        "empty text",
    ),
    (
        {"control": [{**CONTROL[0], "label": "goal-unknown"}]},
        "control.json",
        0,
        "label",
        "no entry in qa.json",
    ),
    ({"qa": {**QA, "goal-x": "just a string"}}, "qa.json", 1, "goal-x", "list of [question"),
    ({"qa": {**QA, "goal-x": []}}, "qa.json", 1, "goal-x", "non-empty list"),
    (
        {"qa": {"goal-x": [["q", "a"], ["q", "a", "c"]], **QA}},
        "qa.json",
        0,
        "goal-x[1]",
        "[question, answer] pair",
    ),
    ({"qa": {"goal-x": ["q", "a"], **QA}}, "qa.json", 0, "goal-x[0]", "pair"),
    (
        {"qa": {"goal-x": [["q", 2]], **QA}},
        "qa.json",
        0,
        "goal-x[0][1] (answer)",
        "expected a string",
    ),
    ({"qa": {"goal-x": [["", "a"]], **QA}}, "qa.json", 0, "goal-x[0][0] (question)", "empty"),
]


@pytest.mark.parametrize(("overrides", "file", "index", "field", "reason"), MALFORMED)
def test_malformed_input_is_named_and_nothing_published(
    tmp_path, overrides, file, index, field, reason
):
    src = write_source(tmp_path / "src", **overrides)
    with pytest.raises(DataError) as info:
        import_folder(src, ImportParams())
    err = info.value
    assert Path(err.file) == src / file
    assert (err.record, err.field) == (index, field)
    message = str(err)
    assert str(src / file) in message and repr(field) in message and reason in message
    if index is not None:
        assert f"record {index}" in message

    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(DataError):
        run(ImportParams(), {"source": src}, work, {})
    assert not (work / "dialogs.parquet").exists()


def test_missing_file_is_named(tmp_path):
    src = write_source(tmp_path / "src")
    (src / "system.json").unlink()
    with pytest.raises(DataError, match=r"system\.json.*does not exist"):
        import_folder(src, ImportParams())


def test_cli_failure_publishes_nothing(tmp_path):
    src = write_source(
        tmp_path / "src", stimulus=[STIMULUS[0], {**STIMULUS[0], "stimulus_user": ""}]
    )
    out = tmp_path / "store" / "import_latentqa" / "bad"
    result = cli(src, out)
    assert result.returncode != 0
    assert "stimulus.json" in result.stderr and "record 1" in result.stderr
    assert "'stimulus_user'" in result.stderr and "empty text" in result.stderr
    assert not out.exists()
    partial = out.with_name(out.name + ".partial")
    assert not partial.exists() or not any(partial.iterdir())
