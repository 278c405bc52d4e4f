"""Stage `evaluate`: decoder metrics beside the controls that make them interpretable (DESIGN §7).

Inputs: ``model`` (prepared model folder), ``train`` (train artifact: ``adapter/`` and a manifest
whose params give the read settings), ``data`` (filter artifact: ``dialogs.parquet``),
``relations`` (``data/relations.yaml``), optionally ``latentqa`` (imported LatentQA dialogs).

Every metric scores the same items under four conditions (:data:`CONDITIONS`), and reports the
grounding gap (true minus shuffled, paired per item) with its spread over items. Outputs:
``eval.json``, ``tables.md``, ``predictions.jsonl`` (one line per item and condition),
``read_dialogs.jsonl`` (the dialog each item reads) and
``plot_<metric>.png`` plus ``plot_overview.png``. One base model is in memory: "untrained" is the
same module with its adapter disabled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pipeline.core import stage
from pipeline.data.matching import names_in
from pipeline.data.schema import read_dialogs
from pipeline.evaluation import items as eval_items
from pipeline.evaluation.concepts import concept_hit, load_synonyms
from pipeline.evaluation.items import Item, Metric, build_metrics, dialog_key
from pipeline.evaluation.params import EvalParams
from pipeline.evaluation.scoring import (
    LLMJudge,
    load_similarity,
    normalized_match,
    summarize,
)
from pipeline.evaluation.tables import write_plots, write_tables
from pipeline.mechanism.decoder import answer_loss, collate
from pipeline.mechanism.decoder_files import load_decoder
from pipeline.mechanism.decoder_settings import DecoderSettings
from pipeline.mechanism.dialogs import DecoderExample, build_decoder_example
from pipeline.mechanism.reading import Read, compute_reads, generate_batched, target_mode
from pipeline.training.sampling import derangement

log = logging.getLogger("pipeline.evaluation.evaluate")

CONDITIONS = {
    "true": "the decoder reads the item's own activations",
    "shuffled": "the decoder reads another item's activations (a fixed derangement that avoids "
    "items of the same label where possible)",
    "untrained": "the base model (adapter disabled) reads the item's own activations "
    "(Patchscope-style)",
    "text_only": "the decoder is given the read dialog's unmasked tokens as text in place of the "
    "placeholders, with no activations",
}


def text_only_example(
    tokenizer, read: Read, question: str, answer: str | None, align: bool
) -> DecoderExample:
    """The decoder prompt with the read tokens themselves where the placeholders would be."""
    ex = build_decoder_example(tokenizer, read.read_positions, question, answer, align)
    ids = list(ex.input_ids)
    for slot, pos in zip(ex.placeholder_positions, read.read_positions, strict=True):
        ids[slot] = read.input_ids[pos]
    return DecoderExample(ids, [], ex.position_ids, ex.labels)


def condition_inputs(
    condition: str,
    items: list[Item],
    reads: dict,
    perm: list[int],
    tokenizer,
    settings: DecoderSettings,
    with_answer: bool,
):
    """(examples, activations, donor item ids) of the items under one condition."""
    examples, acts, donors = [], [], []
    for i, item in enumerate(items):
        read = reads[item.dialog]
        answer = item.reference if with_answer else None
        donor = item
        if condition == "shuffled":
            donor = items[perm[i]]
            read = reads[donor.dialog]
        if condition == "text_only":
            examples.append(
                text_only_example(tokenizer, read, item.question, answer, settings.align_positions)
            )
            acts.append(torch.zeros(0, read.acts.shape[-1]))
        else:
            examples.append(
                build_decoder_example(
                    tokenizer, read.read_positions, item.question, answer, settings.align_positions
                )
            )
            acts.append(read.acts)
        donors.append(donor.id)
    return examples, acts, donors


@torch.no_grad()
def loglik_batched(
    model, tokenizer, examples, acts, write_layer: int, batch_size: int, desc: str
) -> list[tuple[float, int]]:
    """(summed NLL, token count) of each example's labelled answer tokens."""
    out: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(order), batch_size), desc=desc, file=sys.stderr):
        chunk = order[start : start + batch_size]
        batch = collate(
            [examples[i] for i in chunk], [acts[i] for i in chunk], tokenizer.pad_token_id
        ).to(device)
        nll, count = answer_loss(model, batch, write_layer, reduction="none")
        for i, a, b in zip(chunk, nll.tolist(), count.tolist(), strict=True):
            out[i] = (a, int(b))
    return out


