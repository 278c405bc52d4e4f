"""The statements stage: contrast pairs of a true fact and a corrupted copy, split by pair."""

from __future__ import annotations

import pytest
from conftest import REPO

from pipeline.core import stage
from pipeline.data.relations import load_relations
from pipeline.data.schema import read_dialogs
from pipeline.data.statements import StatementParams, contrast_pairs, is_true, run, split_of

RELATIONS = REPO / "data" / "relations.yaml"


def test_pairs_are_one_true_one_corrupted_statement_sharing_label_split_and_sentence():
    relations = load_relations(RELATIONS)
    rows = contrast_pairs(relations, StatementParams(max_facts_per_relation=5))
    assert len(rows) % 2 == 0 and len(rows) >= 2 * 5 * (len(relations) - 1)
    objects = {f"{r.name}:{f.subject}": f.object for r in relations for f in r.facts}
    clozes = {r.name: r.cloze for r in relations}
    for true_row, false_row in zip(rows[::2], rows[1::2], strict=True):
        assert true_row["label"] == false_row["label"] and true_row["split"] == false_row["split"]
        true_text = true_row["messages"][0]["content"]
        false_text = false_row["messages"][0]["content"]
        relation = true_row["label"].split(":")[0]
        obj = objects[true_row["label"]]
        assert true_text.endswith(f"{clozes[relation]} {obj}.")
        assert not false_text.endswith(f" {obj}.")
        # The same read sentence: only the object after the cloze differs.
        assert true_text.rsplit(clozes[relation], 1)[0] == false_text.rsplit(clozes[relation], 1)[0]
        assert true_row["qa"][0]["answer"] == "Yes." and false_row["qa"][0]["answer"] == "No."


def test_split_is_a_stable_hash_of_the_label_with_the_given_shares():
    labels = [f"rel:{i}" for i in range(2000)]
    splits = [split_of(label, 0, 0.2, 0.3) for label in labels]
    assert splits == [split_of(label, 0, 0.2, 0.3) for label in labels]
    share = {s: splits.count(s) / len(splits) for s in ("train", "validation", "eval")}
    assert abs(share["eval"] - 0.3) < 0.04 and abs(share["validation"] - 0.2) < 0.04
    assert splits != [split_of(label, 1, 0.2, 0.3) for label in labels]


def test_stage_writes_dialogs_in_the_schema(tmp_path):
    info: dict = {}
    run(StatementParams(relations=["country_capital"]), {"relations": RELATIONS}, tmp_path, info)
    rows = read_dialogs(tmp_path / "dialogs.parquet")
    assert len(rows) == 2 * info["pairs"] and sum(map(is_true, rows)) == info["pairs"]
    assert {r["kind"] for r in rows} == {"text"} and {r["n_masked_turns"] for r in rows} == {0}


@pytest.mark.parametrize(
    "values", [{"eval_fraction": 0.8, "validation_fraction": 0.3}, {"max_facts_per_relation": 1}]
)
def test_bad_params_are_refused(values):
    with pytest.raises(stage.ParamsError):
        stage.build_params(StatementParams, values)
