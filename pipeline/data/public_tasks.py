"""Stage `public_tasks`: classification and context questions on public, human-written text.

Input: ``tasks`` (``data/public/tasks.yaml``, whose rows lie in the ``.jsonl`` files beside it;
``data/public/README.md`` says where each comes from). Each task labels short texts (sentiment,
truth, tense, ...). A trained task gives training dialogs: its text read as one user turn (nothing
masked), one of the task's questions (seeded) answered with the label's answer, and, with
``next_words``, a second dialog reading the text's first half and asked for the next words. A
held-out task is never trained on. Outputs:

- ``dialogs.parquet``: the training dialogs (kind ``text``, source ``public``, split ``train``);
- ``eval_items.jsonl``: per evaluated text its task, question, answer and two choices (the answer
  and a seeded other label's), for the evaluate stage: every text of the held-out tasks (up to
  ``eval_texts`` each) and ``eval_texts`` texts of each trained task that training never sees;
- ``tasks.json``: each task's labels, answers, description and whether it is held out.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from pipeline.core import stage
from pipeline.core.stage import bounded
from pipeline.data.schema import DataError, write_dialogs

log = logging.getLogger("pipeline.data.public_tasks")
SOURCE = "public"
NEXT_QUESTION = "What are the next words of the text?"
EVAL_ITEMS = "eval_items.jsonl"
TASKS = "tasks.json"


@dataclass
class PublicTaskParams:
    """Which public tasks train the decoder and which are held out to measure generalisation."""

    MIX_NAME: ClassVar[str] = SOURCE
    """What ``train.mix`` calls this stage's rows (their ``source`` up to any colon)."""

    tasks: list[str] | None = None
    """Tasks trained on (null: every task of tasks.yaml not marked ``held_out``)."""
    held_out: list[str] | None = None
    """Tasks only evaluated, never trained on (null: those marked ``held_out``)."""
    eval_texts: int = bounded(40, minimum=0)
    """Texts per task evaluated (a trained task's are left out of its training dialogs)."""
    train_texts: int | None = bounded(60, minimum=0)
    """Texts per trained task that training reads (seeded; null: all the others). Every text
    costs its read in the activation cache; the mix decides how many examples are drawn."""
    next_words: int = bounded(6, minimum=0)
    """Context prediction: a second dialog per trained text reads its first half and is asked
    for its next this-many words (0: none)."""
    seed: int = 0
    """Seed of the question, distractor and evaluation-text choices."""

    def __post_init__(self) -> None:
        shared = sorted(set(self.tasks or []) & set(self.held_out or []))
        if shared:
            raise stage.ParamsError(f"public_tasks: {shared} both trained on and held out")


@dataclass
class Task:
    name: str
    labels: list[str]
    answers: dict[str, str]
    questions: list[str]
    held_out: bool
    description: str
    rows: list[dict[str, Any]]


def _need(value: Any, kind: type, file: Path, where: str) -> Any:
    if not isinstance(value, kind) or (kind in (list, dict, str) and not value):
        raise DataError(file, None, where, f"expected a non-empty {kind.__name__}")
    return value


