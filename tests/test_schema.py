"""The dialog schema: validation errors name file, record and field; ids; Parquet round trip."""

from __future__ import annotations

import copy

import polars as pl
import pytest

from pipeline.data.schema import (
    COLUMNS,
    POLARS_SCHEMA,
    DataError,
    dialog_id,
    read_dialogs,
    validate_record,
    write_dialogs,
)


def record(**overrides):
    base = {
        "label": "persona-pirate",
        "kind": "stimulus",
        "messages": [
            {"role": "user", "content": "Be a pirate."},
            {"role": "assistant", "content": "Arr."},
            {"role": "user", "content": "How is the weather?"},
        ],
        "n_masked_turns": 2,
        "qa": [{"question": "Who is the assistant?", "answer": "A pirate."}],
        "source": "template",
        "split": "train",
    }
    base.update(overrides)
    return base


def test_valid_record_is_normalised_with_content_id():
    out = validate_record(record(), "x.parquet", 0)
    assert list(out) == list(COLUMNS)
    assert out["id"] == dialog_id(out) and len(out["id"]) == 16
    int(out["id"], 16)


def test_id_depends_on_content_only():
    a = dialog_id(record())
    assert dialog_id(record(label="other", source="x", split="eval")) == a
    assert dialog_id(record(n_masked_turns=1)) != a
    assert dialog_id(record(kind="stimulus_completion")) != a
    changed = record()
    changed["messages"][2]["content"] = "How is the sea?"
    assert dialog_id(changed) != a
    assert dialog_id(record(qa=[{"question": "Who?", "answer": "A pirate."}])) != a


def test_key_order_does_not_change_id():
    shuffled = {k: record()[k] for k in reversed(list(record()))}
    shuffled["messages"] = [
        {"content": m["content"], "role": m["role"]} for m in shuffled["messages"]
    ]
    assert dialog_id(shuffled) == dialog_id(record())


def _broken(mutate):
    rec = copy.deepcopy(record())
    mutate(rec)
    return rec


BAD = [
    (lambda r: r.pop("label"), "label", "missing"),
    (lambda r: r.update(label="  "), "label", "empty"),
    (lambda r: r.update(label=3), "label", "string"),
    (lambda r: r.update(kind="story"), "kind", "not one of"),
    (lambda r: r.update(split="test"), "split", "not one of"),
    (lambda r: r.update(source=""), "source", "empty"),
    (lambda r: r.update(extra=1), "extra", "unknown"),
    (lambda r: r.update(messages=[]), "messages", "empty list"),
    (lambda r: r.update(messages="hi"), "messages", "list"),
    (lambda r: r["messages"][1].update(role="tool"), "messages[1].role", "not one of"),
    (lambda r: r["messages"][2].update(content=""), "messages[2].content", "empty"),
    (lambda r: r["messages"][0].pop("content"), "messages[0].content", "missing"),
    (lambda r: r.update(n_masked_turns=3), "n_masked_turns", "outside"),
    (lambda r: r.update(n_masked_turns=-1), "n_masked_turns", "outside"),
    (lambda r: r.update(n_masked_turns=True), "n_masked_turns", "integer"),
    (lambda r: r.update(n_masked_turns=1.0), "n_masked_turns", "integer"),
    (lambda r: r.update(qa=[]), "qa", "empty list"),
    (lambda r: r.update(qa=[["q", "a"]]), "qa[0]", "object"),
    (lambda r: r["qa"][0].update(answer=" "), "qa[0].answer", "empty"),
    (lambda r: r["qa"][0].pop("question"), "qa[0].question", "missing"),
    (lambda r: r.update(id="0123456789abcdef"), "id", "content hash"),
]


@pytest.mark.parametrize(("mutate", "field", "reason"), BAD)
def test_invalid_records_name_file_record_and_field(mutate, field, reason):
    with pytest.raises(DataError) as info:
        validate_record(_broken(mutate), "data/x.parquet", 7)
    err = info.value
    assert (err.file, err.record, err.field) == ("data/x.parquet", 7, field)
    assert "data/x.parquet" in str(err) and "record 7" in str(err) and field in str(err)
    assert reason in str(err)


def test_write_and_read_round_trip(tmp_path):
    records = [
        record(),
        record(
            kind="control",
            messages=[{"role": "user", "content": "Hi"}],
            n_masked_turns=0,
            split="eval",
        ),
    ]
    path = tmp_path / "d.parquet"
    rows = write_dialogs(records, path)
    frame = pl.read_parquet(path)
    assert frame.schema == POLARS_SCHEMA
    assert read_dialogs(path) == rows
    assert rows[1]["n_masked_turns"] == 0 and rows[1]["split"] == "eval"


def test_empty_file_keeps_schema(tmp_path):
    path = tmp_path / "e.parquet"
    write_dialogs([], path)
    assert pl.read_parquet(path).schema == POLARS_SCHEMA
    assert read_dialogs(path) == []


def test_write_rejects_bad_record_with_its_index(tmp_path):
    path = tmp_path / "d.parquet"
    with pytest.raises(DataError) as info:
        write_dialogs([record(), record(kind="nope")], path)
    assert info.value.record == 1 and info.value.field == "kind"
    assert not path.exists()


def test_read_checks_rows(tmp_path):
    path = tmp_path / "d.parquet"
    rows = write_dialogs([record()], path)
    pl.DataFrame([{**rows[0], "split": "later"}], schema=POLARS_SCHEMA).write_parquet(path)
    with pytest.raises(DataError, match="record 0.*split"):
        read_dialogs(path)
    pl.DataFrame({"label": ["x"]}).write_parquet(path)
    with pytest.raises(DataError, match="kind"):
        read_dialogs(path)
