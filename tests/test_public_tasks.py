"""Public classification data: the committed tasks load, held-out tasks never reach training."""

from __future__ import annotations

import json

import pytest
from conftest import REPO

from pipeline.data.public_tasks import (
    NEXT_QUESTION,
    PublicTaskParams,
    build,
    load_tasks,
    read_eval_items,
    run,
)
from pipeline.data.schema import DataError, read_dialogs

TASKS = REPO / "data" / "public" / "tasks.yaml"


def test_the_committed_tasks_load_with_balanced_labels():
    tasks = load_tasks(TASKS)
    held = {name for name, task in tasks.items() if task.held_out}
    assert len(held) >= 3 and len(tasks) - len(held) >= 3
    for task in tasks.values():
        counts = {label: 0 for label in task.labels}
        for row in task.rows:
            counts[row["label"]] += 1
        assert len(set(counts.values())) == 1, task.name


def test_held_out_tasks_and_evaluated_texts_never_reach_training():
    tasks = load_tasks(TASKS)
    params = PublicTaskParams(eval_texts=10, train_texts=30, seed=1)
    dialogs, items = build(tasks, params)
    held = {name for name, task in tasks.items() if task.held_out}
    trained_texts = {d["messages"][0]["content"] for d in dialogs}
    for item in items:
        assert item["text"] not in trained_texts
        assert item["answer"] in item["choices"] and len(set(item["choices"])) == 2
        assert item["held_out"] == (item["task"] in held)
    assert {i["task"] for i in items} == set(tasks)
    assert all(sum(i["task"] == t for i in items) == 10 for t in tasks)
    labels = {d["label"].split(":", 1)[1].rsplit("-", 1)[0] for d in dialogs}
    assert labels == set(tasks) - held
    assert len({d["label"] for d in dialogs}) == 30 * len(labels)
    # one classification question per trained text, and a next-words dialog for most
    asked = [d["qa"][0]["question"] for d in dialogs]
    assert 0 < asked.count(NEXT_QUESTION) <= len(asked) / 2
    nexts = [d for d in dialogs if d["qa"][0]["question"] == NEXT_QUESTION]
    assert all(len(d["qa"][0]["answer"].split()) == params.next_words for d in nexts)
    assert build(tasks, params) == (dialogs, items)  # seeded


def test_chosen_tasks_and_refusals():
    tasks = load_tasks(TASKS)
    dialogs, items = build(tasks, PublicTaskParams(tasks=["sentiment"], held_out=["topic"]))
    assert {d["label"].split(":", 1)[1].rsplit("-", 1)[0] for d in dialogs} == {"sentiment"}
    assert {i["task"] for i in items} == {"sentiment", "topic"}
    with pytest.raises(ValueError, match="unknown tasks"):
        build(tasks, PublicTaskParams(tasks=["astrology"]))
    with pytest.raises(ValueError, match="both trained on and held out"):
        PublicTaskParams(tasks=["topic"], held_out=["topic"])


def test_a_bad_row_is_named_by_file_record_and_field(tmp_path):
    (tmp_path / "tasks.yaml").write_text(
        "tasks:\n  mood:\n    file: mood.jsonl\n    labels: [up, down]\n"
        "    questions: ['How is it?']\n    answers: {up: Up., down: Down.}\n"
    )
    (tmp_path / "mood.jsonl").write_text(
        '{"id": "mood-0", "text": "Fine.", "label": "up"}\n'
        '{"id": "mood-1", "text": "Bad.", "label": "sideways"}\n'
    )
    with pytest.raises(DataError, match=r"mood.jsonl: record 1: field 'label'"):
        load_tasks(tmp_path / "tasks.yaml")
    (tmp_path / "tasks.yaml").write_text(
        "tasks:\n  mood:\n    file: mood.jsonl\n    labels: [up, down]\n"
        "    questions: ['How is it?']\n    answers: {up: Up.}\n"
    )
    with pytest.raises(DataError, match=r"tasks.mood.answers.*down"):
        load_tasks(tmp_path / "tasks.yaml")


def test_the_stage_writes_dialogs_items_and_task_descriptions(tmp_path):
    info: dict = {}
    run(PublicTaskParams(eval_texts=5), {"tasks": TASKS}, tmp_path, info)
    dialogs = read_dialogs(tmp_path / "dialogs.parquet")
    assert len(dialogs) == info["dialogs"] and {d["source"] for d in dialogs} == {"public"}
    items = read_eval_items(tmp_path)
    assert len(items) == info["eval_items"]
    described = json.loads((tmp_path / "tasks.json").read_text())
    assert described["topic"]["held_out"] and not described["topic"]["trained"]
    assert described["sentiment"]["trained"] and not described["sentiment"]["held_out"]
