"""Relation facts: subject-free questions, echo exclusion, and the project's data file."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO

from pipeline.data.matching import names_in
from pipeline.data.relations import load_relations, relation_items, select
from pipeline.data.schema import DataError
from pipeline.evaluation.params import EVAL_RELATIONS

RELATIONS = REPO / "data" / "relations.yaml"


def relation(**overrides):
    base = {
        "name": "country_capital",
        "subject_type": "country",
        "question": "What is the capital of the country mentioned?",
        "subject_question": "Which country is mentioned?",
        "cloze": "The capital of that country is",
        "case_sensitive": False,
        "sentences": ["We talked about {subject} all night."],
        "facts": [{"subject": "France", "object": "Paris"}],
    }
    return {**base, **overrides}


def write(tmp_path, *relations):
    path = tmp_path / "relations.yaml"
    path.write_text(yaml.safe_dump({"relations": list(relations)}))
    return path


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"question": "What is the capital of {subject}?"}, "question"),
        ({"subject_question": "Is France mentioned?"}, "subject_question"),
        ({"cloze": "The capital of France is"}, "cloze"),
        ({"sentences": ["No subject here."]}, "sentences[0]"),
        ({"sentences": ["{subject} and {subject}"]}, "sentences[0]"),
        ({"facts": [{"subject": "France"}]}, "facts[0]"),
        ({"facts": [{"subject": "France", "object": "Paris", "capital": 1}]}, "facts[0].capital"),
        ({"case_sensitive": "yes"}, "case_sensitive"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_relations_are_refused_naming_file_record_and_field(tmp_path, overrides, field):
    path = write(tmp_path, relation(**overrides))
    with pytest.raises(DataError) as info:
        load_relations(path)
    assert info.value.file == str(path) and info.value.field == field and info.value.record == 0


def test_a_question_naming_another_relations_subject_is_refused(tmp_path):
    other = relation(name="city_country", subject_type="city", facts=[
        {"subject": "Lyon", "object": "France"}])  # fmt: skip
    path = write(tmp_path, relation(question="What is the capital near Lyon?"), other)
    with pytest.raises(DataError, match="names a subject"):
        load_relations(path)


def test_echo_facts_are_left_out(tmp_path):
    facts = [
        {"subject": "the Czech Republic", "object": "Czech"},  # the object is in the subject
        {"subject": "France", "object": "Paris"},
    ]
    sentences = ["We talked about {subject} all night.", "Paris and {subject}."]
    rel = load_relations(write(tmp_path, relation(facts=facts, sentences=sentences)))
    items = relation_items(rel, seed=0)
    assert [i.fact.subject for i in items] == ["France"]
    assert items[0].sentence == "We talked about France all night."  # never the echoing one


def test_items_are_balanced_over_relations_and_seeded(tmp_path):
    a = relation(facts=[{"subject": s, "object": "X"} for s in ("France", "Spain", "Italy")])
    b = relation(name="b", subject_type="city",
                 facts=[{"subject": s, "object": "Y"} for s in ("Lyon", "Porto")])  # fmt: skip
    relations = load_relations(write(tmp_path, a, b))
    items = relation_items(relations, max_items=4, seed=1)
    assert [i.relation.name for i in items] == ["country_capital", "b"] * 2
    assert items == relation_items(relations, max_items=4, seed=1)
    with pytest.raises(ValueError, match="unknown relations"):
        select(relations, ["country_capital", "nope"], "eval_relations")


def test_the_project_relations():
    relations = load_relations(RELATIONS)
    assert len(relations) >= 10
    subjects = [s for r in relations for f in r.facts for s in f.subject_names]
    assert len({s.lower() for s in subjects}) == len(subjects), "a subject repeats"
    for rel in relations:
        assert len(rel.facts) >= 20, rel.name
        for text in (rel.question, rel.subject_question, rel.cloze):
            assert "{subject}" not in text
            assert not names_in(text, subjects), (rel.name, text)
        for fact in rel.facts:
            # No echo: no object inside its own subject.
            assert not names_in(" ".join(fact.subject_names), fact.object_names), fact
    assert sum(len(relation_items([r])) for r in relations) == sum(len(r.facts) for r in relations)
    names = {r.name for r in relations}
    assert set(EVAL_RELATIONS) <= names
    assert len(names - set(EVAL_RELATIONS)) >= 3  # relations left to train on


def test_symbols_keep_their_case():
    symbols = next(r for r in load_relations(RELATIONS) if r.name == "element_symbol")
    assert symbols.case_sensitive
