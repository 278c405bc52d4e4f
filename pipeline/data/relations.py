"""Feature-extraction items from relation facts (``data/relations.yaml``), as in the LatentQA paper.

Each relation has a ``question`` template and one or more ``sentence`` templates, both with a
``{subject}`` field, and a list of subject/object facts. An item's read dialog is one user turn,
a sentence that mentions the subject (nothing masked); the decoder is asked the question about
the subject, and it scores when the object appears in its first 20 generated tokens.

Accepted fact forms: ``{subject: S, object: O}`` (optionally ``aliases: [...]`` for the object),
``[S, O]``, or a mapping ``{S: O, ...}``.
"""

from __future__ import annotations

import hashlib
import os
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.data.schema import DataError


@dataclass(frozen=True)
class RelationItem:
    relation: str
    subject: str
    object: str
    sentence: str
    """The read dialog's only user turn."""
    question: str
    aliases: tuple[str, ...] = field(default=())
    """Other accepted spellings of the object."""

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.sentence}]

    @property
    def id(self) -> str:
        text = "\x1f".join((self.relation, self.subject, self.object, self.sentence))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Relation:
    name: str
    question: str
    sentences: tuple[str, ...]
    facts: tuple[tuple[str, str, tuple[str, ...]], ...]
    """(subject, object, aliases)."""


def _template(value: Any, file: str, index: int, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(file, index, where, "expected a non-empty template string")
    fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    if fields != {"subject"}:
        raise DataError(
            file,
            index,
            where,
            f"a template must use exactly the field {{subject}}, found {sorted(fields)}",
        )
    return value


def _text(value: Any, file: str, index: int, where: str) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise DataError(file, index, where, f"expected non-empty text, got {value!r}")
    return value.strip()


def _facts(raw: Any, file: str, index: int, where: str) -> list[tuple[str, str, tuple[str, ...]]]:
    if isinstance(raw, dict):
        raw = [[subject, obj] for subject, obj in raw.items()]
    if not isinstance(raw, list) or not raw:
        raise DataError(file, index, where, "expected a non-empty list of subject/object facts")
    facts = []
    for j, fact in enumerate(raw):
        at = f"{where}[{j}]"
        aliases: list[Any] = []
        if isinstance(fact, dict):
            if "subject" not in fact or "object" not in fact:
                raise DataError(file, index, at, "a fact needs 'subject' and 'object'")
            subject, obj = fact["subject"], fact["object"]
            aliases = fact.get("aliases") or []
        elif isinstance(fact, list | tuple) and len(fact) == 2:
            subject, obj = fact
        else:
            raise DataError(
                file,
                index,
                at,
                f"expected {{subject, object}} or [subject, object], got {str(fact)[:60]!r}",
            )
        facts.append(
            (
                _text(subject, file, index, f"{at}.subject"),
                _text(obj, file, index, f"{at}.object"),
                tuple(_text(a, file, index, f"{at}.aliases") for a in aliases),
            )
        )
    return facts


def load_relations(path: str | os.PathLike) -> list[Relation]:
    """Parse and check the relations file; errors name the file, the relation index and field."""
    path = Path(path)
    file = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(file, None, "<file>", "does not exist") from None
    except yaml.YAMLError as exc:
        raise DataError(file, None, "<yaml>", f"invalid YAML: {exc}") from None
    raw = data.get("relations") if isinstance(data, dict) else None
    if isinstance(raw, dict):
        raw = [{"name": name, **(body or {})} for name, body in raw.items()]
    if not isinstance(raw, list) or not raw:
        raise DataError(file, None, "relations", "expected a non-empty list of relations")
    relations = []
    for i, rel in enumerate(raw):
        if not isinstance(rel, dict):
            raise DataError(file, i, "<relation>", f"expected an object, got {type(rel).__name__}")
        name = _text(rel.get("name"), file, i, "name")
        question = _template(rel.get("question"), file, i, "question")
        sentences = rel.get("sentences", rel.get("sentence"))
        sentences = [sentences] if isinstance(sentences, str) else sentences
        if not isinstance(sentences, list) or not sentences:
            raise DataError(file, i, "sentences", "expected one or more sentence templates")
        sentences = [_template(s, file, i, f"sentences[{j}]") for j, s in enumerate(sentences)]
        facts_key = next((k for k in ("facts", "pairs", "subjects") if k in rel), "facts")
        facts = _facts(rel.get(facts_key), file, i, facts_key)
        relations.append(Relation(name, question, tuple(sentences), tuple(facts)))
    names = [r.name for r in relations]
    if len(set(names)) != len(names):
        raise DataError(file, None, "name", f"relation names repeat: {names}")
    return relations


def relation_items(
    relations: list[Relation], max_items: int | None = None, seed: int = 0
) -> list[RelationItem]:
    """Items balanced over relations (round robin over shuffled facts), at most ``max_items``.

    Each fact gets one of its relation's sentence templates, chosen by the seeded generator.
    """
    rng = random.Random(seed)
    queues = []
    for rel in relations:
        facts = list(rel.facts)
        rng.shuffle(facts)
        queues.append(
            [
                RelationItem(
                    rel.name,
                    subject,
                    obj,
                    rng.choice(rel.sentences).format(subject=subject),
                    rel.question.format(subject=subject),
                    aliases,
                )
                for subject, obj, aliases in facts
            ]
        )
    items: list[RelationItem] = []
    depth = max(len(q) for q in queues)
    for k in range(depth):
        for queue in queues:
            if k < len(queue):
                items.append(queue[k])
    return items if max_items is None else items[:max_items]
