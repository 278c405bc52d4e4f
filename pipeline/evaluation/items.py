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

from pipeline.data.relations import load_relations, relation_items
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
    """Other references that also count as a match (object aliases)."""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Metric:
    name: str
    kind: str
    """``loglik``, ``match`` or ``similarity``."""
    description: str
    items: list[Item]
    notes: list[str] = field(default_factory=list)
    max_new_tokens: int = 24


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


def build_metrics(
    params: EvalParams, rows, latentqa_rows, relations_file: Path, tokenizer
) -> list[Metric]:
    templ = [r for r in rows if r["source"] != params.latentqa_source]
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
        Metric(
            "recovery_heldout",
            "match",
            "control recovery on held-out labels: the greedy answer contains the reference's "
            "key phrase (normalised match)",
            qa_items(held, tokenizer, params.max_recovery_items, seed, lim, k),
            max_new_tokens=params.max_new_tokens,
        ),
        Metric(
            "recovery_seen",
            "match",
            "control recovery on seen labels: the greedy answer contains the reference's key "
            "phrase (normalised match)",
            seen_items,
            [
                f"seen labels: {len(seen_items)} dialogs sampled from the TRAIN split; the "
                "decoder was trained on these very dialogs and questions, so this measures "
                "fitting, not generalisation"
            ],
            max_new_tokens=params.max_new_tokens,
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
            )
        )
        metrics.append(
            Metric(
                "latentqa_recovery",
                "similarity",
                "imported LatentQA eval split: similarity of the greedy answer to "
                "the reference answer",
                lqa,
                max_new_tokens=params.max_new_tokens,
            )
        )
    facts = relation_items(load_relations(relations_file), None, seed)
    rel_items = []
    for fact in facts:
        if len(rel_items) >= params.max_relation_items:
            break
        rel_items.append(
            Item(
                fact.id,
                fact.subject,
                dialog_key(fact.messages, 0),
                fact.question,
                fact.object,
                fact.aliases,
                {"relation": fact.relation, "subject": fact.subject},
            )
        )
    metrics.append(
        Metric(
            "feature_extraction",
            "match",
            f"relation facts: the object appears in the first "
            f"{params.relation_tokens} generated tokens; the read dialog is one "
            f"user sentence mentioning the subject, nothing masked",
            rel_items,
            max_new_tokens=params.relation_tokens,
        )
    )
    return metrics
