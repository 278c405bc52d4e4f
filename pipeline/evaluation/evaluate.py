"""Stage `evaluate`: decoder metrics beside the controls that make them interpretable.

See docs/design.md §7.

Inputs: ``model`` (prepared model folder), ``train`` (train artifact: ``adapter/`` and a manifest
whose params give the read settings), ``data`` (filter artifact: ``dialogs.parquet``),
``relations`` (``data/relations.yaml``), ``synonyms`` (``data/synonyms.yaml``), optionally
``latentqa`` (imported LatentQA dialogs) and ``public`` (a ``public_tasks`` artifact).

Every metric scores the same items under four conditions (``conditions.CONDITIONS``), at the
read layer chosen for its kind of question on the validation split (``layers: all``: at every
read layer of the decoder too, about one more evaluation per layer), and reports the grounding
gap (true minus shuffled, paired per item) with its spread over items. Outputs: ``eval.json``,
``tables.md``, ``predictions.jsonl`` (one line per item, condition and layer),
``read_dialogs.jsonl`` (the dialog each item reads) and ``plot_<metric>.png`` plus
``plot_overview.png``. One base model is in memory: "untrained" is the same module with its
adapter disabled.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from pipeline.core import stage
from pipeline.core.stats import derangement, summarize
from pipeline.data.schema import read_dialogs
from pipeline.evaluation import items as eval_items
from pipeline.evaluation.choice_items import task_metrics, truth_metric
from pipeline.evaluation.concepts import load_synonyms
from pipeline.evaluation.conditions import CONDITIONS, READING, run_condition, score_rows
from pipeline.evaluation.items import Metric, build_metrics, dialog_key, training_text
from pipeline.evaluation.params import EvalParams
from pipeline.evaluation.scoring import LLMJudge, load_similarity
from pipeline.evaluation.tables import write_plots, write_tables
from pipeline.mechanism import layer_choice
from pipeline.mechanism.decoder_files import load_decoder
from pipeline.mechanism.decoder_settings import DecoderSettings
from pipeline.mechanism.reading import compute_reads

log = logging.getLogger("pipeline.evaluation.evaluate")


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


ALL = "all"
"""The layer key of a decoder reading every layer at once, reading them all."""


def layer_keys(settings, chosen, scope: str) -> list[str]:
    """The keys of a metric's ``by_layer``. ``scope`` ``chosen``: only ``chosen``, the layer it
    is reported at; ``all``: each read layer too, and ``all`` first for a decoder reading every
    layer at once (each layer then alone holds the item's activations, the others the donor's)."""
    if scope == "chosen":
        return [str(chosen)]
    layers = [str(layer) for layer in settings.read_layers]
    return [ALL, *layers] if settings.all_layers else layers


def _runs(model, tokenizer, metric, reads, perm, settings, params, keys) -> dict:
    """(condition, layer key) -> rows: the reading conditions at each layer key of ``keys``,
    text-only once (key None)."""
    first = next(iter(reads.values()))
    runs = {
        ("text_only", None): run_condition(
            model, tokenizer, metric, "text_only", first, perm, settings, params
        )
    }
    for key in keys:
        if key == ALL:
            for cond in READING:
                runs[(cond, ALL)] = run_condition(
                    model, tokenizer, metric, cond, reads[ALL], perm, settings, params
                )
        elif settings.all_layers:
            # One layer alone of a decoder reading all at once (``ALL`` comes first in ``keys``).
            layer_reads = {layer: reads[str(layer)] for layer in settings.read_layers}
            runs[("shuffled", key)] = runs[("shuffled", ALL)]
            for cond in ("true", "untrained"):
                runs[(cond, key)] = run_condition(
                    model, tokenizer, metric, cond, None, perm, settings, params,
                    keep=int(key), layer_reads=layer_reads,
                )  # fmt: skip
        else:
            there = settings.with_layer(int(key))
            for cond in READING:
                runs[(cond, key)] = run_condition(
                    model, tokenizer, metric, cond, reads[key], perm, there, params
                )
    return runs


def _reads_needed(settings, keys: set[str]) -> list[str]:
    """The layer keys whose reads the runs at ``keys`` use: a decoder reading every layer at once
    needs each layer's own reads too where one layer is scored alone."""
    if settings.all_layers and keys - {ALL}:
        keys = keys | {str(layer) for layer in settings.read_layers}
    return sorted(keys, key=lambda k: (k != ALL, k))


def _by_cond(runs: dict, key: str) -> dict[str, list[dict]]:
    return {c: runs[(c, None if c == "text_only" else key)] for c in CONDITIONS}


def _scored(runs: dict, key: str, score: str) -> dict[str, list[dict]]:
    """The rows of each condition at layer ``key`` with the ``score`` scorer's as ``score``."""
    return {c: [{**r, "score": r[score]} for r in rows] for c, rows in _by_cond(runs, key).items()}


