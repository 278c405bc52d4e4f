"""Stage `statements`: true and false statements built from the relation facts, as contrast pairs.

Input: ``relations`` (``data/relations.yaml``). Each chosen fact gives one read sentence (a template
of its relation that does not already name the object), completed by the relation's ``cloze`` and
the object: "My cousin just got back from France and loved every minute of it. The capital of that
country is Paris." Its corrupted copy ends with the object of another fact of the same relation
("... is Madrid."). The two form a contrast pair: exactly one of them is true. Both rows carry the
pair's label (``<relation>:<subject>``), so the train / validation / eval split (by a seeded hash
of the label) never separates a pair. Rows are of kind ``text``, source ``statements``, nothing
masked, with one question whose answer says whether the statement is true ("Yes." / "No.").
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pipeline.core import stage
from pipeline.core.stage import bounded
from pipeline.data.matching import names_in
from pipeline.data.relations import Relation, is_echo, load_relations, select
from pipeline.data.schema import write_dialogs

log = logging.getLogger("pipeline.data.statements")
SOURCE = "statements"
TRUE_ANSWER, FALSE_ANSWER = "Yes.", "No."


@dataclass
class StatementParams:
    """Which facts become contrast pairs, and how the pairs are split."""

    MIX_NAME: ClassVar[str] = SOURCE
    """What ``train.mix`` calls this stage's rows (their ``source`` up to any colon)."""

    relations: list[str] | None = None
    """Relations of ``data/relations.yaml`` to draw facts from (null: all of them)."""
    max_facts_per_relation: int = bounded(25, minimum=2)
    """At most this many facts per relation (seeded choice), one contrast pair each."""
    validation_fraction: float = bounded(0.2, minimum=0)
    """Share of the pairs in the validation split (choosing layers and settings)."""
    eval_fraction: float = bounded(0.3, minimum=0)
    """Share of the pairs in the eval split (reported only)."""
    question: str = "Is the statement true? Answer yes or no."
    """The question about each statement (the decoder's, and the dialogs' QA pair)."""
    seed: int = 0
    """Seed of the fact, sentence and corruption choices and of the split."""

    def __post_init__(self) -> None:
        if self.validation_fraction + self.eval_fraction >= 1:
            raise stage.ParamsError(
                f"statements: validation_fraction {self.validation_fraction} and eval_fraction "
                f"{self.eval_fraction} must leave a train share"
            )
        if self.relations is not None and not self.relations:
            raise stage.ParamsError("statements: relations must be null (all) or name some")


def split_of(label: str, seed: int, validation: float, eval_share: float) -> str:
    """A pair's split from a seeded hash of its label: uniform in [0, 1), cut by the shares."""
    digest = hashlib.sha256(f"{seed}\x1f{label}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < eval_share:
        return "eval"
    return "validation" if u < eval_share + validation else "train"


def statement(sentence: str, relation: Relation, obj: str) -> str:
    return f"{sentence} {relation.cloze} {obj}."


def contrast_pairs(relations: list[Relation], params: StatementParams) -> list[dict[str, Any]]:
    """Rows of true and corrupted statements, the true one first in each pair."""
    rng = random.Random(params.seed)
    rows = []
    for rel in relations:
        facts = list(rel.facts)
        rng.shuffle(facts)
        for fact in facts[: params.max_facts_per_relation]:
            rivals = [
                f.object
                for f in rel.facts
                if not names_in(f.object, fact.object_names, rel.case_sensitive)
                and not names_in(fact.object, (f.object,), rel.case_sensitive)
            ]
            if not rivals:
                continue
            wrong = rng.choice(sorted(set(rivals)))
            sentences = [s.format(subject=fact.subject) for s in rel.sentences]
            usable = [
                s
                for s in sentences
                if not is_echo(rel, fact, s) and not names_in(s, (wrong,), rel.case_sensitive)
            ]
            if not usable:
                continue
            sentence = rng.choice(usable)
            label = f"{rel.name}:{fact.subject}"
            split = split_of(label, params.seed, params.validation_fraction, params.eval_fraction)
            for obj, answer in ((fact.object, TRUE_ANSWER), (wrong, FALSE_ANSWER)):
                rows.append(
                    {
                        "label": label,
                        "kind": "text",
                        "messages": [{"role": "user", "content": statement(sentence, rel, obj)}],
                        "n_masked_turns": 0,
                        "qa": [{"question": params.question, "answer": answer}],
                        "source": SOURCE,
                        "split": split,
                    }
                )
    return rows


def is_true(row: dict[str, Any]) -> bool:
    """Whether a statement row is the true member of its pair (its answer says so)."""
    answer = row["qa"][0]["answer"]
    if answer not in (TRUE_ANSWER, FALSE_ANSWER):
        raise ValueError(f"statement {row['id']}: answer {answer!r} is neither Yes. nor No.")
    return answer == TRUE_ANSWER


def run(params: StatementParams, inputs: dict[str, Path], workdir: Path, info: dict) -> None:
    relations = load_relations(inputs["relations"])
    if params.relations is not None:
        relations = select(relations, params.relations, "statements.relations")
    rows = write_dialogs(contrast_pairs(relations, params), workdir / "dialogs.parquet")
    by_split: dict[str, int] = {}
    for row in rows[::2]:
        by_split[row["split"]] = by_split.get(row["split"], 0) + 1
    info.update(pairs=len(rows) // 2, pairs_by_split=by_split)
    log.info("wrote %d contrast pairs (%s)", len(rows) // 2, by_split)


if __name__ == "__main__":
    stage.main("statements", StatementParams, run, needs=("relations",))
