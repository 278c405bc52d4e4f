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

from pipeline.core import stage
from pipeline.core.stats import derangement
from pipeline.data.schema import read_dialogs
from pipeline.evaluation import items as eval_items
from pipeline.evaluation.choice_items import task_metrics, truth_metric
from pipeline.evaluation.concepts import load_synonyms
from pipeline.evaluation.conditions import CONDITIONS, score_rows
from pipeline.evaluation.items import Metric, build_metrics, training_text
from pipeline.evaluation.latentqa_rows import latentqa_rows_to_score
from pipeline.evaluation.layer_runs import (
    ALL,
    by_cond,
    layer_keys,
    layer_runs,
    reads_needed,
    scored,
)
from pipeline.evaluation.params import EvalParams
from pipeline.evaluation.scoring import LLMJudge, load_similarity
from pipeline.evaluation.summary import by_part, conditions_summary, judged
from pipeline.evaluation.tables import write_plots, write_tables
from pipeline.mechanism import layer_choice
from pipeline.mechanism.decoder_files import load_decoder
from pipeline.mechanism.decoder_settings import DecoderSettings
from pipeline.mechanism.reading import compute_reads

log = logging.getLogger("pipeline.evaluation.evaluate")


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
    placed = {
        m.name: (ALL, None) if settings.all_layers else choice.for_families(m.families)
        for m in metrics
    }
    keys = {m.name: layer_keys(settings, placed[m.name][0], params.layers) for m in metrics}

    def read_at(key):
        # Only the dialogs of the metrics scored at ``key``: each block's read costs a forward.
        dialogs = sorted(
            {
                item.dialog
                for m in metrics
                if key in reads_needed(settings, set(keys[m.name]))
                for item in m.items
            }
        )
        at = settings if key == ALL else settings.with_layer(int(key))
        label = "reading every block" if key == ALL else f"reading block {key}"
        messages = [([{"role": r, "content": c} for r, c in msgs], k) for msgs, k in dialogs]
        computed = compute_reads(model, tokenizer, messages, at, params.batch_size, desc=label)
        return dict(zip(dialogs, computed, strict=True))

    reads = {
        key: read_at(key) for key in reads_needed(settings, {k for ks in keys.values() for k in ks})
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
        runs = layer_runs(
            model, tokenizer, metric, reads, perm, settings, params, keys[metric.name]
        )
        best, family = placed[metric.name]
        common = {
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
                k: conditions_summary(scored(runs, k, key), params) for k in keys[metric.name]
            }
            result = {
                "description": metric.description,
                "kind": scorer,
                # Items scored, not asked: a ``pairwise`` score counts each contrast pair once.
                "n": by_layer[str(best)]["conditions"]["true"]["n"],
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
                    result[f"by_{part}"] = by_part(metric, scored(runs, str(best), key), part)
            results[name] = result
            if scorer == "similarity" and judge is not None:
                results[name + "_judge"] = judged(metric, by_cond(runs, str(best)), judge, params)
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


def run(params: EvalParams, inputs: dict[str, Path], workdir: Path, info: dict) -> None:
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
    stage.main(
        "evaluate", EvalParams, run, needs=("model", "train", "data", "relations", "synonyms")
    )
