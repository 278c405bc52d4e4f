"""The four conditions every metric is scored under, and how one condition runs on one metric.

``true``, ``shuffled`` and ``untrained`` read activations, so they run at each read layer of the
decoder; ``text_only`` gives the decoder the read tokens as text and runs once.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from pipeline.data.matching import names_in
from pipeline.evaluation.concepts import concept_hit
from pipeline.evaluation.items import Item, Metric
from pipeline.evaluation.params import EvalParams
from pipeline.evaluation.scoring import debiased_scores, normalized_match, pairwise_scores
from pipeline.mechanism.decoder_prompt import DecoderExample, build_decoder_example
from pipeline.mechanism.decoder_settings import DecoderSettings
from pipeline.mechanism.reading import (
    Read,
    choice_scores,
    generate_batched,
    loglik_batched,
    target_mode,
)

CONDITIONS = {
    "true": "the decoder reads the item's own activations",
    "shuffled": "the decoder reads another item's activations (a fixed derangement that avoids "
    "items of the same label where possible)",
    "untrained": "the base model (adapter disabled) reads the item's own activations "
    "(Patchscope-style)",
    "text_only": "the decoder is given the read dialog's unmasked tokens as text in place of the "
    "placeholders, with no activations (and no layer named: it reads no layer)",
}
READING = ("true", "shuffled", "untrained")
"""The conditions that read activations, run at every read layer."""


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
    answers: list[str | None],
):
    """(examples, activations, donor item ids) of the items under one condition; ``answers``
    holds each item's scored answer (None to generate one)."""
    examples, acts, donors = [], [], []
    for i, item in enumerate(items):
        read = reads[item.dialog]
        donor = item
        if condition == "shuffled":
            donor = items[perm[i]]
            read = reads[donor.dialog]
        if condition == "text_only":
            examples.append(
                text_only_example(
                    tokenizer, read, item.question, answers[i], settings.align_positions
                )
            )
            acts.append(torch.zeros(0, read.acts.shape[-1]))
        else:
            examples.append(
                build_decoder_example(
                    tokenizer,
                    read.read_positions,
                    item.question,
                    answers[i],
                    settings.align_positions,
                    settings.at(),
                )
            )
            acts.append(read.acts)
        donors.append(donor.id)
    return examples, acts, donors


def ablation_inputs(
    items: list[Item],
    layer_reads: dict[int, dict],
    perm: list[int],
    keep: int,
    tokenizer,
    settings: DecoderSettings,
    answers: list[str | None],
):
    """For a decoder reading every layer at once: each item's own activations in the group of
    block ``keep``, its donor's (the shuffled condition's) in the other groups; what block
    ``keep`` alone tells the decoder. ``layer_reads[layer][dialog]`` reads one layer."""
    examples, acts, donors = [], [], []
    for i, item in enumerate(items):
        donor = items[perm[i]]
        groups = [
            layer_reads[layer][item.dialog if layer == keep else donor.dialog]
            for layer in settings.read_layers
        ]
        examples.append(
            build_decoder_example(
                tokenizer,
                [read.read_positions for read in groups],
                item.question,
                answers[i],
                settings.align_positions,
                settings.at(),
            )
        )
        acts.append(torch.cat([read.acts for read in groups]))
        donors.append(donor.id)
    return examples, acts, donors


def run_condition(
    model,
    tokenizer,
    metric: Metric,
    condition: str,
    reads,
    perm,
    settings,
    params: EvalParams,
    keep: int | None = None,
    layer_reads: dict[int, dict] | None = None,
) -> list[dict[str, Any]]:
    """Per item: the donor and the NLL with its score (``loglik``), the answer picked among the
    item's choices with its score (``choice``), or the prediction (``generate``, scored later).

    ``keep`` (a decoder reading every layer at once): only block ``keep`` holds the item's own
    activations (:func:`ablation_inputs`, from ``layer_reads``)."""
    items = metric.items
    desc = f"{metric.name}/{condition}"
    if condition != "text_only" and len(settings.read_layers) > 1:
        at = settings.read_layer if keep is None else keep
        desc += f"@{'all' if settings.all_layers and keep is None else at}"

    def inputs(answers):
        if keep is not None:
            return ablation_inputs(items, layer_reads, perm, keep, tokenizer, settings, answers)
        return condition_inputs(condition, items, reads, perm, tokenizer, settings, answers)

    def loglik(examples, acts, label):
        return loglik_batched(
            model, tokenizer, examples, acts, params.batch_size, label, settings.inject
        )

    with target_mode(model) if condition == "untrained" else contextlib.nullcontext():
        if metric.kind == "loglik":
            examples, acts, donors = inputs([it.reference for it in items])
            results = loglik(examples, acts, desc)
            return [
                {"donor": d, "nll": nll, "tokens": n, "score": -nll / max(n, 1)}
                for d, (nll, n) in zip(donors, results, strict=True)
            ]
        if metric.kind == "choice":
            return _choose(model, tokenizer, items, inputs, desc, params, settings.inject)
        examples, acts, donors = inputs([None] * len(items))
        texts = generate_batched(
            model,
            tokenizer,
            examples,
            acts,
            params.batch_size,
            metric.max_new_tokens,
            desc,
            settings.inject,
        )
    return [{"donor": d, "prediction": text} for d, text in zip(donors, texts, strict=True)]


def _choose(model, tokenizer, items, inputs, desc, params, inject) -> list[dict[str, Any]]:
    """Forced choice: the candidate answer the decoder prefers (``reading.choice_scores``)."""
    width = max(len(it.choices) for it in items)
    per_candidate, acts, donors = [], [], []
    for c in range(width):
        answers = [it.choices[min(c, len(it.choices) - 1)] for it in items]
        examples, acts, donors = inputs(answers)
        per_candidate.append(examples)
    candidates = [
        [per_candidate[c][i] for c in range(len(it.choices))] for i, it in enumerate(items)
    ]
    scores = choice_scores(model, tokenizer, candidates, acts, params.batch_size, desc, inject)
    rows = []
    for item, donor, row in zip(items, donors, scores, strict=True):
        picked = item.choices[max(range(len(row)), key=row.__getitem__)]
        rows.append(
            {"donor": donor, "prediction": picked, "score": float(picked == item.reference)}
        )
        if len(row) == 2:
            # How much the first answer is preferred: the ``debiased`` scorer's input.
            rows[-1]["margin"] = row[0] - row[1]
    return rows


_MATCHERS = {
    "match": lambda it, text, _: any(normalized_match(text, r) for r in (it.reference, *it.accept)),
    "entity": lambda it, text, _: names_in(
        text, (it.reference, *it.accept), it.case_sensitive, it.rivals
    ),
    "concept": lambda it, text, synonyms: concept_hit(text, it.reference, synonyms),
}


def score_rows(scorer: str, items: list[Item], rows: list[dict], similarity, synonyms) -> list:
    """One scorer's score of each generated answer (1.0 or 0.0 for the matching scorers), or of
    each choice without the condition's bias (``debiased``), or of each contrast pair
    (``pairwise``: None on its second item)."""
    if scorer == "debiased":
        return debiased_scores(items, rows)
    if scorer == "pairwise":
        return pairwise_scores(items, rows)
    texts = [r["prediction"] for r in rows]
    if scorer == "similarity":
        return similarity.score(texts, [it.reference for it in items])
    if scorer not in _MATCHERS:
        raise ValueError(f"unknown scorer {scorer!r}; known: similarity, {', '.join(_MATCHERS)}")
    match = _MATCHERS[scorer]
    return [float(match(it, text, synonyms)) for it, text in zip(items, texts, strict=True)]