def load_tasks(path: Path) -> dict[str, Task]:
    """Every task of ``tasks.yaml`` with its rows, checked (file, record and field named)."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(path, None, "<file>", f"unreadable: {exc}") from None
    tasks = _need((spec or {}).get("tasks"), dict, path, "tasks")
    out = {}
    for name, raw in tasks.items():
        where = f"tasks.{name}"
        raw = _need(raw, dict, path, where)
        labels = _need(raw.get("labels"), list, path, f"{where}.labels")
        answers = _need(raw.get("answers"), dict, path, f"{where}.answers")
        missing = sorted(set(map(str, labels)) - set(answers))
        if missing:
            raise DataError(path, None, f"{where}.answers", f"no answer for labels {missing}")
        if len(set(labels)) < 2 or len({str(answers[str(x)]) for x in labels}) < len(set(labels)):
            raise DataError(
                path, None, f"{where}.labels", "needs two labels or more, each its own answer"
            )
        questions = _need(raw.get("questions"), list, path, f"{where}.questions")
        file = path.parent / _need(raw.get("file"), str, path, f"{where}.file")
        out[name] = Task(
            name,
            [str(label) for label in labels],
            {str(k): str(v) for k, v in answers.items()},
            [str(q) for q in questions],
            bool(raw.get("held_out", False)),
            str(raw.get("description", "")),
            _rows(file, [str(label) for label in labels], questions),
        )
    return out


def _rows(file: Path, labels: list[str], questions: list[str]) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(file, None, "<file>", f"unreadable: {exc}") from None
    for index, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(file, index, "<json>", f"not JSON: {exc.msg}") from None
        for field in ("id", "text", "label"):
            if not isinstance(row.get(field), str) or not row[field].strip():
                raise DataError(file, index, field, "expected a non-empty string")
        if row["label"] not in labels:
            raise DataError(file, index, "label", f"{row['label']!r} is not one of {labels}")
        fields = row.get("fields") or {}
        try:
            for question in questions:
                question.format(**fields)
        except (KeyError, IndexError) as exc:
            raise DataError(file, index, "fields", f"a question needs {exc}") from None
        rows.append(row)
    if not rows:
        raise DataError(file, None, "<file>", "no rows")
    return rows


def _choose(names: list[str] | None, tasks: dict[str, Task], default, where: str) -> list[str]:
    chosen = [n for n in tasks if default(tasks[n])] if names is None else list(names)
    unknown = sorted(set(chosen) - set(tasks))
    if unknown:
        raise stage.ParamsError(f"public_tasks.{where}: unknown tasks {unknown} ({sorted(tasks)})")
    return chosen


def build(tasks: dict[str, Task], params: PublicTaskParams) -> tuple[list[dict], list[dict]]:
    """(training dialogs, evaluation items)."""
    trained = _choose(params.tasks, tasks, lambda t: not t.held_out, "tasks")
    held = _choose(params.held_out, tasks, lambda t: t.held_out, "held_out")
    shared = sorted(set(trained) & set(held))
    if shared:
        raise stage.ParamsError(f"public_tasks: {shared} both trained on and held out")
    rng = random.Random(params.seed)
    dialogs, items = [], []
    for name in [*trained, *held]:
        task = tasks[name]
        rows = list(task.rows)
        rng.shuffle(rows)
        evaluated, training = rows[: params.eval_texts], rows[params.eval_texts :]
        training = training[: params.train_texts]
        for row in evaluated:
            items.append(_item(task, row, name in held, rng))
        if name in held:
            continue
        for row in training:
            question = rng.choice(task.questions).format(**(row.get("fields") or {}))
            dialogs.append(_dialog(row, question, task.answers[row["label"]]))
            words = row["text"].split()
            half = len(words) // 2
            if params.next_words and len(words) - half >= params.next_words and half >= 3:
                answer = " ".join(words[half : half + params.next_words])
                dialogs.append(_dialog(row, NEXT_QUESTION, answer, " ".join(words[:half])))
    return dialogs, items


def _dialog(row: dict, question: str, answer: str, text: str | None = None) -> dict[str, Any]:
    return {
        "label": f"{SOURCE}:{row['id']}",
        "kind": "text",
        "messages": [{"role": "user", "content": row["text"] if text is None else text}],
        "n_masked_turns": 0,
        "qa": [{"question": question, "answer": answer}],
        "source": SOURCE,
        "split": "train",
    }


def _item(task: Task, row: dict, held_out: bool, rng: random.Random) -> dict[str, Any]:
    other = rng.choice([label for label in task.labels if label != row["label"]])
    choices = [task.answers[row["label"]], task.answers[other]]
    rng.shuffle(choices)
    return {
        "task": task.name,
        "id": row["id"],
        "text": row["text"],
        "question": rng.choice(task.questions).format(**(row.get("fields") or {})),
        "answer": task.answers[row["label"]],
        "choices": choices,
        "held_out": held_out,
    }


def read_eval_items(folder: Path) -> list[dict[str, Any]]:
    """The evaluation items of a ``public_tasks`` artifact."""
    path = Path(folder) / EVAL_ITEMS
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run(params: PublicTaskParams, inputs: dict[str, Path], workdir: Path, info: dict) -> None:
    tasks = load_tasks(inputs["tasks"])
    dialogs, items = build(tasks, params)
    rows = write_dialogs(dialogs, workdir / "dialogs.parquet")
    with open(workdir / EVAL_ITEMS, "w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(item, ensure_ascii=False) + "\n")
    described = {
        task.name: {
            "labels": task.labels,
            "answers": task.answers,
            "held_out": task.name in {i["task"] for i in items if i["held_out"]},
            "trained": any(r["label"].startswith(f"{SOURCE}:{task.name}-") for r in rows),
            "description": task.description,
        }
        for task in tasks.values()
    }
    (workdir / TASKS).write_text(json.dumps(described, indent=2) + "\n")
    info.update(dialogs=len(rows), eval_items=len(items))
    log.info("wrote %d training dialogs and %d evaluation items", len(rows), len(items))


if __name__ == "__main__":
    stage.main("public_tasks", PublicTaskParams, run, needs=("tasks",))