def run_condition(
    model, tokenizer, metric: Metric, condition: str, reads, perm, settings, params: EvalParams
) -> list[dict[str, Any]]:
    """Per item: the donor and the NLL with its score, or the prediction (scored later)."""
    loglik = metric.kind == "loglik"
    examples, acts, donors = condition_inputs(
        condition, metric.items, reads, perm, tokenizer, settings, with_answer=loglik
    )
    desc = f"{metric.name}/{condition}"
    with target_mode(model) if condition == "untrained" else contextlib.nullcontext():
        if loglik:
            results = loglik_batched(
                model, tokenizer, examples, acts, settings.write_layer, params.batch_size, desc
            )
            return [
                {"donor": d, "nll": nll, "tokens": n, "score": -nll / max(n, 1)}
                for d, (nll, n) in zip(donors, results, strict=True)
            ]
        texts = generate_batched(
            model,
            tokenizer,
            examples,
            acts,
            settings.write_layer,
            params.batch_size,
            metric.max_new_tokens,
            desc,
        )
    return [{"donor": d, "prediction": text} for d, text in zip(donors, texts, strict=True)]


_MATCHERS = {
    "match": lambda it, text, _: any(normalized_match(text, r) for r in (it.reference, *it.accept)),
    "entity": lambda it, text, _: names_in(
        text, (it.reference, *it.accept), it.case_sensitive, it.rivals
    ),
    "concept": lambda it, text, synonyms: concept_hit(text, it.reference, synonyms),
}


def score_rows(scorer: str, items: list[Item], rows: list[dict], similarity, synonyms) -> list:
    """One scorer's score of each generated answer (1.0 or 0.0 for the matching scorers)."""
    texts = [r["prediction"] for r in rows]
    if scorer == "similarity":
        return similarity.score(texts, [it.reference for it in items])
    if scorer not in _MATCHERS:
        raise ValueError(f"unknown scorer {scorer!r}; known: similarity, {', '.join(_MATCHERS)}")
    match = _MATCHERS[scorer]
    return [float(match(it, text, synonyms)) for it, text in zip(items, texts, strict=True)]


# --- the stage ------------------------------------------------------------------------------


def _conditions_summary(rows_by_cond: dict[str, list[dict]], params: EvalParams) -> dict:
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


def evaluate(
    model,
    tokenizer,
    settings: DecoderSettings,
    metrics: list[Metric],
    params: EvalParams,
    similarity=None,
    judge=None,
    synonyms=None,
):
    """(eval results by metric and scorer, prediction records)."""
    dialogs = sorted({item.dialog for m in metrics for item in m.items})
    computed = compute_reads(
        model,
        tokenizer,
        [([{"role": r, "content": c} for r, c in msgs], k) for msgs, k in dialogs],
        settings,
        params.batch_size,
    )
    reads = dict(zip(dialogs, computed, strict=True))
    results: dict[str, Any] = {}
    predictions: list[dict[str, Any]] = []
    for metric in metrics:
        names = [metric.name] + [f"{metric.name}_{s}" for s in metric.scorers[1:]]
        if len(metric.items) < 2:
            for name in names:
                results[name] = {
                    "description": metric.description,
                    "n": len(metric.items),
                    "notes": metric.notes,
                    "skipped": "fewer than 2 items: no shuffled control possible",
                }
            continue
        started = time.time()
        perm = derangement([it.group for it in metric.items], params.seed)
        by_cond = {
            c: run_condition(model, tokenizer, metric, c, reads, perm, settings, params)
            for c in CONDITIONS
        }
        common = {
            "n": len(metric.items),
            "shuffled_same_group": sum(
                metric.items[p].group == it.group for it, p in zip(metric.items, perm, strict=True)
            ),
            "seconds": round(time.time() - started, 1),
        }
        for name, scorer in zip(names, metric.scorers or ("loglik",), strict=True):
            scored = by_cond
            if scorer != "loglik":
                for rows in by_cond.values():
                    scores = score_rows(scorer, metric.items, rows, similarity, synonyms)
                    for row, score in zip(rows, scores, strict=True):
                        row[scorer] = score
                scored = {c: [{"score": r[scorer]} for r in rows] for c, rows in by_cond.items()}
            result = {
                "description": metric.description,
                "kind": scorer,
                **common,
                **_conditions_summary(scored, params),
            }
            if scorer == "similarity":
                result["scorer"] = {"name": similarity.name, "kind": similarity.kind}
            if metric.notes:
                result["notes"] = metric.notes
            if any("relation" in item.meta for item in metric.items):
                result["by_relation"] = _by_relation(metric, scored)
            results[name] = result
            if scorer == "similarity" and judge is not None:
                results[name + "_judge"] = _judge(metric, by_cond, judge, params)
        for cond, rows in by_cond.items():
            for item, row in zip(metric.items, rows, strict=True):
                predictions.append(
                    {
                        "metric": metric.name,
                        "item": item.id,
                        "condition": cond,
                        "question": item.question,
                        "reference": item.reference,
                        **item.meta,
                        **row,
                    }
                )
    return results, predictions


