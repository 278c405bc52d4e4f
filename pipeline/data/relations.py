"""Relation facts (``data/relations.yaml``): read sentences that mention a subject, and questions
about it that never name it (docs/design.md §7.4, §7.5).

Each relation has a subject type ("country"), a ``question`` about the subject's object that
names only the type ("What is the capital of the country mentioned?"), a ``subject_question``
("Which country is mentioned?"), a ``cloze`` whose next word is the object (for a logit lens),
sentence templates with one ``{subject}`` field, and its facts. The subject appears only in the
read sentence, so a model that does not read the activations cannot know it. A fact whose read
sentence already says its object (an echo: "the Czech Republic" -> "Czech") is left out.

Relations used for training and for evaluation are disjoint and named in the config (the
``relation_qa`` data stage and the evaluate stage; the stage graph refuses an overlap).
"""

from __future__ import annotations

import hashlib
import os
import random
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.data.matching import names_in
from pipeline.data.schema import DataError


@dataclass(frozen=True)
class Fact:
    subject: str
    object: str
    subject_aliases: tuple[str, ...] = ()
    """Other accepted spellings of the subject."""
    aliases: tuple[str, ...] = ()
    """Other accepted spellings of the object."""

    @property
    def subject_names(self) -> tuple[str, ...]:
        return (self.subject, *self.subject_aliases)

    @property
    def object_names(self) -> tuple[str, ...]:
        return (self.object, *self.aliases)


@dataclass(frozen=True)
class Relation:
    name: str
    subject_type: str
    question: str
    subject_question: str
    cloze: str
    case_sensitive: bool
    """Objects are matched with their case (chemical symbols)."""
    sentences: tuple[str, ...]
    facts: tuple[Fact, ...]

    def objects(self) -> list[str]:
        """Every object name of the relation: the rivals a matched object must not sit inside."""
        return sorted({name for fact in self.facts for name in fact.object_names})

    def subjects(self) -> list[str]:
        return sorted({name for fact in self.facts for name in fact.subject_names})


@dataclass(frozen=True)
class RelationItem:
    """One fact in one read sentence."""

    relation: Relation
    fact: Fact
    sentence: str
    """The read dialog's only user turn."""

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.sentence}]

    @property
    def id(self) -> str:
        parts = (self.relation.name, self.fact.subject, self.fact.object, self.sentence)
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def is_echo(relation: Relation, fact: Fact, sentence: str) -> bool:
    """Whether the read sentence already names the fact's object (scoring it would test nothing)."""
    return names_in(sentence, fact.object_names, relation.case_sensitive)


# --- loading --------------------------------------------------------------------------------


def _text(value: Any, file: str, index: int, where: str) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise DataError(file, index, where, f"expected non-empty text, got {value!r}")
    return value.strip()


