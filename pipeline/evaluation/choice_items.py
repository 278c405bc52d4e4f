"""Forced-choice metrics: the truth of relation statements, and classification of public text.

Each item offers two candidate answers, exactly one right (chance 0.5); the decoder's pick is the
candidate whose token it prefers at the first position where the two answers differ
(``reading.choice_scores``: one forward of their shared prefix; answers that never differ in one
token are compared by their whole log-likelihood per token). ``choice`` metrics are scored under
the four conditions like every other metric. A decoder that always prefers one answer scores
exactly chance on the balanced truth items whatever it reads, so truth is also reported
``debiased`` (``scoring.debiased_scores``): each condition's own preference for "Yes" removed;
and ``pairwise`` (``scoring.pairwise_scores``), as the probes score truth: of a contrast pair, is
"Yes" preferred more for its true statement than for its false one.
"""

from __future__ import annotations

import random
from typing import Any

from pipeline.data.matching import TextIndex
from pipeline.data.relations import load_relations, select
from pipeline.data.statements import FALSE_ANSWER, TRUE_ANSWER, StatementParams, contrast_pairs
from pipeline.evaluation.items import Item, Metric, dialog_key
from pipeline.evaluation.params import EvalParams

TRUTH_FAMILIES = ("statements", "public")
"""Training families whose validation items choose the truth metric's read layer."""
TASK_FAMILIES = ("public",)


def truth_metric(params: EvalParams, relations_file, seen: TextIndex) -> Metric:
    """True and corrupted statements of the eval relations' facts (``data.statements`` builds
    them the same way for training, from other relations): "Is the statement true?", Yes or No.

    A pair whose subject occurs in the training data is left out (the decoder could know it)."""
    relations = select(load_relations(relations_file), params.eval_relations, "eval_relations")
    statements = StatementParams(relations=list(params.eval_relations), seed=params.seed)
    rows = contrast_pairs(relations, statements)
    pairs = [rows[i : i + 2] for i in range(0, len(rows), 2)]
    random.Random(params.seed).shuffle(pairs)
    items, leaked = [], 0
    for pair in pairs:
        subject = pair[0]["label"].split(":", 1)[1]
        if seen.mentions((subject,)):
            leaked += 1
            continue
        if len(items) + 2 > params.max_truth_items:
            break
        for row in pair:
            answer = row["qa"][0]["answer"]
            items.append(
                Item(
                    f"truth:{row['label']}:{answer}",
                    f"truth:{row['label']}:{answer}",  # donors are any other statement
                    dialog_key(row["messages"], 0),
                    row["qa"][0]["question"],
                    answer,
                    meta={
                        "relation": row["label"].split(":", 1)[0],
                        "subject": subject,
                        "pair": row["label"],
                    },
                    choices=(TRUE_ANSWER, FALSE_ANSWER),
                )
            )
    notes = [
        f"relations {', '.join(params.eval_relations)} (never trained on); both members of each "
        "contrast pair, so half the statements are true"
    ]
    if leaked:
        notes.append(f"{leaked} pairs left out: their subject occurs in the training data")
    return Metric(
        "truth",
        "choice",
        "truth of a statement about a relation fact: the decoder's preferred answer of Yes / No",
        items,
        notes,
        families=TRUTH_FAMILIES,
        chance=0.5,
        scorers=("choice", "debiased", "pairwise"),
    )


def task_metrics(items: list[dict[str, Any]], params: EvalParams) -> list[Metric]:
    """Public classification tasks: held-out tasks (never trained on) and unseen texts of the
    trained tasks, each item a choice between its label's answer and another label's."""
    out = []
    for held_out in (True, False):
        chosen = [it for it in items if bool(it["held_out"]) == held_out]
        by_task: dict[str, list[dict]] = {}
        for it in chosen:
            by_task.setdefault(it["task"], []).append(it)
        picked = [it for task in sorted(by_task) for it in by_task[task][: params.max_task_items]]
        if not picked:
            continue
        name = "heldout_tasks" if held_out else "trained_tasks"
        what = (
            "classification tasks never trained on"
            if held_out
            else "texts never trained on, of the classification tasks trained on"
        )
        out.append(
            Metric(
                name,
                "choice",
                f"{what} ({', '.join(sorted(by_task))}): the decoder's preferred answer of two "
                "(the text's label and another)",
                [_task_item(it) for it in picked],
                [f"per task: {params.max_task_items} texts at most; chance 0.5 for each"],
                families=TASK_FAMILIES,
                chance=0.5,
            )
        )
    return out


def _task_item(it: dict[str, Any]) -> Item:
    return Item(
        f"{it['task']}:{it['id']}",
        f"{it['task']}:{it['id']}",  # each its own group: donors are any other text
        dialog_key([{"role": "user", "content": it["text"]}], 0),
        it["question"],
        it["answer"],
        meta={"task": it["task"]},
        choices=tuple(it["choices"]),
    )
