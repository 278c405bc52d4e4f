"""Stage `import_latentqa`: the published LatentQA JSON files become dialogs in the schema.

Input ``source``: a folder with ``qa.json`` and one file per kind (``control.json``,
``stimulus.json``, ``stimulus_completion.json``, ``system.json``), in the format described in
``data/latentqa_eval/README.md``. The read dialogs are built as the reference implementation
builds them. Every input is checked before anything is written, so a malformed file stops the stage
with an error naming the file, the record index and the field, and nothing is published.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core import stage
from pipeline.data.schema import ControlKind, DataError, Split, write_dialogs

log = logging.getLogger("pipeline.data.import_latentqa")

SOURCE = "latentqa-import"

# Per kind: the item fields it needs, and how they become (messages, n_masked_turns).
FIELDS = {
    "control": ("control_user",),
    "stimulus": ("control_user", "control_model", "stimulus_user"),
    "stimulus_completion": ("control_user", "control_model", "stimulus_user", "stimulus_model"),
    "system": ("system", "stimulus_user"),
}


@dataclass
class ImportParams:
    """Which LatentQA files to import and how to tag them."""

    kinds: list[ControlKind] = field(default_factory=lambda: ["control", "stimulus", "system"])
    """The kinds to import; each needs its ``<kind>.json`` in the source folder."""
    split: Split = "eval"
    """The split the imported dialogs get (the published files are the paper's eval split)."""
    source: str = SOURCE
    """The ``source`` column of the imported rows."""

    def __post_init__(self) -> None:
        if not self.kinds:
            raise stage.ParamsError("import_latentqa: kinds must name at least one kind")


def load_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, None, "<file>", "does not exist") from None
    except UnicodeDecodeError as exc:
        raise DataError(path, None, "<file>", f"not UTF-8 text: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            path, None, "<json>", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None


def _text(value: Any, path: Path, index: int, name: str) -> str:
    if not isinstance(value, str):
        raise DataError(path, index, name, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(path, index, name, "empty text")
    return value


def load_qa(path: Path) -> dict[str, list[dict[str, str]]]:
    """``qa.json``: ``{label: [[question, answer], ...]}``; record index = position of the label."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataError(
            path,
            None,
            "<top level>",
            f"expected an object of label -> QA pairs, got {type(data).__name__}",
        )
    qa = {}
    for index, (label, pairs) in enumerate(data.items()):
        if not label.strip():
            raise DataError(path, index, "<label>", "empty label")
        if not isinstance(pairs, list) or not pairs:
            raise DataError(
                path,
                index,
                label,
                "expected a non-empty list of [question, answer] "
                f"pairs, got {type(pairs).__name__} {str(pairs)[:60]!r}",
            )
        rows = []
        for j, pair in enumerate(pairs):
            if not isinstance(pair, list) or len(pair) != 2:
                raise DataError(
                    path,
                    index,
                    f"{label}[{j}]",
                    f"expected a [question, answer] pair, got {str(pair)[:60]!r}",
                )
            question = _text(pair[0], path, index, f"{label}[{j}][0] (question)")
            answer = _text(pair[1], path, index, f"{label}[{j}][1] (answer)")
            rows.append({"question": question, "answer": answer})
        qa[label] = rows
    return qa


def build_dialog(kind: str, item: dict[str, str]) -> tuple[list[dict[str, str]], int]:
    """The read dialog and its count of masked leading turns, as the reference builds them."""
    if kind == "control":
        return [{"role": "user", "content": item["control_user"]}], 0
    if kind == "system":
        return [
            {"role": "system", "content": item["system"]},
            {"role": "user", "content": item["stimulus_user"]},
        ], 1
    messages = [
        {"role": "user", "content": item["control_user"]},
        {"role": "assistant", "content": item["control_model"]},
        {"role": "user", "content": item["stimulus_user"]},
    ]
    if kind == "stimulus_completion":
        messages.append({"role": "assistant", "content": item["stimulus_model"]})
    # The control turns are masked: the decoder reads only what attended to them.
    return messages, 2


def load_kind(
    path: Path, kind: str, qa: dict[str, list[dict[str, str]]], split: str, source: str
) -> list[dict[str, Any]]:
    data = load_json(path)
    if not isinstance(data, list):
        raise DataError(
            path, None, "<top level>", f"expected a list of items, got {type(data).__name__}"
        )
    records = []
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise DataError(path, index, "<item>", f"expected an object, got {type(item).__name__}")
        values = {}
        for name in (*FIELDS[kind], "label"):
            if name not in item:
                raise DataError(path, index, name, "missing")
            values[name] = _text(item[name], path, index, name)
        label = values["label"]
        if label not in qa:
            raise DataError(path, index, "label", f"{label!r} has no entry in qa.json")
        messages, masked = build_dialog(kind, values)
        records.append(
            {
                "label": label,
                "kind": kind,
                "messages": messages,
                "n_masked_turns": masked,
                "qa": qa[label],
                "source": source,
                "split": split,
            }
        )
    return records


def import_folder(folder: Path, params: ImportParams) -> tuple[list[dict[str, Any]], dict]:
    """All dialogs of the chosen kinds in ``folder``, checked; raises DataError on bad input."""
    qa = load_qa(folder / "qa.json")
    records: list[dict[str, Any]] = []
    for kind in params.kinds:
        records += load_kind(folder / f"{kind}.json", kind, qa, params.split, params.source)
    summary = {
        "qa_labels": len(qa),
        "dialogs": len(records),
        "dialogs_by_kind": dict(Counter(r["kind"] for r in records)),
        "dialog_labels": len({r["label"] for r in records}),
        "qa_pairs": sum(len(r["qa"]) for r in records),
    }
    return records, summary


def run(params: ImportParams, inputs: dict[str, Path], workdir: Path, info: dict) -> None:
    records, summary = import_folder(Path(inputs["source"]), params)
    rows = write_dialogs(records, workdir / "dialogs.parquet")
    summary["unique_ids"] = len({row["id"] for row in rows})
    info.update(summary)
    log.info(
        "imported %d dialogs (%s) over %d labels",
        summary["dialogs"],
        summary["dialogs_by_kind"],
        summary["dialog_labels"],
    )


if __name__ == "__main__":
    stage.main("import_latentqa", ImportParams, run, needs=("source",))
