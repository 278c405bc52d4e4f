"""Concept hits: does a free-text answer name the concept of a reference, in other words too?

Exact match under-reports answers that say the right thing differently ("a keeper of a
lighthouse" for "A retired lighthouse keeper."). A concept hit counts the reference's key words
(content words, stemmed) that the answer names, directly or through a synonym listed in
``data/synonyms.yaml``; it hits when at least half of them (rounded up) are named. Generic words
of the task ("user", "assistant", "persona", "goal") are never key words, so an answer cannot hit
by repeating the question.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from pipeline.data.schema import DataError
from pipeline.evaluation.scoring import words

STOPWORDS = frozenset(
    """a an the of to in on at for from with by about into over under and or but not no nor
    is are was were be been being am do does did has have had will would can could should may
    might must shall this that these those it its he she they them his her their our your my
    i you we me us who whom whose which what when where why how all any each every some more
    most very much many few one two same other such only just than too so as if then there here
    up down out off again once also get gets make makes keep keeps help helps use uses
    user users assistant assistants persona personas role goal goals answer answers reply
    replies person someone something thing things""".split()
)
_SUFFIXES = (
    ("ations", ""),
    ("ation", ""),
    ("ists", ""),
    ("ist", ""),
    ("ings", ""),
    ("ing", ""),
    ("ness", ""),
    ("ies", "y"),
    ("ied", "y"),
    ("men", "man"),
    ("ers", ""),
    ("er", ""),
    ("es", ""),
    ("ed", ""),
    ("ly", ""),
    ("s", ""),
)


def stem(word: str) -> str:
    """A deliberately small suffix stripper: "biologist", "biology" -> "biolog"."""
    for suffix, replacement in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)] + replacement
            break
    if len(word) > 4 and word[-1] in "ye":
        word = word[:-1]
    return word


def key_words(reference: str) -> list[str]:
    """The reference's content words, stemmed, in order, without repeats."""
    out: list[str] = []
    for word in words(reference):
        if word not in STOPWORDS and not word.isdigit():
            stemmed = stem(word)
            if stemmed not in out:
                out.append(stemmed)
    return out


def concept_hit(
    prediction: str, reference: str, synonyms: Mapping[str, Sequence[str]] | None = None
) -> bool:
    """Whether the prediction names at least half of the reference's key words (or synonyms)."""
    keys = key_words(reference)
    if not keys:
        return False
    said = {stem(w) for w in words(prediction)}
    by_stem: dict[str, list[list[str]]] = {}
    for word, alternatives in (synonyms or {}).items():
        for alternative in alternatives:
            by_stem.setdefault(stem(word.lower()), []).append([stem(w) for w in words(alternative)])
    named = sum(
        key in said or any(alt and all(w in said for w in alt) for alt in by_stem.get(key, []))
        for key in keys
    )
    return named >= math.ceil(len(keys) / 2)


def load_synonyms(path: str | os.PathLike) -> dict[str, list[str]]:
    """``word: [synonym, ...]`` from a YAML mapping; errors name the file and the entry."""
    file = str(path)
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(file, None, "<file>", f"unreadable synonyms file: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(file, None, "<top level>", "expected a mapping word: [synonyms]")
    out = {}
    for word, alternatives in data.items():
        if not isinstance(word, str) or not isinstance(alternatives, list):
            raise DataError(file, None, str(word), "expected a word mapped to a list of synonyms")
        if not all(isinstance(a, str) and a.strip() for a in alternatives):
            raise DataError(file, None, word, "synonyms must be non-empty strings")
        out[word.lower()] = list(alternatives)
    return out
