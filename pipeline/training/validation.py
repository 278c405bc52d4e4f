"""The decoder's loss on examples it does not train on: the held-out curve of ``metrics.jsonl``
and, with several read layers, the layer choice kept with the adapter."""

from __future__ import annotations

from collections.abc import Callable

import torch

from pipeline.mechanism import layer_choice
from pipeline.mechanism.decoder import DecoderBatch, answer_loss
from pipeline.training.distributed import Dist, all_reduce_sum
from pipeline.training.params import TrainParams
from pipeline.training.train_data import ExampleSet, layer_choice_examples

BatchOf = Callable[[ExampleSet, list[int]], tuple[DecoderBatch, int]]
"""The decoder batch of some examples of a set, and the target tokens run to read it
(:func:`pipeline.training.batches.make_batch` with the run's model and device)."""


def example_losses(
    model, data: ExampleSet, batch_of: BatchOf, autocast, params: TrainParams, ctx: Dist
) -> torch.Tensor:
    """(summed NLL, answer tokens) of every example of ``data``, on every rank."""
    model.eval()
    chunk = params.per_device_batch_size * ctx.world_size
    totals = torch.zeros(len(data.examples), 2, dtype=torch.float64, device=ctx.device)
    with torch.no_grad():
        for start in range(0, len(data.examples), chunk):
            indices = list(range(start, min(start + chunk, len(data.examples))))
            mine = indices[ctx.rank :: ctx.world_size]
            # Every rank runs the same number of forwards (FSDP needs it): a rank without
            # examples in this chunk runs one and discards it.
            batch, _ = batch_of(data, mine or indices[:1])
            with autocast():
                nll, count = answer_loss(model, batch, inject=params.inject, reduction="none")
            if mine:
                totals[mine] = torch.stack([nll.double(), count.double()], dim=1)
    model.train()
    return all_reduce_sum(ctx, totals)


def mean_loss(losses_of, data: ExampleSet) -> float | None:
    """The loss per answer token over every example of ``data`` (``losses_of(data)`` as
    :func:`example_losses` gives); None without examples."""
    if not data.examples:
        return None
    totals = losses_of(data).sum(dim=0)
    return float(totals[0] / totals[1])


def choose_layers(
    dialogs: list[dict], tokenizer, params: TrainParams, cache, losses_of
) -> layer_choice.LayerChoice:
    """The layer choice of a decoder trained at several read layers: per data family and layer,
    the mean loss per answer token (``losses_of(examples)``, as :func:`example_losses` gives)
    of some of its validation items, each read at every layer."""
    data = layer_choice_examples(dialogs, tokenizer, params, cache, params.layer_choice_examples)
    losses, layers = losses_of(data), params.read_layers
    sums: dict[str, dict[int, list[float]]] = {}
    questions: dict[str, list[str]] = {}
    for example, (nll, count) in zip(data.examples, losses.tolist(), strict=True):
        slot = sums.setdefault(example.family, {}).setdefault(example.layer, [0.0, 0.0])
        slot[0] += nll
        slot[1] += count
    for example in data.examples:
        asked = questions.setdefault(example.family, [])
        question = example.question
        if question not in asked and len(asked) < layer_choice.SAMPLE_QUESTIONS:
            asked.append(question)
    return layer_choice.LayerChoice(
        losses={
            family: {layer: nll / max(count, 1) for layer, (nll, count) in by_layer.items()}
            for family, by_layer in sums.items()
        },
        counts={
            family: sum(1 for ex in data.examples if ex.family == family) // len(layers)
            for family in sums
        },
        questions=questions,
        layers=list(layers),
        trained={
            family: params.layers_of(family)
            for family in sums
            if params.layers_of(family) != sorted(layers)
        },
    )
