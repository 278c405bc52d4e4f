"""Stage `probes`: per-block readers of the residuals beside the decoder, on the same items.

Inputs: ``model`` (prepared model), ``statements`` (the statements artifact) and
``statements_cache`` (its layer cache), ``data`` (the filter artifact) and ``dialogs_cache`` (the
layer cache of its dialogs under a control), optionally ``train`` (a decoder: its accuracy on the
same eval items is reported beside the readers). Two tasks (:mod:`pipeline.analysis.truth`,
:mod:`pipeline.analysis.labels`), each reader's accuracy on the validation split (for choosing a
layer) and the eval split (reported), with bootstrap 95% CIs over items. Outputs ``probes.json``
and ``probes.png`` (accuracy per block, eval split).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from pipeline.analysis.params import ProbeParams
from pipeline.analysis.summary import best
from pipeline.core import stage
from pipeline.mechanism import layer_choice

log = logging.getLogger("pipeline.analysis.probes")
NEEDS = ("model", "statements", "statements_cache", "data", "dialogs_cache")
TRUTH_FAMILIES = ("statements", "public")
"""Training families whose validation items choose the layer the decoder's truth is read at."""


def _at_layers(reader, settings, choice, families) -> dict[str, Any]:
    """The decoder reader at each trained layer: ``decoder`` at the layer the validation split
    chose for ``families``, ``decoder_by_layer`` at every layer (beside the probes' blocks)."""
    if settings.all_layers:  # one reading of every layer at once: nothing to choose among
        return {"decoder": reader(settings)}
    by_layer = {layer: reader(settings.with_layer(layer)) for layer in settings.read_layers}
    chosen, _ = choice.for_families(families)
    out: dict[str, Any] = {"decoder": by_layer[chosen]}
    if len(by_layer) > 1:
        out["decoder_by_layer"] = {str(layer): r["eval"] for layer, r in by_layer.items()}
        if "answer_state" in by_layer[chosen]:
            out["answer_state_by_layer"] = {
                str(layer): r["answer_state"]["eval"] for layer, r in by_layer.items()
            }
    return out


def run(params: ProbeParams, inputs: dict[str, Path], workdir: Path, info: dict[str, Any]) -> None:
    import json

    import torch

    from pipeline.analysis import labels, truth
    from pipeline.analysis.layer_cache import LayerCache
    from pipeline.analysis.plots import plot_probes
    from pipeline.analysis.prompting import load_reader_model
    from pipeline.data.schema import read_dialogs

    started = time.time()
    torch.manual_seed(params.seed)
    model, tokenizer, settings = load_reader_model(inputs, params.dtype, params.device)
    choice = None
    if settings is not None:
        choice = layer_choice.read(inputs["train"] / "adapter", list(settings.read_layers))
    statements_cache = LayerCache(inputs["statements_cache"])
    pairs = truth.contrast_pairs(
        read_dialogs(inputs["statements"] / "dialogs.parquet"), params.seed
    )
    report: dict[str, Any] = {
        "layers": statements_cache.layers,
        "decoder": None if settings is None else settings.describe(),
        "tasks": {},
    }
    truth_result = {
        "description": "pick the true member of each held-out contrast pair (a relation fact "
        "and a copy with another fact's object); accuracy over pairs",
        "chance": 0.5,
        "pooling": params.statements_pooling,
        "n_pairs": {split: len(p.ids_a) for split, p in pairs.items()},
        "per_layer": truth.layer_readers(statements_cache, pairs, params),
        **truth.prompted_readers(model, tokenizer, pairs["eval"], params),
    }
    if settings is not None:
        truth_result.update(
            _at_layers(
                lambda at: truth.decoder_truth(model, tokenizer, at, pairs, params),
                settings,
                choice,
                TRUTH_FAMILIES,
            )
        )
    report["tasks"]["truth"] = truth_result
    log.info("truth task done (%.0f s)", time.time() - started)

    dialogs_cache = LayerCache(inputs["dialogs_cache"])
    rows = read_dialogs(inputs["data"] / "dialogs.parquet")
    task = labels.build_task(rows, set(dialogs_cache.index["id"].to_list()), params)
    if task.items.get("eval"):
        emb, embedder = labels.label_embeddings(task.descriptions, model, tokenizer)
        label_result: dict[str, Any] = {
            "description": "name the label of a dialog whose label was held out from training, "
            f"among {params.label_candidates} labels of its split answering the same recovery "
            "question (its own and seeded distractors)",
            "chance": {s: labels.chance(task, s) for s in ("validation", "eval")},
            "pooling": params.labels_pooling,
            "embedder": embedder,
            "n_items": {s: len(v) for s, v in task.items.items()},
            "n_labels": len(task.descriptions),
            "per_layer": labels.layer_readers(dialogs_cache, task, emb, params),
        }
        if settings is not None:
            label_result.update(
                _at_layers(
                    lambda at: labels.decoder_reader(model, tokenizer, at, task, params),
                    settings,
                    choice,
                    ("template",),
                )
            )
        report["tasks"]["labels"] = label_result
    else:
        report["tasks"]["labels"] = {"skipped": "no recovery question shared by enough labels"}
    report["seconds"] = round(time.time() - started, 1)
    (workdir / "probes.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_probes(report, workdir / "probes.png")
    info["seconds"] = report["seconds"]
    info["best_layer"] = {
        name: best_layer(result, "eval")
        for name, result in report["tasks"].items()
        if "per_layer" in result
    }
    log.info("probes in %.0f s", report["seconds"])


def best_layer(result: dict, split: str, method: str = "logistic") -> int | None:
    """The block where ``method`` is most accurate on ``split`` (the earliest on a tie)."""
    top = best(result.get("per_layer", {}).get(method, {}), split)
    return top[0] if top else None


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stage.main("probes", ProbeParams, run, needs=NEEDS)
