"""The truth task: which member of a held-out contrast pair (a fact and its corrupted copy) is true.

Readers, each scored by picking the true member of every pair of a split (chance 50%):
per block, a logistic probe (supervised, fitted on the train statements one by one), CCS
(unsupervised, fitted on the train pairs, sign fixed on them) and random directions (sign fixed
on the train pairs too); once, the base model prompted "True or false?" and the decoder asked its
question about the statement's activations (first answer token "Yes" against "No"), beside a
logistic probe of the decoder's own state at that answer token (``answer_state``): where the probe
reads truth and the answer does not, the decoder reads it but does not say it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import torch

from pipeline.analysis import readers
from pipeline.analysis.params import ProbeParams
from pipeline.core.stats import summarize
from pipeline.data.statements import is_true

log = logging.getLogger("pipeline.analysis.truth")
HELD_OUT = ("validation", "eval")


@dataclass
class Pairs:
    """The contrast pairs of one split, members in a seeded random order."""

    ids_a: list[str]
    ids_b: list[str]
    rows_a: list[dict]
    rows_b: list[dict]
    a_true: torch.Tensor


def _coin(label: str, seed: int) -> bool:
    return hashlib.sha256(f"{seed}\x1f{label}".encode()).digest()[0] % 2 == 0


def contrast_pairs(rows: list[dict], seed: int) -> dict[str, Pairs]:
    """Pairs by split from the statement rows (two rows per label, one true)."""
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    out: dict[str, Pairs] = {}
    for label, members in by_label.items():
        truths = [is_true(r) for r in members]
        if len(members) != 2 or sum(truths) != 1:
            raise ValueError(f"statements: label {label!r} is not one true and one false row")
        true_row, false_row = (members[0], members[1]) if truths[0] else (members[1], members[0])
        first_true = _coin(label, seed)
        a, b = (true_row, false_row) if first_true else (false_row, true_row)
        pairs = out.setdefault(members[0]["split"], Pairs([], [], [], [], torch.zeros(0)))
        pairs.ids_a.append(a["id"])
        pairs.ids_b.append(b["id"])
        pairs.rows_a.append(a)
        pairs.rows_b.append(b)
        pairs.a_true = torch.cat([pairs.a_true, torch.tensor([float(first_true)])])
    for split in ("train", *HELD_OUT):
        if len(out.get(split, Pairs([], [], [], [], torch.zeros(0))).ids_a) < 2:
            raise ValueError(f"statements: fewer than 2 contrast pairs in the {split} split")
    return out


def _summary(correct: torch.Tensor, params: ProbeParams) -> dict:
    return summarize(correct.float().tolist(), params.bootstrap, params.seed)


def logistic_picks(
    train: tuple[torch.Tensor, torch.Tensor],
    a_true: torch.Tensor,
    held: dict[str, tuple[torch.Tensor, torch.Tensor]],
    params: ProbeParams,
) -> dict[str, torch.Tensor]:
    """A logistic probe fitted on every train statement with its truth (standardised by the
    train rows), and, per held-out split, whether it picks each pair's first member."""
    xa, xb = train
    scaled = readers.standardize(torch.cat([xa, xb]), *[t for pair in held.values() for t in pair])
    a_true = a_true.bool()
    probe = readers.fit_logistic(
        scaled[0], torch.cat([a_true, ~a_true]), params.l2, params.max_iter
    )
    return {
        split: readers.score_choice(probe, scaled[1 + 2 * i], scaled[2 + 2 * i])
        for i, split in enumerate(held)
    }


def layer_readers(cache, pairs: dict[str, Pairs], params: ProbeParams) -> dict[str, dict]:
    """Per method and block: the held-out splits' pair accuracy (summary with 95% CI)."""
    pool = params.statements_pooling
    out: dict[str, dict] = {"logistic": {}, "ccs": {}, "random": {}}
    train = pairs["train"]
    for layer in cache.layers:
        feats = {
            split: (cache.features(pool, layer, p.ids_a), cache.features(pool, layer, p.ids_b))
            for split, p in pairs.items()
        }
        xa, xb = feats["train"]
        a_true = train.a_true.bool()
        logistic = logistic_picks((xa, xb), a_true, {s: feats[s] for s in HELD_OUT}, params)
        # CCS and random directions: each split's members normalised per class on their own.
        normed = {s: readers.normalize_classes(*feats[s]) for s in feats}
        na, nb = normed["train"]
        ccs = readers.fit_ccs(na, nb, params.ccs_restarts, params.ccs_steps, params.seed + layer)
        ccs = readers.orient(ccs, readers.ccs_choice, na, nb, a_true)
        randoms = [
            readers.orient(r, readers.score_choice, na, nb, a_true)
            for r in readers.random_probes(xa.shape[1], params.random_directions, params.seed)
        ]
        for split in HELD_OUT:
            truth = pairs[split].a_true.bool()
            ca, cb = normed[split]
            random_correct = torch.stack(
                [(readers.score_choice(r, ca, cb) == truth).float() for r in randoms]
            ).mean(0)
            results = {
                "logistic": logistic[split] == truth,
                "ccs": readers.ccs_choice(ccs, ca, cb) == truth,
                "random": random_correct,
            }
            for method, correct in results.items():
                out[method].setdefault(str(layer), {})[split] = _summary(correct, params)
    return out


def prompted_readers(model, tokenizer, pairs: Pairs, params: ProbeParams) -> dict:
    """Zero-shot prompting of the base model, on one split."""
    from pipeline.analysis.prompting import zero_shot_true_minus_false

    truth = pairs.a_true.bool()
    texts = [r["messages"][-1]["content"] for r in pairs.rows_a + pairs.rows_b]
    scores = torch.tensor(
        zero_shot_true_minus_false(model, tokenizer, texts, params.batch_size)
    ).view(2, -1)
    return {
        "zero_shot": {
            "prompt": 'the statement, then "True or false?"; logit of "True" minus "False"',
            "eval": _summary((scores[0] > scores[1]) == truth, params),
        }
    }


def decoder_truth(model, tokenizer, settings, pairs: dict[str, Pairs], params: ProbeParams) -> dict:
    """The decoder asked the statements' question, reading at ``settings.read_layer``, on the eval
    pairs: its answer (first token "Yes" against "No"), and a logistic probe of the state that
    answer is projected from (fitted on the train pairs' states): whether what the decoder reads
    reaches the place it answers from, where its answer does not say it."""
    from pipeline.analysis.prompting import decoder_yes_minus_no

    question = pairs["eval"].rows_a[0]["qa"][0]["question"]
    margins, states = {}, {}
    for split in ("train", "eval"):
        rows = pairs[split].rows_a + pairs[split].rows_b
        dialogs = [(r["messages"], r["n_masked_turns"]) for r in rows]
        margin, state = decoder_yes_minus_no(
            model, tokenizer, settings, dialogs, question, params.batch_size
        )
        margins[split] = torch.tensor(margin).view(2, -1)
        states[split] = state.view(2, -1, state.shape[-1])
    truth = pairs["eval"].a_true.bool()
    train_a, train_b = states["train"]
    picks = logistic_picks((train_a, train_b), pairs["train"].a_true, {"eval": states["eval"]},
                           params)  # fmt: skip
    return {
        "question": question,
        "layer": settings.read_layer,
        "eval": _summary((margins["eval"][0] > margins["eval"][1]) == truth, params),
        "answer_state": {
            "description": "logistic probe of the decoder's state at its first answer token "
            "(the vocabulary projection's input), fitted on the train pairs",
            "eval": _summary(picks["eval"] == truth, params),
        },
    }
