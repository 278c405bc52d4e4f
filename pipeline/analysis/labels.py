"""The label task: which held-out label (persona, goal) produced a dialog, among a few labels of
its split that answer the same recovery question (its own and seeded distractors).

Labels are split as in the evaluation (the filter's train / validation / eval splits, disjoint by
label), so a held-out label was never seen in training: a plain classifier has no class for it.
The supervised reader is therefore a multinomial logistic regression whose class weights are a
linear map of each label's description embedding (the reference answer to the recovery question,
"A retired lighthouse keeper."): fitted on the train labels' dialogs, it scores a held-out label
from that label's own description. The decoder is asked the same recovery question about the
same dialog and picks the candidate description it finds most likely (mean log-likelihood per
token), so both choose among the same candidates for the same items; chance is 1 / candidates.
A label task is a recovery question shared by at least ``min_labels`` labels in every split
(persona and goal questions; scenario questions are specific to one label and drop out).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import torch

from pipeline.analysis import readers
from pipeline.analysis.params import ProbeParams
from pipeline.core.stats import summarize

log = logging.getLogger("pipeline.analysis.labels")
SPLITS = ("train", "validation", "eval")


@dataclass
class LabelTask:
    """Items of every split with the candidates each may be named as."""

    descriptions: list[str]
    """Every candidate label's description; candidates are indices into it."""
    questions: list[str]
    """Each candidate's recovery question."""
    items: dict[str, list[dict]] = field(default_factory=dict)
    """Per split: rows with ``target`` and ``options`` (candidate indices) added."""


def build_task(rows: list[dict], cached_ids: set[str], params: ProbeParams) -> LabelTask:
    """The label task of the cached dialogs; candidates share the item's question and split."""
    labels: dict[str, tuple[str, str, str]] = {}  # label -> (question, description, split)
    for row in rows:
        if row["id"] in cached_ids and row["qa"]:
            qa = row["qa"][0]
            labels.setdefault(row["label"], (qa["question"], qa["answer"], row["split"]))
    groups: dict[tuple[str, str], list[str]] = {}
    for label, (question, _, split) in sorted(labels.items()):
        groups.setdefault((question, split), []).append(label)
    questions = {q for q, _ in groups}
    kept = [
        q for q in sorted(questions) if all(len(groups.get((q, s), [])) >= params.min_labels
                                            for s in SPLITS)
    ]  # fmt: skip
    names = sorted(label for label, (q, _, _) in labels.items() if q in kept)
    index = {label: i for i, label in enumerate(names)}
    task = LabelTask([labels[n][1] for n in names], [labels[n][0] for n in names])
    for split in SPLITS:
        chosen = [
            row
            for row in rows
            if row["id"] in cached_ids and row["label"] in index and row["split"] == split
        ]
        if split != "train" and len(chosen) > params.max_label_items:
            chosen = random.Random(f"{params.seed}:{split}").sample(chosen, params.max_label_items)
        rng = random.Random(f"{params.seed}:{split}:candidates")
        task.items[split] = []
        for row in chosen:
            target = index[row["label"]]
            options = [index[x] for x in groups[(labels[row["label"]][0], split)]]
            if split != "train":
                others = [o for o in options if o != target]
                keep = rng.sample(others, min(params.label_candidates - 1, len(others)))
                options = sorted([target, *keep])
            task.items[split].append({**row, "target": target, "options": options})
    log.info(
        "label task: questions %s, items %s",
        kept,
        {s: len(v) for s, v in task.items.items()},
    )
    return task


def label_embeddings(texts: list[str], model, tokenizer) -> tuple[torch.Tensor, str]:
    """(L2-normalised embeddings, the embedder's name): all-MiniLM-L6-v2 when installed, else the
    mean of the model's own input embeddings of each description's tokens."""
    from pipeline.mechanism.similarity import MiniLMSimilarity, minilm_available

    if minilm_available():
        return MiniLMSimilarity().embed(texts), "all-MiniLM-L6-v2"
    table = model.get_input_embeddings().weight.detach().float().cpu()
    rows = [table[tokenizer(t, add_special_tokens=False)["input_ids"]].mean(0) for t in texts]
    embedded = torch.stack(rows)
    embedded = embedded - embedded.mean(0, keepdim=True)
    return torch.nn.functional.normalize(embedded, dim=-1), "mean input embedding of the model"


def _summary(correct: list[float], params: ProbeParams) -> dict:
    return summarize(correct, params.bootstrap, params.seed)


def layer_readers(cache, task: LabelTask, emb: torch.Tensor, params: ProbeParams) -> dict:
    """Per method and block: the held-out splits' accuracy of naming the label."""
    pool = params.labels_pooling
    train = task.items["train"]
    train_labels = sorted({it["target"] for it in train})
    target = torch.tensor([train_labels.index(it["target"]) for it in train])
    out: dict[str, dict] = {"logistic": {}, "random": {}}
    for layer in cache.layers:
        feats = {s: cache.features(pool, layer, [it["id"] for it in task.items[s]]) for s in SPLITS}
        scaled = dict(zip(SPLITS, readers.standardize(*[feats[s] for s in SPLITS]), strict=True))
        weight = readers.fit_label_probe(
            scaled["train"], target, emb[train_labels], params.label_l2, params.max_iter
        )
        maps = readers.random_maps(
            weight.shape[0], weight.shape[1], params.random_directions, params.seed
        )
        for split in SPLITS[1:]:
            items = task.items[split]
            options = [it["options"] for it in items]
            truth = [it["target"] for it in items]
            picks = readers.label_choice(scaled[split], weight, emb, options)
            random_correct = torch.tensor(
                [
                    [float(p == t) for p, t in zip(readers.label_choice(scaled[split], m, emb,
                                                                        options), truth,
                                                   strict=True)]
                    for m in maps
                ]
            ).mean(0)  # fmt: skip
            out["logistic"].setdefault(str(layer), {})[split] = _summary(
                [float(p == t) for p, t in zip(picks, truth, strict=True)], params
            )
            out["random"].setdefault(str(layer), {})[split] = _summary(
                random_correct.tolist(), params
            )
    return out


def chance(task: LabelTask, split: str) -> float:
    items = task.items[split]
    return sum(1 / len(it["options"]) for it in items) / max(len(items), 1)


def decoder_reader(model, tokenizer, settings, task: LabelTask, params: ProbeParams) -> dict:
    """The decoder's pick among the same candidates, on the eval split."""
    from pipeline.analysis.prompting import decoder_logliks

    items = task.items["eval"]
    dialogs = [(it["messages"], it["n_masked_turns"]) for it in items]
    queries = [(i, task.questions[c], task.descriptions[c]) for i, it in enumerate(items)
               for c in it["options"]]  # fmt: skip
    scores = decoder_logliks(
        model, tokenizer, settings, dialogs, queries, params.batch_size, "labels/decoder"
    )
    correct, k = [], 0
    for it in items:
        opts = it["options"]
        best = max(range(len(opts)), key=lambda j, k=k: scores[k + j])
        correct.append(float(opts[best] == it["target"]))
        k += len(opts)
    return {
        "question": "the item's recovery question; candidates scored by mean log-likelihood",
        "layer": settings.read_layer,
        "eval": _summary(correct, params),
    }
