"""The evaluation's items: which (read dialog, question, reference) each metric scores.

Template dialogs give held-out and seen labels (recovery, answer log-likelihood), the imported
LatentQA split its own items, and ``data/relations.yaml`` the feature-extraction facts. Every item
keys its read by the dialog itself, so items sharing a dialog share one target forward.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.data.matching import TextIndex
from pipeline.data.relations import load_relations, relation_items, select
from pipeline.data.schema import CONTROL_KINDS
from pipeline.evaluation.params import EvalParams
from pipeline.mechanism.dialogs import tokenize_read_dialog


@dataclass
class Item:
    """One question about one read dialog."""

    id: str
    group: str
    """Items of one group (label) never lend each other activations when avoidable."""
    dialog: tuple[tuple[tuple[str, str], ...], int]
    """(messages as (role, content) pairs, n_masked_turns): the key of its read."""
    question: str
    reference: str
    accept: tuple[str, ...] = ()
    """Other references that also count as a match (aliases)."""
    meta: dict[str, Any] = field(default_factory=dict)
    rivals: tuple[str, ...] = ()
    """Names of the same kind that a matched name must not sit inside (entity scorer)."""
    case_sensitive: bool = False
    """The entity scorer keeps case (chemical symbols)."""
    choices: tuple[str, ...] = ()
    """For ``choice`` metrics: the candidate answers, the reference among them."""


@dataclass
class Metric:
    name: str
    kind: str
    """``loglik`` (reference answers scored), ``generate`` (greedy answers, then scorers) or
    ``choice`` (the item's candidate answer the decoder finds likeliest)."""
    description: str
    items: list[Item]
    notes: list[str] = field(default_factory=list)
    max_new_tokens: int = 24
    scorers: tuple[str, ...] = ()
    """For ``generate``: ``match``, ``entity``, ``concept``, ``similarity``; the first names the
    metric, the others report as ``<name>_<scorer>`` on the same generations."""
    families: tuple[str, ...] = ("template",)
    """The training data families whose validation items choose this metric's read layer, in
    order of preference (``layer_choice``)."""
    chance: float | None = None
    """The score of a blind guess, where there is one (``choice`` metrics)."""


def dialog_key(messages: list[dict], n_masked: int):
    return tuple((m["role"], m["content"]) for m in messages), int(n_masked)


def _fits(tokenizer, messages, masked, limit) -> bool:
    return len(tokenize_read_dialog(tokenizer, messages, masked).input_ids) <= limit


def qa_items(rows, tokenizer, cap: int, seed: int, limit: int, qa_index: int | None = None):
    """Up to ``cap`` (dialog, QA pair) items from ``rows`` (all pairs, or pair ``qa_index``)."""
    pool = []
    for row in rows:
        pairs = (
            enumerate(row["qa"])
            if qa_index is None
            else ([(qa_index, row["qa"][qa_index])] if qa_index < len(row["qa"]) else [])
        )
        for j, qa in pairs:
            pool.append((row, j, qa))
    random.Random(seed).shuffle(pool)
    items = []
    for row, j, qa in pool:
        if len(items) >= cap:
            break
        if not _fits(tokenizer, row["messages"], row["n_masked_turns"], limit):
            continue
        items.append(
            Item(
                f"{row['id']}:{j}",
                row["label"],
                dialog_key(row["messages"], row["n_masked_turns"]),
                qa["question"],
                qa["answer"],
                meta={
                    "dialog_id": row["id"],
                    "label": row["label"],
                    "kind": row["kind"],
                    "split": row["split"],
                },
            )
        )
    return items


RECOVERY_SCORERS = ("match", "concept", "similarity")
LATENTQA_FAMILIES = ("latentqa-import", "template")
"""Imported LatentQA data trains family ``latentqa-import``; without it, the persona dialogs are
the nearest kind (masked system prompts and stimuli)."""


def _recovery(name: str, where: str, items: list[Item], params: EvalParams, notes=()) -> Metric:
    return Metric(
        name,
        "generate",
        f"control recovery on {where}: the greedy answer names the reference (match: its key "
        "phrase word for word; concept: half its key words or their synonyms; similarity: "
        "sentence similarity)",
        items,
        list(notes),
        params.max_new_tokens,
        RECOVERY_SCORERS,
    )


def build_metrics(
    params: EvalParams, rows, latentqa_rows, relations_file: Path, tokenizer
) -> list[Metric]:
    templ = [
        r for r in rows if r["kind"] in CONTROL_KINDS and r["source"] != params.latentqa_source
    ]
    held = [r for r in templ if r["split"] == "eval"]
    seen = [r for r in templ if r["split"] == "train"]
    lim, seed, k = params.max_read_tokens, params.seed, params.recovery_qa_index
    seen_items = qa_items(seen, tokenizer, params.max_recovery_items, seed, lim, k)
    metrics = [
        Metric(
            "answer_loglik",
            "loglik",
            "mean log-likelihood per reference-answer token (nats; higher is better) on "
            "held-out labels (eval split)",
            qa_items(held, tokenizer, params.max_loglik_items, seed, lim),
        ),
        _recovery(
            "recovery_heldout",
            "held-out labels",
            qa_items(held, tokenizer, params.max_recovery_items, seed, lim, k),
            params,
        ),
        _recovery(
            "recovery_seen",
            "seen labels",
            seen_items,
            params,
            [
                f"seen labels: {len(seen_items)} dialogs sampled from the TRAIN split; the "
                "decoder was trained on these very dialogs and questions, so this measures "
                "fitting, not generalisation"
            ],
        ),
    ]
    if latentqa_rows:
        lqa = qa_items(latentqa_rows, tokenizer, params.max_latentqa_items, seed, lim)
        metrics.append(
            Metric(
                "latentqa_loglik",
                "loglik",
                "imported LatentQA eval split: mean log-likelihood per "
                "reference-answer token (nats)",
                lqa,
                families=LATENTQA_FAMILIES,
            )
        )
        metrics.append(
            Metric(
                "latentqa_recovery",
                "generate",
                "imported LatentQA eval split: similarity of the greedy answer to "
                "the reference answer",
                lqa,
                max_new_tokens=params.max_new_tokens,
                scorers=("similarity",),
                families=LATENTQA_FAMILIES,
            )
        )
    metrics += relation_metrics(params, rows, relations_file)
    return metrics


def training_text(rows) -> TextIndex:
    """Every word of the training split's dialogs and answers (what the decoder may know)."""
    return TextIndex(
        " ".join(
            [m["content"] for r in rows if r["split"] == "train" for m in r["messages"]]
            + [x for r in rows if r["split"] == "train" for qa in r["qa"] for x in qa.values()]
        )
    )


def relation_metrics(params: EvalParams, rows, relations_file: Path) -> list[Metric]:
    """Feature extraction and subject identification on the eval relations' facts.

    A fact whose subject (any spelling) occurs in the text of a training row is left out: the
    decoder could have learnt it there. How many were left out is noted in the metric.
    """
    relations = select(load_relations(relations_file), params.eval_relations, "eval_relations")
    seen = training_text(rows)
    facts, leaked = [], 0
    for fact in relation_items(relations, None, params.seed):
        if seen.mentions(fact.fact.subject_names):
            leaked += 1
        elif len(facts) < params.max_relation_items:
            facts.append(fact)
    notes = [f"relations {', '.join(params.eval_relations)}; none of them is trained on"]
    if leaked:
        notes.append(f"{leaked} facts left out: their subject occurs in the training data")
    feature, subject = [], []
    for fact in facts:
        rel, meta = fact.relation, {"relation": fact.relation.name, "subject": fact.fact.subject}
        key = dialog_key(fact.messages, 0)
        feature.append(
            Item(fact.id, fact.fact.subject, key, rel.question, fact.fact.object,
                 fact.fact.aliases, meta, tuple(rel.objects()), rel.case_sensitive)
        )  # fmt: skip
        subject.append(
            Item(f"{fact.id}:subject", fact.fact.subject, key, rel.subject_question,
                 fact.fact.subject, fact.fact.subject_aliases, meta, tuple(rel.subjects()))
        )  # fmt: skip
    tokens = params.relation_tokens
    return [
        Metric(
            "feature_extraction",
            "generate",
            f"relation facts: the object is named (whole words) in the first {tokens} generated "
            "tokens; the read dialog is one user sentence mentioning the subject, and the "
            "question names only the subject's type",
            feature,
            notes,
            tokens,
            ("entity",),
            ("relation_qa",),
        ),
        Metric(
            "subject_identification",
            "generate",
            f"the same sentences: the subject is named in the first {tokens} generated tokens, "
            "asked for by its type only",
            subject,
            notes,
            tokens,
            ("entity",),
            ("relation_qa",),
        ),
    ]


READ_DIALOGS = "read_dialogs.jsonl"
"""The evaluate artifact's file of each item's read dialog (the report shows examples from it)."""


def write_read_dialogs(metrics: list[Metric], path: Path) -> None:
    """One JSON line per (metric, item): the dialog it reads, its masked turns marked by count."""
    import json

    with open(path, "w", encoding="utf-8") as handle:
        for metric in metrics:
            for item in metric.items:
                messages, masked = item.dialog
                record = {
                    "metric": metric.name,
                    "item": item.id,
                    "messages": [{"role": r, "content": c} for r, c in messages],
                    "n_masked_turns": masked,
                }
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
