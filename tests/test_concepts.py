"""Concept hits: an answer names the reference's concept in its own words."""

from __future__ import annotations

import pytest

from pipeline.data.schema import DataError
from pipeline.evaluation.concepts import concept_hit, key_words, load_synonyms, stem

SYNONYMS = {"captain": ["skipper"], "vegetarian": ["meat free"]}


def test_stems_join_word_forms():
    assert stem("biologist") == stem("biology") == stem("biologists")
    assert stem("fishermen") == stem("fisherman")
    assert stem("keeper") == stem("keeping")


def test_key_words_drop_task_words_and_articles():
    assert key_words("A retired lighthouse keeper.") == ["retir", "lighthous", "keep"]
    assert key_words("To get the user to cycle more.") == ["cycl"]
    assert key_words("The user and the assistant.") == []


@pytest.mark.parametrize(
    "prediction, reference, hit",
    [
        ("A lighthouse keeper.", "A retired lighthouse keeper.", True),  # 2 of 3 key words
        ("A retired teacher.", "A retired lighthouse keeper.", False),  # 1 of 3
        ("a skipper of a big ship", "A container ship captain.", True),  # synonym + word
        ("A ship.", "A container ship captain.", False),
        ("A meat free diet.", "To promote a vegetarian diet.", True),  # phrase synonym
        ("To help the user cycle.", "To get the user to cycle more.", True),
        ("To help the user.", "To get the user to cycle more.", False),  # task words never hit
        ("", "A sushi chef.", False),
    ],
)
def test_concept_hit(prediction, reference, hit):
    assert concept_hit(prediction, reference, SYNONYMS) is hit


def test_the_project_synonyms_load(tmp_path):
    from conftest import REPO

    synonyms = load_synonyms(REPO / "data" / "synonyms.yaml")
    assert "captain" in synonyms and all(synonyms.values())
    bad = tmp_path / "bad.yaml"
    bad.write_text("captain: skipper\n")
    with pytest.raises(DataError, match="bad.yaml.*captain"):
        load_synonyms(bad)
