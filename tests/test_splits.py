"""The train / validation / eval split by label: hash-ranked shares, fixed eval labels, texts."""

from __future__ import annotations

from pipeline.data.splits import assign_splits, split_rows


def row(label: str, kind: str = "control", split: str = "train") -> dict:
    return {"label": label, "kind": kind, "split": split}


def test_assign_splits_modes():
    labels = {f"l{i}" for i in range(10)}
    split = assign_splits(labels, set(), 0.3, None, seed=0)
    assert sum(v == "eval" for v in split.values()) == 3
    split = assign_splits(labels, {"l1"}, 0.0, ["l2", "missing"], seed=0)
    assert {k for k, v in split.items() if v == "eval"} == {"l1", "l2"}
    assert set(assign_splits(labels, set(), 0.0, None, 0).values()) == {"train"}
    assert set(assign_splits({"a", "b"}, set(), 0.01, None, 0).values()) == {"train", "eval"}


def test_eval_labels_do_not_depend_on_the_validation_share():
    labels = {f"l{i}" for i in range(40)}
    plain = assign_splits(labels, set(), 0.25, None, seed=5)
    with_val = assign_splits(labels, set(), 0.25, None, seed=5, validation_fraction=0.2)
    assert {k for k, v in plain.items() if v == "eval"} == {
        k for k, v in with_val.items() if v == "eval"
    }
    assert sum(v == "validation" for v in with_val.values()) == 8


def test_split_rows_splits_whole_labels_and_keeps_what_a_source_fixed_to_eval():
    rows = [row(f"c{i}") for i in range(20) for _ in range(3)]
    rows += [row("c-held", split="eval"), row("c-held")]
    rows += [row(f"t{i}", kind="text") for i in range(10)] + [row("t-held", "text", "eval")]
    summary = split_rows(rows, 0.2, 0.1, None, seed=1, keep_split=True)
    assert summary.fixed_eval == {"c-held"}
    assert all(r["split"] == "eval" for r in rows if r["label"] in {"c-held", "t-held"})
    texts = {r["split"] for r in rows if r["kind"] == "text" and r["label"] != "t-held"}
    assert texts == {"train", "validation"}  # texts are evaluated elsewhere
    # 20 free control labels: 4 eval and 2 validation, beside the fixed one.
    controls = {r["label"]: r["split"] for r in rows if r["kind"] == "control"}
    assert sorted(controls.values()).count("eval") == 5
    assert sorted(controls.values()).count("validation") == 2
    for label in {r["label"] for r in rows}:
        assert len({r["split"] for r in rows if r["label"] == label}) == 1, label
    assert summary.labels["eval"] == {k for k, v in controls.items() if v == "eval"} | {"t-held"}
    assert summary.changed == 3 * 6 + 1  # the 6 labels moved out of train, and c-held's twin


def test_without_keep_split_a_source_eval_label_is_split_like_the_others():
    rows = [row(f"c{i}", split="eval") for i in range(10)]
    summary = split_rows(rows, 0.0, 0.0, None, seed=0, keep_split=False)
    assert summary.fixed_eval == set() and {r["split"] for r in rows} == {"train"}
    assert summary.changed == 10
