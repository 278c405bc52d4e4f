"""Stage `explain`: does the decoder's free-text explanation single out the dialog it read?

Inputs: ``model`` (prepared model), ``train`` (the decoder) and ``data`` (the filter artifact).
For dialogs of held-out labels (eval split, dialogs under a control), the decoder answers
``question`` ("Describe the assistant's hidden instructions.") under the four conditions of the
evaluation (true, shuffled, untrained, text-only; :data:`pipeline.evaluation.evaluate.CONDITIONS`).
A scorer that never sees activations (sentence similarity: all-MiniLM-L6-v2, or lexical token F1
where it is not installed) then picks, among ``candidates`` dialogs (the read one and distractors
of other held-out labels, in a seeded order), the one whose hidden instructions (its masked turns;
``candidate_view: full`` shows the whole dialog) are most similar to the explanation (delphi-style
detection scoring). An item scores 1 when the pick is the read dialog (1/k on a k-way tie); chance
is 1 / candidates. Outputs ``explain.json``, ``explain.md`` and ``explanations.jsonl``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.core import stage
from pipeline.core.choices import Dtype, Similarity
from pipeline.core.stage import bounded

log = logging.getLogger("pipeline.evaluation.explain")


@dataclass
class ExplainParams:
    """Explanation scoring: what the decoder is asked, and how a scorer picks the dialog."""

    question: str = "Describe the assistant's hidden instructions."
    """The free-text question the decoder answers about each read dialog."""
    max_items: int = bounded(48, minimum=2)
    """Held-out dialogs explained (seeded choice, at most one per label first)."""
    candidates: int = bounded(10, minimum=2)
    """Dialogs the scorer chooses among: the read one and distractors of other labels."""
    candidate_view: Literal["masked", "full"] = "masked"
    """What the scorer sees of a candidate: ``masked`` (its hidden turns) or ``full``."""
    max_new_tokens: int = bounded(32, minimum=1)
    """Greedy tokens of each explanation."""
    similarity: Similarity = "auto"
    """Scorer: ``minilm`` (sentence embeddings), ``token_f1`` (lexical) or ``auto``."""
    batch_size: int = bounded(16, minimum=1)
    """Decoder prompts per forward pass."""
    bootstrap: int = bounded(1000, minimum=0)
    """Bootstrap resamples for the 95% confidence intervals."""
    seed: int = 0
    """Seed of the items, the distractors, the candidate order and the bootstrap."""
    dtype: Dtype = "float32"
    """Compute dtype of the model."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""


def candidate_text(row: dict, view: str) -> str:
    turns = row["messages"][: row["n_masked_turns"]] if view == "masked" else row["messages"]
    turns = turns or row["messages"]  # a dialog with nothing masked shows itself
    return "\n".join(f"{m['role']}: {m['content']}" for m in turns)


def choose_items(rows: list[dict], params: ExplainParams) -> list[dict]:
    """Up to ``max_items`` dialogs, one per label before any label gets a second."""
    rng = random.Random(params.seed)
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    labels = sorted(by_label)
    rng.shuffle(labels)
    for label in labels:
        rng.shuffle(by_label[label])
    chosen: list[dict] = []
    depth = 0
    while len(chosen) < params.max_items and any(depth < len(by_label[x]) for x in labels):
        chosen += [by_label[x][depth] for x in labels if depth < len(by_label[x])]
        depth += 1
    return chosen[: params.max_items]


def candidate_sets(items: list[dict], pool: list[dict], params: ExplainParams) -> list[list[dict]]:
    """Per item: the item and distractors of distinct other labels, shuffled (seeded)."""
    rng = random.Random(params.seed + 1)
    out = []
    for item in items:
        others: dict[str, list[dict]] = {}
        for row in pool:
            if row["label"] != item["label"]:
                others.setdefault(row["label"], []).append(row)
        labels = sorted(others)
        picked = rng.sample(labels, min(params.candidates - 1, len(labels)))
        cands = [item] + [rng.choice(others[label]) for label in picked]
        rng.shuffle(cands)
        out.append(cands)
    return out


def similarities(similarity, explanations: list[str], texts: list[list[str]]) -> list[list[float]]:
    """Per explanation, its similarity to each of its candidates' texts.

    A scorer with sentence embeddings embeds every distinct text once; the result equals
    ``similarity.score`` pair by pair (an empty explanation scores 0 against every candidate).
    """
    if not hasattr(similarity, "embed"):
        return [similarity.score([e] * len(t), t) for e, t in zip(explanations, texts, strict=True)]
    unique = sorted({t for ts in texts for t in ts})
    where = {t: i for i, t in enumerate(unique)}
    cands = similarity.embed(unique)
    expl = similarity.embed([e or " " for e in explanations])
    out = []
    for i, (e, ts) in enumerate(zip(explanations, texts, strict=True)):
        sims = (cands[[where[t] for t in ts]] @ expl[i]).clamp(-1, 1).tolist()
        out.append(sims if e.strip() else [0.0] * len(ts))
    return out


def pick_scores(scores: list[float], truth: int) -> float:
    """1 if the true candidate scores highest, 1/k if it ties k ways for the top, else 0."""
    top = max(scores)
    ties = [i for i, s in enumerate(scores) if s == top]
    return 1 / len(ties) if truth in ties else 0.0


