"""Whole-word name matching: the rules feature extraction and subject identification score by."""

from __future__ import annotations

import pytest

from pipeline.data.matching import TextIndex, names_in


@pytest.mark.parametrize(
    "text, names, case, rivals, expected",
    [
        ("The capital is Paris.", ["Paris"], False, [], True),
        ("Parisian cafes are lovely.", ["Paris"], False, [], False),  # whole words only
        ("the symbol is He", ["He"], True, [], True),
        ("he said it is helium", ["He"], True, [], False),  # case kept: "he" is not "He"
        ("It is Co.", ["Co"], True, [], True),
        ("the company co-founded it", ["Co"], True, [], False),
        ("It is in South America.", ["America"], False, ["South America"], False),
        ("South America, then America.", ["America"], False, ["South America"], True),
        ("North America", ["North America", "America"], False, ["North America"], True),
        ("It lies in the Netherlands.", ["the Netherlands"], False, [], True),
        ("It lies in Netherlands.", ["the Netherlands"], False, [], True),  # article optional
        ("Salvador Dali painted it", ["Dalí"], False, [], True),  # accents folded
        ("a string quartet", ["strings", "string"], False, [], True),
    ],
)
def test_names_in(text, names, case, rivals, expected):
    assert names_in(text, names, case, rivals) is expected


def test_text_index_finds_multiword_names_and_ignores_fragments():
    index = TextIndex("We drove past the Eiffel Tower and a tall tower in Rome.")
    assert index.mentions(["Eiffel Tower"])
    assert index.mentions(["rome"])
    assert not index.mentions(["Tower Bridge"])
    assert not index.mentions(["Eiff"])