def evaluate(
    model,
    tokenizer,
    settings: DecoderSettings,
    metrics: list[Metric],
    params: EvalParams,
    similarity=None,
    judge=None,
    synonyms=None,
    choice: layer_choice.LayerChoice | None = None,
):
    """(eval results by metric and scorer, prediction records).

    Each result holds the figures at the metric's read layer (chosen on the validation split,
    ``choice``) at its top level, as a single-layer decoder's would, and every layer's under
    ``by_layer``.
    """
    choice = choice or layer_choice.LayerChoice(layers=list(settings.read_layers))
    dialogs = sorted({item.dialog for m in metrics for item in m.items})
    messages = [([{"role": r, "content": c} for r, c in msgs], k) for msgs, k in dialogs]

    def read_all(at, label):
        computed = compute_reads(model, tokenizer, messages, at, params.batch_size, desc=label)
        return dict(zip(dialogs, computed, strict=True))

    placed = {
        m.name: (ALL, None) if settings.all_layers else choice.for_families(m.families)
        for m in metrics
    }
    keys = {m.name: layer_keys(settings, placed[m.name][0], params.layers) for m in metrics}
    reads = {
        key: read_all(settings, "reading every block")
        if key == ALL
        else read_all(settings.with_layer(int(key)), f"reading block {key}")
        for key in _reads_needed(settings, {k for ks in keys.values() for k in ks})
    }
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
        runs = _runs(model, tokenizer, metric, reads, perm, settings, params, keys[metric.name])
        best, family = placed[metric.name]
        common = {
            "n": len(metric.items),
            "shuffled_same_group": sum(
                metric.items[p].group == it.group for it, p in zip(metric.items, perm, strict=True)
            ),
            "seconds": round(time.time() - started, 1),
            "layer": best,
            "layer_chosen_by": (
                "the decoder reads every layer at once"
                if settings.all_layers
                else f"validation loss of the {family} family"
                if family
                else "validation loss over all families"
                if choice.losses
                else "the decoder's only read layer"
            ),
        }
        if metric.chance is not None:
            common["chance"] = metric.chance
        for name, scorer in zip(names, metric.scorers or (metric.kind,), strict=True):
            if scorer not in ("loglik", "choice"):
                # The shuffled rows of an all-layers decoder are one list under every key.
                for rows in {id(rows): rows for rows in runs.values()}.values():
                    scores = score_rows(scorer, metric.items, rows, similarity, synonyms)
                    for row, score in zip(rows, scores, strict=True):
                        row[scorer] = score
            key = "score" if scorer in ("loglik", "choice") else scorer
            by_layer = {
                k: _conditions_summary(_scored(runs, k, key), params) for k in keys[metric.name]
            }
            result = {
                "description": metric.description,
                "kind": scorer,
                **common,
                **by_layer[str(best)],
                "by_layer": by_layer,
            }
            if scorer == "similarity":
                result["scorer"] = {"name": similarity.name, "kind": similarity.kind}
            if metric.notes:
                result["notes"] = metric.notes
            for part in ("relation", "task"):
                if any(part in item.meta for item in metric.items):
                    result[f"by_{part}"] = _by_part(metric, _scored(runs, str(best), key), part)
            results[name] = result
            if scorer == "similarity" and judge is not None:
                results[name + "_judge"] = _judge(metric, _by_cond(runs, str(best)), judge, params)
        written = set()
        for (cond, layer), rows in runs.items():
            if id(rows) in written:
                continue
            written.add(id(rows))
            for item, row in zip(metric.items, rows, strict=True):
                predictions.append(
                    {
                        "metric": metric.name,
                        "item": item.id,
                        "condition": cond,
                        "layer": layer if layer in (None, ALL) else int(layer),
                        "question": item.question,
                        "reference": item.reference,
                        **item.meta,
                        **row,
                    }
                )
    return results, predictions


def _by_part(metric: Metric, by_cond, part: str) -> dict[str, dict[str, float]]:
    """Each condition's mean score per relation (or task) of the items."""
    out: dict[str, dict[str, list[float]]] = {}
    for cond, rows in by_cond.items():
        for item, row in zip(metric.items, rows, strict=True):
            out.setdefault(item.meta[part], {}).setdefault(cond, []).append(row["score"])
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


def latentqa_rows_to_score(inputs: dict[str, Path], rows: list[dict], source: str) -> list[dict]:
    """The LatentQA rows an evaluation scores: the imported evaluation split (``latentqa``
    input) if given, else the filtered data's rows of ``source``; eval split only, leak-checked."""
    if "latentqa" in inputs:
        latentqa_rows = read_dialogs(inputs["latentqa"] / "dialogs.parquet")
    else:
        latentqa_rows = [r for r in rows if r["source"] == source]
    return latentqa_eval_rows(rows, latentqa_rows)


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
    adapter = inputs["train"] / "adapter"
    choice = layer_choice.read(adapter, list(settings.read_layers))
    model, tokenizer = load_decoder(
        inputs["model"], adapter, train_manifest, params.dtype, params.device
    )
    rows = read_dialogs(inputs["data"] / "dialogs.parquet")
    latentqa_rows = latentqa_rows_to_score(inputs, rows, params.latentqa_source)
    metrics = build_metrics(params, rows, latentqa_rows, inputs["relations"], tokenizer)
    if params.max_truth_items:
        metrics.append(truth_metric(params, inputs["relations"], training_text(rows)))
    if "public" in inputs:
        from pipeline.data.public_tasks import read_eval_items

        metrics += task_metrics(read_eval_items(inputs["public"]), params)
    similarity = load_similarity(params.similarity)
    synonyms = load_synonyms(inputs["synonyms"])
    judge = LLMJudge(params.judge) if params.judge.enabled and latentqa_rows else None
    results, predictions = evaluate(
        model, tokenizer, settings, metrics, params, similarity, judge, synonyms, choice
    )
    report = {
        "decoder": {
            **asdict(settings),
            "layer_choice": choice.to_json(),
            "train_key": train_manifest.get("key"),
            "model_key": train_manifest.get("inputs", {}).get("model"),
        },
        "conditions": CONDITIONS,
        "layers": list(settings.read_layers),
        "layers_scored": params.layers,
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
