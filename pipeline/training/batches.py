"""A training batch: the decoder examples of some indices with their read activations, loaded
from the activation cache or read on the fly from the target (the same module, adapter off)."""

from __future__ import annotations

import torch

from pipeline.mechanism.decoder import DecoderBatch, collate
from pipeline.mechanism.patching import gather, pad_batch, read_activations
from pipeline.training.distributed import Dist
from pipeline.training.train_data import ExampleSet, example_layers


def make_batch(
    data: ExampleSet,
    indices: list[int],
    model,
    pad_id: int,
    params,
    ctx: Dist,
    autocast,
    trainable: list[torch.Tensor] = (),
) -> tuple[DecoderBatch, int]:
    """The decoder batch of ``indices``, with activations read (or loaded); target tokens run.

    ``trainable``: the optimizer's parameters, whose ``requires_grad`` is restored after the target
    forward (needed under FSDP, see below).
    """
    examples = [data.examples[i] for i in indices]
    wanted = sorted(
        {(ex.dialog, layer) for ex in examples for layer in example_layers(params, ex.layer)}
    )
    target_tokens = 0
    if data.cache is not None:
        acts = {(d, layer): data.cache.get(data.dialog_ids[d], layer) for d, layer in wanted}
    else:
        dialogs = sorted({d for d, _ in wanted})
        layers = sorted({layer for _, layer in wanted})
        if params.parallel == "fsdp":
            # Every block forward gathers its shards from all ranks: every rank must run the same
            # blocks, whatever layers its own micro-batch reads.
            layers = sorted(set(layers) | {max(params.read_layers)})
        reads = [data.reads[d] for d in dialogs]
        ids, mask = pad_batch([r.input_ids for r in reads], pad_id)
        target_tokens = int(mask.sum())
        was_training = model.training
        # PEFT's disable_adapter turns requires_grad off and on again on the module's current
        # parameters; under FSDP those may be the unsharded views, so the sharded weights the
        # optimizer holds would stay frozen.
        model.eval()
        with model.disable_adapter(), torch.no_grad(), autocast():
            out = read_activations(model, ids.to(ctx.device), mask.to(ctx.device), layers)
        model.train(was_training)
        for param in trainable:
            param.requires_grad_(True)
        positions = [r.read_positions for r in reads]
        acts = {}
        for layer in layers:
            for d, rows in zip(dialogs, gather(out[layer], positions), strict=True):
                acts[(d, layer)] = rows
    values = [
        torch.cat([acts[(ex.dialog, layer)] for layer in example_layers(params, ex.layer)])
        for ex in examples
    ]
    batch = collate([ex.decoder for ex in examples], values, pad_id)
    return batch.to(ctx.device), target_tokens
