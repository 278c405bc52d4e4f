"""Stage `relation_qa`: reading-curriculum dialogs from the *training* relations' facts.

Input: ``relations`` (``data/relations.yaml``). Each fact of the named relations, in a few of its
relation's sentences, becomes one read dialog (the sentence as a user turn, nothing masked) with
two questions that name only the subject's type: its object ("What is the capital of the country
mentioned?") and its subject ("Which country is mentioned?"). Rows are of kind ``text``, source
``relation_qa`` and split ``train``; relations evaluated on must not be named here (the stage
graph refuses an overlap with ``evaluate.eval_relations``).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pipeline.core import stage
from pipeline.core.stage import bounded
from pipeline.data.relations import is_echo, load_relations, select
from pipeline.data.schema import as_answer, write_dialogs

log = logging.getLogger("pipeline.data.relation_qa")
SOURCE = "relation_qa"
TRAIN_RELATIONS = (
    "country_capital",
    "country_continent",
    "animal_class",
    "city_country",
    "person_occupation",
)


@dataclass
class RelationQAParams:
    """Which relations train the decoder to read entities, and in how many sentences each."""

    MIX_NAME: ClassVar[str] = SOURCE
    """What ``train.mix`` calls this stage's rows (their ``source`` up to any colon)."""

    relations: list[str] = field(default_factory=lambda: list(TRAIN_RELATIONS))
    """Relations of ``data/relations.yaml`` to train on (disjoint from the evaluated ones)."""
    sentences_per_fact: int = bounded(2, minimum=1)
    """Read sentences per fact (distinct templates of its relation, seeded)."""
    seed: int = 0
    """Seed of the sentence choice."""

    def __post_init__(self) -> None:
        if not self.relations:
            raise stage.ParamsError("relation_qa: relations must name at least one relation")


def relation_rows(relations, sentences_per_fact: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for rel in relations:
        for fact in rel.facts:
            sentences = [s.format(subject=fact.subject) for s in rel.sentences]
            usable = [s for s in sentences if not is_echo(rel, fact, s)]
            for sentence in rng.sample(usable, min(sentences_per_fact, len(usable))):
                rows.append(
                    {
                        "label": f"{rel.name}:{fact.subject}",
                        "kind": "text",
                        "messages": [{"role": "user", "content": sentence}],
                        "n_masked_turns": 0,
                        "qa": [
                            {"question": rel.question, "answer": as_answer(fact.object)},
                            {"question": rel.subject_question, "answer": as_answer(fact.subject)},
                        ],
                        "source": SOURCE,
                        "split": "train",
                    }
                )
    return rows


def run(params: RelationQAParams, inputs: dict[str, Path], workdir: Path, info: dict) -> None:
    relations = select(load_relations(inputs["relations"]), params.relations, "relations")
    rows = write_dialogs(
        relation_rows(relations, params.sentences_per_fact, params.seed),
        workdir / "dialogs.parquet",
    )
    info.update(rows=len(rows), relations=params.relations)
    log.info("wrote %d relation dialogs from %d relations", len(rows), len(relations))


if __name__ == "__main__":
    stage.main("relation_qa", RelationQAParams, run, needs=("relations",))