def _names(value: Any, file: str, index: int, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise DataError(file, index, where, f"expected a list of names, got {value!r}")
    return tuple(_text(v, file, index, f"{where}[{j}]") for j, v in enumerate(value))


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def _sentence(value: Any, file: str, index: int, where: str) -> str:
    text = _text(value, file, index, where)
    try:
        fields = _fields(text)
    except ValueError as exc:
        raise DataError(file, index, where, f"not a template: {exc}") from None
    if fields != {"subject"} or text.count("{subject}") != 1:
        raise DataError(file, index, where, "a sentence template needs exactly one {subject}")
    return text


def _fact(raw: Any, file: str, index: int, where: str) -> Fact:
    if not isinstance(raw, dict) or "subject" not in raw or "object" not in raw:
        raise DataError(file, index, where, "a fact is an object with 'subject' and 'object'")
    unknown = sorted(set(raw) - {"subject", "object", "subject_aliases", "aliases"})
    if unknown:
        raise DataError(file, index, f"{where}.{unknown[0]}", "unknown field")
    return Fact(
        _text(raw["subject"], file, index, f"{where}.subject"),
        _text(raw["object"], file, index, f"{where}.object"),
        _names(raw.get("subject_aliases"), file, index, f"{where}.subject_aliases"),
        _names(raw.get("aliases"), file, index, f"{where}.aliases"),
    )


FIELDS = {"name", "subject_type", "question", "subject_question", "cloze", "case_sensitive"}
FIELDS |= {"sentences", "facts"}


def _relation(raw: Any, file: str, i: int) -> Relation:
    if not isinstance(raw, dict):
        raise DataError(file, i, "<relation>", f"expected an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - FIELDS)
    if unknown:
        raise DataError(file, i, unknown[0], f"unknown field; expected {sorted(FIELDS)}")
    questions = {}
    for key in ("question", "subject_question", "cloze"):
        text = _text(raw.get(key), file, i, key)
        if "{" in text or "}" in text:
            raise DataError(
                file, i, key, "must not contain a template field: questions name only the type"
            )
        questions[key] = text
    sentences = raw.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise DataError(file, i, "sentences", "expected a non-empty list of sentence templates")
    facts = raw.get("facts")
    if not isinstance(facts, list) or not facts:
        raise DataError(file, i, "facts", "expected a non-empty list of facts")
    case = raw.get("case_sensitive", False)
    if not isinstance(case, bool):
        raise DataError(file, i, "case_sensitive", f"expected true or false, got {case!r}")
    return Relation(
        name=_text(raw.get("name"), file, i, "name"),
        subject_type=_text(raw.get("subject_type"), file, i, "subject_type"),
        case_sensitive=case,
        sentences=tuple(_sentence(s, file, i, f"sentences[{j}]") for j, s in enumerate(sentences)),
        facts=tuple(_fact(f, file, i, f"facts[{j}]") for j, f in enumerate(facts)),
        **questions,
    )


def load_relations(path: str | os.PathLike) -> list[Relation]:
    """Parse and check the relations file; errors name the file, the relation index and field."""
    path = Path(path)
    file = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(file, None, "<file>", "does not exist") from None
    except UnicodeDecodeError as exc:
        raise DataError(file, None, "<file>", f"not UTF-8 text: {exc.reason}") from None
    except yaml.YAMLError as exc:
        raise DataError(file, None, "<yaml>", f"invalid YAML: {exc}") from None
    raw = data.get("relations") if isinstance(data, dict) else None
    if not isinstance(raw, list) or not raw:
        raise DataError(file, None, "relations", "expected a non-empty list of relations")
    relations = [_relation(rel, file, i) for i, rel in enumerate(raw)]
    names = [r.name for r in relations]
    if len(set(names)) != len(names):
        raise DataError(file, None, "name", f"relation names repeat: {names}")
    subjects = [s for r in relations for s in r.subjects()]
    for i, rel in enumerate(relations):
        for key in ("question", "subject_question", "cloze"):
            if names_in(getattr(rel, key), subjects):
                raise DataError(file, i, key, "names a subject: it must name only the type")
    return relations


def select(relations: list[Relation], names: Iterable[str], where: str) -> list[Relation]:
    """The relations called ``names``, in that order; an unknown name is an error."""
    by_name = {r.name: r for r in relations}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(f"{where}: unknown relations {missing}; known: {sorted(by_name)}")
    return [by_name[n] for n in names]


def relation_items(
    relations: list[Relation], max_items: int | None = None, seed: int = 0
) -> list[RelationItem]:
    """Items balanced over relations (round robin over shuffled facts), at most ``max_items``.

    Each fact gets one of its relation's sentence templates, chosen by the seeded generator
    among those that do not echo the object; a fact that every template echoes is left out.
    """
    rng = random.Random(seed)
    queues = []
    for rel in relations:
        facts = list(rel.facts)
        rng.shuffle(facts)
        queue = []
        for fact in facts:
            sentences = [s.format(subject=fact.subject) for s in rel.sentences]
            usable = [s for s in sentences if not is_echo(rel, fact, s)]
            if usable:
                queue.append(RelationItem(rel, fact, rng.choice(usable)))
        queues.append(queue)
    items: list[RelationItem] = []
    depth = max((len(q) for q in queues), default=0)
    for k in range(depth):
        for queue in queues:
            if k < len(queue):
                items.append(queue[k])
    return items if max_items is None else items[:max_items]
