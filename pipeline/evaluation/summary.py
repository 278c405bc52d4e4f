"""The figures of one metric's conditions: means with intervals, the paired gaps, per relation or
task, and the optional LLM judge's."""

from __future__ import annotations

from typing import Any

import torch

from pipeline.core.stats import summarize
from pipeline.evaluation.conditions import CONDITIONS
from pipeline.evaluation.items import Metric
from pipeline.evaluation.params import EvalParams


def conditions_summary(rows_by_cond: dict[str, list[dict]], params: EvalParams) -> dict:
    """Each condition's mean score with its interval (and perplexity for log-likelihoods), and the
    grounding and text-only gaps, paired per item."""
    out: dict[str, Any] = {"conditions": {}}
    for cond, rows in rows_by_cond.items():
        out["conditions"][cond] = summarize(
            [r["score"] for r in rows], params.bootstrap, params.seed
        )
        if rows and "nll" in rows[0]:
            tokens = sum(r["tokens"] for r in rows)
            nll = sum(r["nll"] for r in rows)
            out["conditions"][cond]["perplexity"] = float(torch.tensor(nll / max(tokens, 1)).exp())
    true = [r["score"] for r in rows_by_cond["true"]]
    for name, other in (("grounding_gap", "shuffled"), ("text_only_gap", "text_only")):
        diffs = [
            a - b
            for a, b in zip(true, [r["score"] for r in rows_by_cond[other]], strict=True)
            if a is not None and b is not None
        ]
        out[name] = summarize(diffs, params.bootstrap, params.seed)
    return out


def by_part(metric: Metric, by_cond, part: str) -> dict[str, dict[str, float]]:
    """Each condition's mean score per relation (or task) of the items."""
    out: dict[str, dict[str, list[float]]] = {}
    for cond, rows in by_cond.items():
        for item, row in zip(metric.items, rows, strict=True):
            if row["score"] is not None:  # a pair's second item (``pairwise``)
                out.setdefault(item.meta[part], {}).setdefault(cond, []).append(row["score"])
    return {rel: {c: sum(v) / len(v) for c, v in conds.items()} for rel, conds in out.items()}


def judged(metric: Metric, by_cond, judge, params: EvalParams) -> dict[str, Any]:
    """The LLM judge's YES/NO on the first answers of each condition, summarized the same way."""
    per_cond = max(1, params.judge.max_items // len(CONDITIONS))
    items = metric.items[:per_cond]
    judged = {}
    for cond, rows in by_cond.items():
        scores = judge.score(
            [it.question for it in items],
            [it.reference for it in items],
            [r["prediction"] for r in rows[: len(items)]],
        )
        judged[cond] = [{"score": s} for s in scores]
        for row, score in zip(rows, scores, strict=False):
            row["judge"] = score  # lands in predictions.jsonl beside the similarity score
    return {
        "description": f"{metric.description}, judged YES/NO by {params.judge.model}",
        "n": len(items),
        "scorer": {"name": params.judge.model, "kind": "llm_judge"},
        "judge_failures": judge.failures,
        **conditions_summary(judged, params),
    }
