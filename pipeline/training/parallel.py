"""How the decoder's training runs on its processes and devices: the DDP or FSDP wrapper,
gradient sync skipped on the micro-steps before the last of an optimizer step, gradient clipping
over sharded parameters, and the autocast of a bfloat16 run."""

from __future__ import annotations

import contextlib
from functools import partial

import torch

from pipeline.mechanism.modeling import decoder_layers
from pipeline.training.distributed import Dist


def autocast(ctx: Dist, dtype: str):
    """A context factory: bfloat16 autocast on the process's device when ``dtype`` is bfloat16,
    else a no-op."""
    return partial(
        torch.autocast,
        device_type=ctx.device.type,
        dtype=torch.bfloat16,
        enabled=dtype == "bfloat16",
    )


def wrap_model(model, parallel: str, ctx: Dist):
    """DDP or FSDP around the PEFT model; returns the module the training forward goes through."""
    if ctx.world_size == 1 and parallel == "ddp":
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    # Shard each block (all LoRA weights live in blocks); the small rest (embeddings, head) stays
    # replicated and frozen. Each block is then its own FSDP root.
    for block in decoder_layers(model):
        fully_shard(block)
    model.to(ctx.device)
    return model


@contextlib.contextmanager
def no_grad_sync(train_model, parallel: str, active: bool):
    """Skip the gradient all-reduce on micro-steps that are not the last of a step."""
    if not active:
        yield
    elif parallel == "ddp" and hasattr(train_model, "no_sync"):
        with train_model.no_sync():
            yield
    elif parallel == "fsdp":
        blocks = decoder_layers(train_model)
        for block in blocks:
            block.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            for block in blocks:
                block.set_requires_gradient_sync(True)
    else:
        yield


def clip_gradients(parameters, max_norm: float) -> float | None:
    """Clip the gradients' global norm to ``max_norm`` (0: no clipping) and return it."""
    if not max_norm:
        return None
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
        norm = norm.full_tensor()
    return float(norm)