def _by_relation(metric: Metric, by_cond) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, list[float]]] = {}
    for cond, rows in by_cond.items():
        for item, row in zip(metric.items, rows, strict=True):
            out.setdefault(item.meta["relation"], {}).setdefault(cond, []).append(row["score"])
    return {rel: {c: sum(v) / len(v) for c, v in conds.items()} for rel, conds in out.items()}


def _judge(metric: Metric, by_cond, judge, params: EvalParams) -> dict[str, Any]:
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
        **_conditions_summary(judged, params),
    }


def latentqa_eval_rows(rows, latentqa_rows) -> list[dict]:
    """The imported LatentQA rows of the eval split, refused if training data shares any of them.

    A shared dialog, or a shared (question, answer) pair, would let the decoder answer from
    memory; the run stops rather than report such a figure.
    """
    train = [r for r in rows if r["split"] == "train"]
    train_dialogs = {dialog_key(r["messages"], r["n_masked_turns"]) for r in train}
    train_pairs = {(qa["question"], qa["answer"]) for r in train for qa in r["qa"]}
    chosen = [r for r in latentqa_rows if r["split"] == "eval"]
    for row in chosen:
        shared = dialog_key(row["messages"], row["n_masked_turns"]) in train_dialogs
        pairs = [(q["question"], q["answer"]) for q in row["qa"]]
        pair = next((p for p in pairs if p in train_pairs), None)
        if shared or pair:
            what = "its dialog" if shared else f"the QA pair {pair!r}"
            raise SystemExit(
                f"evaluate: LatentQA eval row {row['id']} ({row['label']}): {what} also "
                "appears in the training data; evaluating on it would measure memory"
            )
    return chosen


def run(params: EvalParams, inputs: dict[str, Path], workdir: Path, info: dict) -> None:
    for name in ("model", "train", "data", "relations", "synonyms"):
        if name not in inputs:
            raise SystemExit(f"evaluate: needs --input {name}=PATH")
    started = time.time()
    train_manifest = json.loads((inputs["train"] / "_manifest.json").read_text())
    settings = DecoderSettings.from_manifest(train_manifest)
    model, tokenizer = load_decoder(
        inputs["model"], inputs["train"] / "adapter", train_manifest, params.dtype, params.device
    )
    rows = read_dialogs(inputs["data"] / "dialogs.parquet")
    if "latentqa" in inputs:
        latentqa_rows = read_dialogs(inputs["latentqa"] / "dialogs.parquet")
    else:
        latentqa_rows = [r for r in rows if r["source"] == params.latentqa_source]
    latentqa_rows = latentqa_eval_rows(rows, latentqa_rows)
    metrics = build_metrics(params, rows, latentqa_rows, inputs["relations"], tokenizer)
    similarity = load_similarity(params.similarity)
    synonyms = load_synonyms(inputs["synonyms"])
    judge = LLMJudge(params.judge) if params.judge.enabled and latentqa_rows else None
    results, predictions = evaluate(
        model, tokenizer, settings, metrics, params, similarity, judge, synonyms
    )
    report = {
        "decoder": {
            **asdict(settings),
            "train_key": train_manifest.get("key"),
            "model_key": train_manifest.get("inputs", {}).get("model"),
        },
        "conditions": CONDITIONS,
        "gaps": {
            "grounding_gap": "true minus shuffled, paired per item",
            "text_only_gap": "true minus text_only, paired per item",
        },
        "metrics": results,
        "seconds": round(time.time() - started, 1),
    }
    (workdir / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(workdir / "predictions.jsonl", "w", encoding="utf-8") as handle:
        for record in predictions:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    eval_items.write_read_dialogs(metrics, workdir / eval_items.READ_DIALOGS)
    write_tables(report, workdir / "tables.md")
    write_plots(report, workdir)
    info["seconds"] = report["seconds"]
    info["metrics"] = {
        name: {
            "n": r["n"],
            **{
                c: round(v["mean"], 4)
                for c, v in r.get("conditions", {}).items()
                if v["mean"] is not None
            },
            "grounding_gap": r.get("grounding_gap", {}).get("mean"),
        }
        for name, r in results.items()
    }
    log.info("evaluated %d metrics in %.0f s", len(results), report["seconds"])


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stage.main("evaluate", EvalParams, run)
