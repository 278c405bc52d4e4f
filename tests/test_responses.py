"""Curation's responses: strict JSON items, and the read dialogs and labels made from them."""

from __future__ import annotations

import json

from pipeline.curation.params import CurateParams
from pipeline.curation.responses import item_rows, make_label, parse_item
from pipeline.data.schema import validate_record


def test_parse_item_is_strict():
    good = {
        "label": "x",
        "control": "c",
        "acknowledgement": "a",
        "dialogs": [{"user": "u", "assistant": "v"}],
        "qa": [{"question": "q", "answer": "a"}],
    }
    text = json.dumps(good)
    assert parse_item({"content": text})[0] == good
    assert parse_item({"content": f"```json\n{text}\n```"})[0] == good
    assert parse_item({"content": None, "refusal": "No."})[1] == "refusal"
    assert parse_item({"content": "  "})[1] == "empty"
    assert parse_item({"content": text[:30], "finish_reason": "length"})[1] == "truncated"
    assert parse_item({"content": text[:30], "finish_reason": "stop"})[1] == "malformed_json"
    assert parse_item({"content": "I'm sorry, but I can't help with that."})[1] == "refusal"
    # Python literals are not JSON, and nothing is ever evaluated.
    assert parse_item({"content": str(good)})[1] == "malformed_json"
    for broken in (
        {**good, "qa": []},
        {**good, "extra": 1},
        {**good, "control": " "},
        {k: v for k, v in good.items() if k != "label"},
    ):
        assert parse_item({"content": json.dumps(broken)})[1] == "schema"


def test_item_rows_build_every_kind(tmp_path):
    item = {
        "label": "x",
        "control": "Be a potter.",
        "acknowledgement": "Sure.",
        "dialogs": [
            {"user": "Hi?", "assistant": "Clay!"},
            {"user": "Tea?", "assistant": "Kiln."},
            {"user": "Cut?", "assistant": "No."},
        ],
        "qa": [{"question": "Who?", "answer": "A potter."}] * 3,
    }
    p = CurateParams(
        kinds=["control", "system", "stimulus", "stimulus_completion"],
        model="m",
        dialogs_per_sample=2,
        qa_per_sample=1,
    )
    rows = [validate_record(r, "<t>", i) for i, r in enumerate(item_rows(item, "persona-x", p))]
    assert [r["kind"] for r in rows] == ["control"] + ["system"] * 2 + ["stimulus"] * 2 + [
        "stimulus_completion"
    ] * 2
    by_kind = {r["kind"]: r for r in reversed(rows)}  # the first row of each kind
    assert [m["role"] for m in by_kind["system"]["messages"]] == ["system", "user", "assistant"]
    assert [m["role"] for m in by_kind["stimulus"]["messages"]] == ["user", "assistant", "user"]
    assert by_kind["stimulus_completion"]["messages"][-1]["content"] == "Clay!"
    assert [r["n_masked_turns"] for r in rows] == [0, 1, 1, 2, 2, 2, 2]
    assert all(len(r["qa"]) == 1 and r["source"] == "openai:m" for r in rows)


def test_labels_are_family_slugs_and_never_merge_distinct_controls():
    used: dict[str, str] = {}
    assert (
        make_label("persona", "Retired Glass-Blower!", "c1", used) == "persona-retired-glass-blower"
    )
    assert (
        make_label("persona", "retired glass blower", "c1", used) == "persona-retired-glass-blower"
    )
    assert (
        make_label("persona", "retired glass blower", "c2", used)
        == "persona-retired-glass-blower-2"
    )
    assert make_label("goal", "goal-save water", "c3", used) == "goal-save-water"
