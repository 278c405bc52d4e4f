"""Stage `reading_curve`: how reading grew while the decoder trained, against optimizer steps.

Inputs: ``model``, ``train`` (a train artifact with ``checkpoint_adapters/``, published with
``train.adapter_every``), ``evaluate`` (whose params choose the items), ``data``, ``relations``,
``synonyms`` and optionally ``latentqa``, as for the evaluate stage. The first ``max_items`` items
of each of ``metrics`` (the evaluation's own seeded order, so a fixed subset) are scored under
``conditions`` with every published adapter, and at step 0 with the adapter off (LoRA starts as
the identity, so step 0 is the base model). The target's activations do not depend on the
adapter: they are read once. A decoder of several read layers is scored at the layer the
evaluation reported each metric at (``layer`` in ``eval.json``: the one chosen for its family on
the validation split, ``all`` for a decoder reading every layer at once); with ``layers: all``,
at each of its read layers too (``<metric>@<layer>``): how many steps each depth needs. Steps, not
minutes, so two runs of one experiment draw one curve. Outputs ``curve.json`` and
``curve_predictions.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from pipeline.core import stage
from pipeline.core.choices import Dtype
from pipeline.core.stage import bounded

log = logging.getLogger("pipeline.evaluation.curve")

READING_METRICS = (
    "answer_loglik",
    "recovery_heldout",
    "feature_extraction",
    "subject_identification",
    "latentqa_recovery",
)
CurveCondition = Literal["true", "shuffled", "text_only"]
"""The conditions that change with training (``untrained`` is the base model at every step)."""
CURVE_CONDITIONS = get_args(CurveCondition)


@dataclass
class CurveParams:
    """The reading curve: a few evaluation items scored at the adapters published in training."""

    metrics: list[str] = field(default_factory=lambda: list(READING_METRICS))
    """Evaluation metrics scored at each step (those the experiment has; others are skipped)."""
    max_items: int = bounded(8, minimum=2)
    """Items per metric: the first of the evaluation's own seeded items, the same at every step."""
    conditions: list[CurveCondition] = field(default_factory=lambda: ["true", "shuffled"])
    """Conditions scored at each step: ``true``, ``shuffled``, ``text_only``."""
    start: bool = True
    """Also score step 0, the base model before training (the adapter off)."""
    layers: Literal["chosen", "all"] = "chosen"
    """``chosen``: each metric at the layer its evaluation reported; ``all``: at every read layer
    of the decoder too (each costs as much again), as ``<metric>@<layer>``."""
    batch_size: int = bounded(16, minimum=1)
    """Decoder prompts per forward pass."""
    dtype: Dtype = "float32"
    """Compute dtype of the model."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""

    def __post_init__(self) -> None:
        if "true" not in self.conditions:
            raise stage.ParamsError(
                f"reading_curve: conditions {self.conditions} must include true"
            )
        if not self.metrics:
            raise stage.ParamsError("reading_curve: metrics must name at least one metric")


def _points(scored: dict[str, list[float]], bootstrap: int, seed: int) -> dict[str, Any]:
    from pipeline.core.stats import summarize

    out: dict[str, Any] = {
        "conditions": {c: summarize(v, bootstrap, seed) for c, v in scored.items()}
    }
    if "shuffled" in scored:
        diffs = [a - b for a, b in zip(scored["true"], scored["shuffled"], strict=True)]
        out["grounding_gap"] = summarize(diffs, bootstrap, seed)
    return out


def metric_layers(metrics, eval_report: dict, settings, choice) -> dict[str, int | str]:
    """Each metric's read layer: where the evaluation reported it (``eval.json``), else the layer
    chosen for its family (``all`` for a decoder that reads every layer at once)."""
    from pipeline.evaluation.layer_runs import ALL

    layers: dict[str, int | str] = {}
    for metric in metrics:
        reported = eval_report.get("metrics", {}).get(metric.name, {}).get("layer")
        if reported is None:
            reported = ALL if settings.all_layers else choice.for_families(metric.families)[0]
        if reported != ALL and (settings.all_layers or reported not in settings.read_layers):
            raise SystemExit(
                f"reading_curve: eval.json reports {metric.name} at layer {reported!r}, which the "
                f"decoder does not read alone (it reads {list(settings.read_layers)})"
            )
        layers[metric.name] = reported
    return layers


def curve_entries(metrics, layers: dict[str, int | str], scope: str, settings) -> list[tuple]:
    """(name suffix, metric, layer) to score: each metric at its layer, named as the metric; with
    ``scope == "all"`` also at every other read layer, named ``<metric>@<layer>``."""
    entries = [("", m, layers[m.name]) for m in metrics]
    if scope == "all" and not settings.all_layers:
        entries += [
            (f"@{layer}", m, layer)
            for m in metrics
            for layer in settings.read_layers
            if layer != layers[m.name]
        ]
    return entries


def score_step(model, tokenizer, entries, at, perms, params, eval_params, scorers):
    """Per curve name (one per entry and scorer): condition -> per-item scores; and prediction
    records. ``entries``: (name suffix, metric, layer) from :func:`curve_entries`; ``at[layer]``:
    that layer's (reads, settings)."""
    from pipeline.evaluation.conditions import run_condition, score_rows

    scored: dict[str, dict[str, list[float]]] = {}
    records: list[dict[str, Any]] = []
    for where, metric, layer in entries:
        names = [metric.name + s + where for s in _suffixes(metric)]
        reads, settings = at[layer]
        for condition in params.conditions:
            if condition == "text_only" and where:
                continue  # text reads no layer: scored once, with the metric's own entry
            rows = run_condition(
                model, tokenizer, metric, condition, reads, perms[metric.name], settings,
                eval_params,
            )  # fmt: skip
            for scorer in metric.scorers:
                scores = score_rows(scorer, metric.items, rows, *scorers)
                for row, score in zip(rows, scores, strict=True):
                    row[scorer] = score
            for name, scorer in zip(names, metric.scorers or ("score",), strict=True):
                scored.setdefault(name, {})[condition] = [r[scorer] for r in rows]
            read_at = None if condition == "text_only" else layer  # text reads no layer
            for item, row in zip(metric.items, rows, strict=True):
                records.append({"metric": metric.name, "item": item.id, "condition": condition,
                                "layer": read_at, **row})  # fmt: skip
    return scored, records


