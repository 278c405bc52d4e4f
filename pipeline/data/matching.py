"""Whether a text names an entity: whole words, optional case, never inside a longer name.

Shared by the relation data (a fact is left out where the read sentence already says its object)
and the evaluation (a generated answer names the object or the subject). The rules:

- names match as whole words, after accents are stripped ("Dali" is "Dalí"); a leading article
  of a name is optional ("the Netherlands" matches "Netherlands");
- case is ignored unless the caller keeps it (chemical symbols: "He" is not "he");
- an occurrence inside a longer name that the caller lists as a rival does not count ("America"
  inside "South America" is not a match for "America").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

_WORD = re.compile(r"\w+")
ARTICLES = frozenset({"a", "an", "the"})


def _fold(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    return "".join(c for c in text if not unicodedata.combining(c))


def tokens(text: str, case_sensitive: bool = False) -> list[str]:
    """The words of ``text``, accents stripped, lowercased unless ``case_sensitive``."""
    found = _WORD.findall(_fold(text).replace("_", " "))
    return found if case_sensitive else [w.lower() for w in found]


def name_tokens(name: str, case_sensitive: bool = False) -> list[str]:
    """A name's words without a leading article."""
    words = tokens(name, case_sensitive)
    if len(words) > 1 and words[0].lower() in ARTICLES:
        words = words[1:]
    return words


def _spans(text_words: list[str], name_words: list[str]) -> list[tuple[int, int]]:
    n = len(name_words)
    if not n:
        return []
    return [
        (i, i + n) for i in range(len(text_words) - n + 1) if text_words[i : i + n] == name_words
    ]


def names_in(
    text: str,
    names: Iterable[str],
    case_sensitive: bool = False,
    rivals: Iterable[str] = (),
) -> bool:
    """Whether ``text`` names any of ``names`` outside every occurrence of a longer rival.

    ``rivals`` are other names of the same kind (other objects of a relation): where one of them
    occurs and covers an occurrence of a name, that occurrence is the rival, not the name.
    """
    words = tokens(text, case_sensitive)
    blocked: list[tuple[int, int]] = []
    wanted = [name_tokens(n, case_sensitive) for n in names]
    for rival in rivals:
        rival_words = name_tokens(rival, case_sensitive)
        if rival_words in wanted:
            continue
        blocked.extend(_spans(words, rival_words))
    for name_words in wanted:
        for start, end in _spans(words, name_words):
            inside = any(
                b_start <= start and end <= b_end and (b_end - b_start) > (end - start)
                for b_start, b_end in blocked
            )
            if not inside:
                return True
    return False


class TextIndex:
    """A large text tokenized once, asked many times whether it mentions a name (no rivals)."""

    def __init__(self, text: str, case_sensitive: bool = False):
        self.case_sensitive = case_sensitive
        self.words = tokens(text, case_sensitive)
        self.vocabulary = set(self.words)

    def mentions(self, names: Iterable[str]) -> bool:
        for name in names:
            name_words = name_tokens(name, self.case_sensitive)
            if name_words and set(name_words) <= self.vocabulary:
                if _spans(self.words, name_words):
                    return True
        return False
