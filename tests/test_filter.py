"""The filter stage: validation, deduplication, token-length limit, label-disjoint split, report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from pipeline.core.stage import ParamsError, build_params
from pipeline.data.filter import FilterParams, filter_dialogs, run, token_lengths
from pipeline.data.schema import POLARS_SCHEMA, read_dialogs, validate_record, write_dialogs

REPO = Path(__file__).resolve().parents[1]


def dialog(
    label: str, text: str, kind: str = "control", split: str = "train", source: str = "template"
) -> dict:
    return {
        "label": label,
        "kind": kind,
        "messages": [{"role": "user", "content": text}],
        "n_masked_turns": 0,
        "qa": [{"question": "What?", "answer": label}],
        "source": source,
        "split": split,
    }


def data_dir(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True)
    write_dialogs(records, folder / "dialogs.parquet")
    return folder


def run_filter(tmp_path, tokenizer_dir, params: FilterParams, **sets: list[dict]):
    inputs = {name: data_dir(tmp_path / name, records) for name, records in sets.items()}
    inputs["model"] = tokenizer_dir
    work = tmp_path / "work"
    work.mkdir()
    info: dict = {}
    run(params, inputs, work, info)
    report = json.loads((work / "filter_report.json").read_text())
    return read_dialogs(work / "dialogs.parquet"), report, work


def many(n_labels: int, per_label: int = 2, **kw) -> list[dict]:
    return [
        dialog(f"persona-{i}", f"Be person number {i}, variant {j}.", **kw)
        for i in range(n_labels)
        for j in range(per_label)
    ]


def test_token_lengths_use_the_chat_template(tokenizer):
    user = [{"role": "user", "content": "Hello there."}]
    text = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    expected = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert token_lengths(tokenizer, [user]) == [expected]
    closed = user + [{"role": "assistant", "content": "Hi."}]
    text = tokenizer.apply_chat_template(closed, tokenize=False, add_generation_prompt=False)
    assert token_lengths(tokenizer, [closed]) == [
        len(tokenizer(text, add_special_tokens=False)["input_ids"])
    ]


def test_dedup_drops_exact_copies_across_sources(tmp_path, tokenizer_dir):
    a = dialog("persona-a", "Be a pirate.")
    copy_other_source = dialog("persona-a", "Be a pirate.", source="openai:x")
    rows, report, _ = run_filter(
        tmp_path,
        tokenizer_dir,
        FilterParams(eval_fraction=0.0),
        data_a=[a, a, dialog("persona-b", "Be a cook.")],
        data_b=[copy_other_source],
    )
    assert len(rows) == 2 and len({r["id"] for r in rows}) == 2
    assert report["read"] == 4 and report["kept"] == 2
    assert report["dropped"] == {"invalid": 0, "duplicate": 2, "too_long": 0}
    assert report["dropped_by_source"]["duplicate"] == {"openai:x": 1, "template": 1}


def test_length_limit_with_the_real_tokenizer(tmp_path, tokenizer, tokenizer_dir):
    short = dialog("persona-a", "Be brief.")
    long = dialog("persona-b", "Tell me a long story about the sea. " * 10)
    limit = token_lengths(tokenizer, [long["messages"]])[0]
    assert limit > token_lengths(tokenizer, [short["messages"]])[0]
    rows, report, _ = run_filter(
        tmp_path / "at",
        tokenizer_dir,
        FilterParams(max_tokens=limit, eval_fraction=0),
        data=[short, long],
    )
    assert report["kept"] == 2 and report["tokens"]["max"] == limit
    rows, report, _ = run_filter(
        tmp_path / "below",
        tokenizer_dir,
        FilterParams(max_tokens=limit - 1, eval_fraction=0),
        data=[short, long],
    )
    assert [r["label"] for r in rows] == ["persona-a"]
    assert report["dropped"]["too_long"] == 1
    assert report["dropped_by_source"] == {"too_long": {"template": 1}}
    assert f"{limit} tokens" in report["examples"]["too_long"][0]


def test_invalid_rows_are_dropped_and_reported(tmp_path, tokenizer, tokenizer_dir):
    good = validate_record(dialog("persona-a", "Be a pirate."), "x", 0)
    bad = {**validate_record(dialog("persona-b", "Be a cook."), "x", 0), "kind": "story"}
    folder = tmp_path / "data"
    folder.mkdir()
    pl.DataFrame([good, bad], schema=POLARS_SCHEMA).write_parquet(folder / "dialogs.parquet")
    kept, report = filter_dialogs(
        {"data": pl.read_parquet(folder / "dialogs.parquet").to_dicts()},
        {"data": folder / "dialogs.parquet"},
        tokenizer,
        FilterParams(eval_fraction=0),
    )
    assert [r["label"] for r in kept] == ["persona-a"]
    assert report["dropped"]["invalid"] == 1
    assert "record 1" in report["examples"]["invalid"][0]
    assert "'kind'" in report["examples"]["invalid"][0]


def test_split_is_disjoint_by_label_and_deterministic(tmp_path, tokenizer_dir):
    params = FilterParams(eval_fraction=0.25, validation_fraction=0.2, seed=3)
    rows, report, work = run_filter(tmp_path / "a", tokenizer_dir, params, data=many(20))
    parts = {s: read_dialogs(work / f"{s}.parquet") for s in ("train", "validation", "eval")}
    assert sum(len(p) for p in parts.values()) == len(rows) == 40
    labels = {s: {r["label"] for r in p} for s, p in parts.items()}
    assert len(labels["eval"]) == 5 and len(labels["validation"]) == 4
    assert not labels["eval"] & labels["train"] and not labels["validation"] & labels["train"]
    assert not labels["eval"] & labels["validation"]
    assert report["labels"] == {"train": 11, "validation": 4, "eval": 5, "fixed_eval": 0}
    assert report["kept_by_split"] == {"eval": 10, "train": 22, "validation": 8}
    again, _, _ = run_filter(tmp_path / "b", tokenizer_dir, params, data=many(20))
    assert again == rows
    # The validation share takes labels from train, never from eval.
    no_val = FilterParams(eval_fraction=0.25, validation_fraction=0.0, seed=3)
    same, _, _ = run_filter(tmp_path / "d", tokenizer_dir, no_val, data=many(20))
    assert {r["label"] for r in same if r["split"] == "eval"} == labels["eval"]
    other, _, _ = run_filter(
        tmp_path / "c", tokenizer_dir, FilterParams(eval_fraction=0.25, seed=4), data=many(20)
    )
    assert {r["label"] for r in other if r["split"] == "eval"} != labels["eval"]


def test_texts_are_split_into_train_and_validation_and_keep_an_eval_label(tmp_path, tokenizer_dir):
    texts = [
        {**dialog(f"text:{i}", f"A plain text number {i}."), "kind": "text", "source": "context"}
        for i in range(8)
    ]
    # a held-out fact's label stays eval, for every source that has it
    texts.append({**texts[0], "messages": [{"role": "user", "content": "Held."}], "split": "eval"})
    rows, report, _ = run_filter(
        tmp_path / "t",
        tokenizer_dir,
        FilterParams(eval_fraction=0.5, validation_fraction=0.25),
        data_template=many(4),
        data_context=texts,
    )
    split = {r["label"]: r["split"] for r in rows if r["kind"] == "text"}
    assert split.pop("text:0") == "eval"
    assert sorted(split.values()) == ["train"] * 5 + ["validation"] * 2  # 25% of 8 labels
    assert all(r["split"] == "eval" for r in rows if r["label"] == "text:0")
    # 4 persona labels (2 eval, 1 validation, 1 train) beside the 9 text labels
    assert report["labels"] == {"train": 6, "validation": 3, "eval": 3, "fixed_eval": 0}


def test_keep_split_keeps_source_eval_whole_labels(tmp_path, tokenizer_dir):
    imported = [
        dialog("goal-x", "Be kind.", split="eval", source="latentqa-import"),
        dialog("goal-y", "Be calm.", split="eval", source="latentqa-import"),
    ]
    # A template row sharing an imported eval label must follow it to eval.
    template = many(10) + [dialog("goal-x", "Be kind, really.")]
    rows, report, _ = run_filter(
        tmp_path / "keep",
        tokenizer_dir,
        FilterParams(eval_fraction=0.0, validation_fraction=0.0, keep_split=True),
        data_import=imported,
        data_template=template,
    )
    assert {r["label"] for r in rows if r["split"] == "eval"} == {"goal-x", "goal-y"}
    assert report["labels"]["fixed_eval"] == 2 and report["split_changed"] == 1
    assert report["kept_by_source_kind_split"] == {
        "latentqa-import/control/eval": 2,
        "template/control/eval": 1,
        "template/control/train": 20,
    }
    rows, report, _ = run_filter(
        tmp_path / "reassign",
        tokenizer_dir,
        FilterParams(eval_fraction=0.0, validation_fraction=0.0, keep_split=False),
        data_import=imported,
        data_template=template,
    )
    assert {r["split"] for r in rows} == {"train"}


def test_params_are_checked():
    with pytest.raises(
        ParamsError, match=r"params\.eval_fraction: 1\.5 is out of range: must be <= 1"
    ):
        build_params(FilterParams, {"eval_fraction": 1.5})
    with pytest.raises(ParamsError, match="must sum to at most 1"):
        build_params(FilterParams, {"eval_fraction": 0.6, "validation_fraction": 0.5})
    with pytest.raises(ParamsError, match=r"params\.max_tokens: 0 is out of range: must be >= 1"):
        build_params(FilterParams, {"max_tokens": 0})


def test_cli(tmp_path, tokenizer_dir):
    data = data_dir(tmp_path / "data", many(8) + many(8, per_label=1))
    out = tmp_path / "store" / "filter" / "k"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.data.filter",
            "--out",
            str(out),
            "--key",
            "k",
            "--params",
            json.dumps({"eval_fraction": 0.25, "max_tokens": 256}),
            "--input",
            f"data_template={data}",
            "--input",
            f"model={tokenizer_dir}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["info"]["kept"] == 16 and manifest["info"]["dropped"]["duplicate"] == 8
    assert manifest["info"]["labels"] == {"train": 5, "validation": 1, "eval": 2, "fixed_eval": 0}
    assert "duplicate | 8" in (out / "filter_report.md").read_text()
    assert len(read_dialogs(out / "train.parquet")) == 10
    assert len(read_dialogs(out / "validation.parquet")) == 2