def run(params: CurveParams, inputs: dict[str, Path], workdir: Path, info: dict) -> None:
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    from pipeline.core.stats import derangement
    from pipeline.data.schema import read_dialogs
    from pipeline.evaluation.concepts import load_synonyms
    from pipeline.evaluation.items import build_metrics
    from pipeline.evaluation.latentqa_rows import latentqa_rows_to_score
    from pipeline.evaluation.layer_runs import ALL
    from pipeline.evaluation.params import EvalParams
    from pipeline.evaluation.scoring import load_similarity
    from pipeline.mechanism import layer_choice
    from pipeline.mechanism.decoder_files import check_base_model, load_decoder
    from pipeline.mechanism.decoder_settings import DecoderSettings
    from pipeline.mechanism.reading import compute_reads, target_mode
    from pipeline.training.checkpoint_adapters import published

    adapters = published(inputs["train"])
    if not adapters:
        raise SystemExit(
            f"reading_curve: {inputs['train']} has no checkpoint_adapters/ (train.adapter_every)"
        )
    started = time.time()
    manifest = json.loads((inputs["train"] / "_manifest.json").read_text())
    eval_manifest = json.loads((inputs["evaluate"] / "_manifest.json").read_text())
    eval_params = stage.build_params(EvalParams, eval_manifest["params"], "evaluate params")
    eval_params.batch_size = params.batch_size
    settings = DecoderSettings.from_manifest(manifest)
    choice = layer_choice.read(inputs["train"] / "adapter", list(settings.read_layers))
    eval_report = json.loads((inputs["evaluate"] / "eval.json").read_text())
    model, tokenizer = load_decoder(
        inputs["model"], adapters[0][1], manifest, params.dtype, params.device
    )
    rows = read_dialogs(inputs["data"] / "dialogs.parquet")
    latentqa = latentqa_rows_to_score(inputs, rows, eval_params.latentqa_source)
    metrics = [
        m
        for m in build_metrics(eval_params, rows, latentqa, inputs["relations"], tokenizer)
        if m.name in params.metrics
    ]
    for metric in metrics:
        metric.items = metric.items[: params.max_items]
    metrics = [m for m in metrics if len(m.items) >= 2]
    needs_similarity = any("similarity" in m.scorers for m in metrics)
    scorers = (
        load_similarity(eval_params.similarity) if needs_similarity else None,
        load_synonyms(inputs["synonyms"]),
    )
    perms = {m.name: derangement([it.group for it in m.items], eval_params.seed) for m in metrics}
    layers = metric_layers(metrics, eval_report, settings, choice)
    entries = curve_entries(metrics, layers, params.layers, settings)
    at: dict[int | str, tuple[dict, Any]] = {}
    for layer in sorted({layer for _, _, layer in entries}, key=str):
        there = settings if layer == ALL else settings.with_layer(int(layer))
        dialogs = sorted(
            {i.dialog for _, m, at_layer in entries if at_layer == layer for i in m.items}
        )
        computed = compute_reads(
            model,
            tokenizer,
            [([{"role": r, "content": c} for r, c in msgs], k) for msgs, k in dialogs],
            there,
            params.batch_size,
            desc=f"reading block {layer}",
        )
        at[layer] = (dict(zip(dialogs, computed, strict=True)), there)
    steps = ([(0, None)] if params.start else []) + adapters
    curve: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {"reads": round(time.time() - started, 1)}
    with open(workdir / "curve_predictions.jsonl", "w", encoding="utf-8") as out:
        for step, folder in steps:
            tick = time.time()
            if folder is not None:
                check_base_model(folder, inputs["model"], manifest)
                loaded = set_peft_model_state_dict(
                    model, load_file(str(folder / "adapter_model.safetensors"))
                )
                if loaded.unexpected_keys:
                    raise SystemExit(
                        f"reading_curve: {folder} does not fit the decoder "
                        f"({len(loaded.unexpected_keys)} unexpected weights)"
                    )
            with target_mode(model) if folder is None else contextlib.nullcontext():
                scored, records = score_step(
                    model, tokenizer, entries, at, perms, params, eval_params, scorers
                )
            for name, by_condition in scored.items():
                point = _points(by_condition, eval_params.bootstrap, eval_params.seed)
                curve.setdefault(name, {"points": []})["points"].append({"step": step, **point})
            for record in records:
                out.write(json.dumps({"step": step, **record}, ensure_ascii=False) + "\n")
            seconds[f"step_{step}"] = round(time.time() - tick, 1)
            log.info("step %d scored in %.0f s", step, time.time() - tick)
    for where, metric, layer in entries:
        for suffix in _suffixes(metric):
            curve[metric.name + suffix + where].update(
                kind=_kind(metric, metric.name + suffix),
                n=len(metric.items),
                items=[i.id for i in metric.items],
                layer=layer,
            )
    seconds["total"] = round(time.time() - started, 1)
    report = {
        "steps": [s for s, _ in steps],
        "conditions": list(params.conditions),
        "layers": list(settings.read_layers),
        "train_key": manifest.get("key"),
        "evaluate_key": eval_manifest.get("key"),
        "metrics": curve,
        "seconds": seconds,
    }
    (workdir / "curve.json").write_text(json.dumps(report, indent=2) + "\n")
    info.update(steps=report["steps"], items=sum(len(m.items) for m in metrics))
    info["seconds"] = seconds["total"]


def _suffixes(metric) -> list[str]:
    """Name suffixes of a metric's scorers: its first scorer gives the metric's own name."""
    return ["", *(f"_{s}" for s in metric.scorers[1:])]


def _kind(metric, name: str) -> str:
    """The scorer behind a metric name (``recovery_heldout_concept`` -> ``concept``)."""
    if not metric.scorers:
        return "loglik"
    return name[len(metric.name) + 1 :] if name != metric.name else metric.scorers[0]


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stage.main(
        "reading_curve",
        CurveParams,
        run,
        needs=("model", "train", "evaluate", "data", "relations", "synonyms"),
    )