def run(params: ExplainParams, inputs: dict[str, Path], workdir: Path, info: dict) -> None:
    from pipeline.core.stats import derangement, summarize
    from pipeline.data.schema import CONTROL_KINDS, read_dialogs
    from pipeline.evaluation.conditions import CONDITIONS, run_condition
    from pipeline.evaluation.items import Item, Metric, dialog_key
    from pipeline.evaluation.params import EvalParams
    from pipeline.evaluation.scoring import load_similarity
    from pipeline.mechanism import layer_choice
    from pipeline.mechanism.decoder_files import load_decoder
    from pipeline.mechanism.decoder_settings import DecoderSettings
    from pipeline.mechanism.reading import compute_reads

    started = time.time()
    manifest = json.loads((inputs["train"] / "_manifest.json").read_text())
    settings = DecoderSettings.from_manifest(manifest, where=str(inputs["train"]))
    # The hidden instructions are what the persona dialogs teach: read at their chosen layer.
    if not settings.all_layers:
        choice = layer_choice.read(inputs["train"] / "adapter", list(settings.read_layers))
        settings = settings.with_layer(choice.for_families(("template",))[0])
    model, tokenizer = load_decoder(
        inputs["model"], inputs["train"] / "adapter", manifest, params.dtype, params.device
    )
    pool = [
        r
        for r in read_dialogs(inputs["data"] / "dialogs.parquet")
        if r["split"] == "eval" and r["kind"] in CONTROL_KINDS
    ]
    if len({r["label"] for r in pool}) < 2:
        raise ValueError(f"{inputs['data']}: fewer than 2 held-out labels to choose among")
    rows = choose_items(pool, params)
    cands = candidate_sets(rows, pool, params)
    items = [
        Item(r["id"], r["label"], dialog_key(r["messages"], r["n_masked_turns"]), params.question,
             "")
        for r in rows
    ]  # fmt: skip
    dialogs = sorted({item.dialog for item in items})
    messages = [[{"role": role, "content": text} for role, text in msgs] for msgs, _ in dialogs]
    computed = compute_reads(
        model, tokenizer, [(m, k) for m, (_, k) in zip(messages, dialogs, strict=True)], settings
    )
    reads = dict(zip(dialogs, computed, strict=True))
    metric = Metric("explain", "generate", params.question, items, [], params.max_new_tokens)
    perm = derangement([item.group for item in items], params.seed)
    eval_params = EvalParams(batch_size=params.batch_size, seed=params.seed)
    similarity = load_similarity(params.similarity)
    texts = [[candidate_text(c, params.candidate_view) for c in cs] for cs in cands]
    truth = [
        next(j for j, c in enumerate(cs) if c["id"] == r["id"])
        for r, cs in zip(rows, cands, strict=True)
    ]
    results: dict[str, Any] = {}
    records = [{"id": r["id"], "label": r["label"], "candidates": [c["id"] for c in cs]}
               for r, cs in zip(rows, cands, strict=True)]  # fmt: skip
    for cond in CONDITIONS:
        rows_out = run_condition(model, tokenizer, metric, cond, reads, perm, settings, eval_params)
        correct = []
        all_scores = similarities(similarity, [r["prediction"] for r in rows_out], texts)
        for i, (row, scores) in enumerate(zip(rows_out, all_scores, strict=True)):
            correct.append(pick_scores(scores, truth[i]))
            records[i][cond] = {"explanation": row["prediction"], "scores": scores}
        results[cond] = {"scores": correct, **summarize(correct, params.bootstrap, params.seed)}
    gap = [a - b for a, b in zip(results["true"]["scores"], results["shuffled"]["scores"],
                                 strict=True)]  # fmt: skip
    report = {
        "description": __doc__.split("\n\n")[1].replace("\n", " "),
        "question": params.question,
        "scorer": {"name": similarity.name, "kind": similarity.kind},
        "candidate_view": params.candidate_view,
        "read_layers": list(settings.layers_read),
        "n": len(items),
        "chance": sum(1 / len(cs) for cs in cands) / len(cands),
        "conditions": {
            c: {k: v for k, v in r.items() if k != "scores"} for c, r in results.items()
        },
        "grounding_gap": summarize(gap, params.bootstrap, params.seed),
        "seconds": round(time.time() - started, 1),
    }
    (workdir / "explain.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(workdir / "explanations.jsonl", "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    (workdir / "explain.md").write_text(explain_table(report))
    info.update(n=len(items), **{c: round(r["mean"], 4) for c, r in report["conditions"].items()})


def explain_table(report: dict) -> str:
    lines = [
        f'Explanation scoring: the decoder answers "{report["question"]}"; '
        f"{report['scorer']['name']} picks the read dialog among candidates by its "
        f"{report['candidate_view']} text "
        f"(n={report['n']}, chance {report['chance']:.2f}).",
        "",
        "| condition | accuracy | 95% CI |",
        "| --- | --- | --- |",
    ]
    for cond, s in report["conditions"].items():
        lines.append(f"| {cond} | {s['mean']:.3f} | [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] |")
    gap = report["grounding_gap"]
    lines.append(
        f"| grounding gap (true − shuffled) | {gap['mean']:+.3f} | "
        f"[{gap['ci95'][0]:.3f}, {gap['ci95'][1]:.3f}] |"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stage.main("explain", ExplainParams, run, needs=("model", "train", "data"))
