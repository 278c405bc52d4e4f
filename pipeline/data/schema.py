"""The dialog schema every data stage writes and reads: validation, ids and Parquet I/O.

See docs/design.md §6.1.

One row per read dialog: ``id``, ``label``, ``kind``, ``messages`` (list of {role, content}),
``n_masked_turns``, ``qa`` (list of {question, answer}), ``source``, ``split``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import polars as pl

from pipeline.core.errors import InputError
from pipeline.core.store import canonical_json

ControlKind = Literal["control", "stimulus", "stimulus_completion", "system"]
"""Dialogs under a control (persona, goal, scenario) that the questions ask about."""
CONTROL_KINDS = get_args(ControlKind)
Family = Literal["persona", "goal", "scenario"]
"""The families of controls (template and curated dialogs)."""
KINDS = (*CONTROL_KINDS, "text")
"""``text``: a plain text read for what it says (context, classification, relation facts)."""
Split = Literal["train", "validation", "eval"]
"""Disjoint by label: ``validation`` chooses settings, ``eval`` only reports."""
SPLITS = get_args(Split)
ROLES = ("system", "user", "assistant")
COLUMNS = ("id", "label", "kind", "messages", "n_masked_turns", "qa", "source", "split")

POLARS_SCHEMA = pl.Schema(
    {
        "id": pl.String,
        "label": pl.String,
        "kind": pl.String,
        "messages": pl.List(pl.Struct({"role": pl.String, "content": pl.String})),
        "n_masked_turns": pl.Int64,
        "qa": pl.List(pl.Struct({"question": pl.String, "answer": pl.String})),
        "source": pl.String,
        "split": pl.String,
    }
)


def as_answer(text: str) -> str:
    """A reference answer as the data sources write them: capitalised, ending in a full stop."""
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


class DataError(InputError):
    """A record that does not fit the schema, located by file, record index and field."""

    def __init__(self, file: str | os.PathLike, record: int | None, field: str, reason: str):
        self.file = str(file)
        self.record = record
        self.field = field
        self.reason = reason
        where = f"{self.file}: record {record}" if record is not None else self.file
        super().__init__(f"{where}: field {field!r}: {reason}")


def _text(value: Any, file: str, index: int, field: str) -> str:
    if not isinstance(value, str):
        raise DataError(file, index, field, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(file, index, field, "empty text")
    return value


def _items(value: Any, keys: tuple[str, str], file: str, index: int, field: str) -> list[dict]:
    if not isinstance(value, list | tuple):
        raise DataError(file, index, field, f"expected a list, got {type(value).__name__}")
    if not value:
        raise DataError(file, index, field, "empty list")
    items = []
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(item, Mapping):
            raise DataError(file, index, where, f"expected an object, got {type(item).__name__}")
        extra = sorted(set(item) - set(keys))
        if extra:
            raise DataError(file, index, f"{where}.{extra[0]}", f"unknown key; expected {keys}")
        for key in keys:
            if key not in item:
                raise DataError(file, index, f"{where}.{key}", "missing")
        items.append({key: _text(item[key], file, index, f"{where}.{key}") for key in keys})
    return items


def _content(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "kind": record["kind"],
        "messages": [{"role": m["role"], "content": m["content"]} for m in record["messages"]],
        "n_masked_turns": record["n_masked_turns"],
        "qa": [{"question": p["question"], "answer": p["answer"]} for p in record["qa"]],
    }


def dialog_id(record: Mapping[str, Any]) -> str:
    """The content hash: first 16 hex digits of sha256 over (kind, messages, n_masked_turns, qa)."""
    return hashlib.sha256(canonical_json(_content(record)).encode()).hexdigest()[:16]


def validate_record(record: Any, file: str | os.PathLike, index: int) -> dict[str, Any]:
    """Check one record and return it normalised (column order, id filled in); raise DataError."""
    file = str(file)
    if not isinstance(record, Mapping):
        raise DataError(file, index, "<record>", f"expected an object, got {type(record).__name__}")
    unknown = sorted(set(record) - set(COLUMNS))
    if unknown:
        raise DataError(file, index, unknown[0], f"unknown field; expected {list(COLUMNS)}")
    for name in COLUMNS:
        if name != "id" and name not in record:
            raise DataError(file, index, name, "missing")
    out: dict[str, Any] = {}
    out["label"] = _text(record["label"], file, index, "label")
    kind = record["kind"]
    if kind not in KINDS:
        raise DataError(file, index, "kind", f"{kind!r} is not one of {list(KINDS)}")
    out["kind"] = kind
    messages = _items(record["messages"], ("role", "content"), file, index, "messages")
    for i, message in enumerate(messages):
        if message["role"] not in ROLES:
            raise DataError(
                file,
                index,
                f"messages[{i}].role",
                f"{message['role']!r} is not one of {list(ROLES)}",
            )
    out["messages"] = messages
    masked = record["n_masked_turns"]
    if isinstance(masked, bool) or not isinstance(masked, int):
        raise DataError(
            file, index, "n_masked_turns", f"expected an integer, got {type(masked).__name__}"
        )
    if not 0 <= masked <= len(messages) - 1:
        # At least one turn must stay visible, or the decoder reads nothing.
        raise DataError(
            file,
            index,
            "n_masked_turns",
            f"{masked} is outside 0..{len(messages) - 1} for {len(messages)} messages",
        )
    out["n_masked_turns"] = masked
    out["qa"] = _items(record["qa"], ("question", "answer"), file, index, "qa")
    out["source"] = _text(record["source"], file, index, "source")
    split = record["split"]
    if split not in SPLITS:
        raise DataError(file, index, "split", f"{split!r} is not one of {list(SPLITS)}")
    out["split"] = split
    expected = dialog_id(out)
    given = record.get("id")
    if given is not None and given != expected:
        raise DataError(file, index, "id", f"{given!r} is not the content hash {expected!r}")
    out["id"] = expected
    return {name: out[name] for name in COLUMNS}


def validate_records(records: Iterable[Any], file: str | os.PathLike) -> list[dict[str, Any]]:
    return [validate_record(record, file, i) for i, record in enumerate(records)]


def write_dialogs(records: Iterable[Any], path: str | os.PathLike) -> list[dict[str, Any]]:
    """Validate ``records`` and write them to a Parquet file; return the normalised records."""
    path = Path(path)
    rows = validate_records(records, path)
    pl.DataFrame(rows, schema=POLARS_SCHEMA).write_parquet(path)
    return rows


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]


def read_frame(path: str | os.PathLike) -> pl.DataFrame:
    """A dialogs Parquet file as a frame, its columns and column types checked (not its rows)."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, "<file>", "does not exist")
    try:
        frame = pl.read_parquet(path)
    except Exception as exc:  # polars raises several types for unreadable files
        raise DataError(
            path, None, "<file>", f"not a readable Parquet file: {_one_line(exc)}"
        ) from None
    missing = [name for name in COLUMNS if name not in frame.columns and name != "id"]
    if missing:
        raise DataError(path, None, missing[0], "missing column")
    for name, expected in POLARS_SCHEMA.items():
        if name not in frame.columns:
            continue
        actual = frame.schema[name]
        fits = actual.is_integer() if expected == pl.Int64 else actual == expected
        if not fits and not (name == "id" and actual == pl.Null):
            raise DataError(path, None, name, f"column has type {actual}, expected {expected}")
    return frame


def read_dialogs(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read and validate a dialogs Parquet file."""
    path = Path(path)
    return validate_records(read_frame(path).to_dicts(), path)
