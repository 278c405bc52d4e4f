"""Relation QA training rows: training relations only, questions that never name the subject."""

from __future__ import annotations

import pytest
from conftest import REPO

from pipeline.core.graph import experiment_graph
from pipeline.data.matching import names_in
from pipeline.data.relation_qa import TRAIN_RELATIONS, relation_rows
from pipeline.data.relations import load_relations, select
from pipeline.data.schema import validate_records
from pipeline.evaluation.params import EVAL_RELATIONS

RELATIONS = load_relations(REPO / "data" / "relations.yaml")


def test_rows_read_sentences_and_ask_by_type_only():
    chosen = select(RELATIONS, TRAIN_RELATIONS, "relations")
    rows = validate_records(relation_rows(chosen, 2, seed=0), "relation_qa")
    assert len(rows) == 2 * sum(len(r.facts) for r in chosen)
    assert not set(TRAIN_RELATIONS) & set(EVAL_RELATIONS)
    for row in rows:
        relation, subject = row["label"].split(":", 1)
        assert relation in TRAIN_RELATIONS
        sentence = row["messages"][0]["content"]
        assert names_in(sentence, [subject])
        for qa in row["qa"]:
            assert not names_in(qa["question"], [subject])
        assert row["qa"][1]["answer"].rstrip(".").lower() == subject.lower()
    assert rows == validate_records(relation_rows(chosen, 2, seed=0), "relation_qa")


def test_the_graph_refuses_training_on_an_evaluated_relation(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # a model folder is fingerprinted, not loaded
    config = {
        "model": {"source": "local", "name": str(tmp_path)},
        "data": {"relation_qa": {"relations": ["country_capital", "book_author"]}},
        "train": {"read_layers": [1]},
    }
    with pytest.raises(ValueError, match=r"\['book_author'\] are both trained on"):
        experiment_graph("x", config, root=REPO)
