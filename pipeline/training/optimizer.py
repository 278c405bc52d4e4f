"""The adapter's optimizer (AdamW on the LoRA weights) and its learning-rate schedule."""

from __future__ import annotations

import math
from functools import partial

import torch

from pipeline.mechanism.lora import trainable_parameters
from pipeline.training.params import TrainParams


def lr_lambda(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1, then cosine decay to 0 at ``total`` (``step`` = steps already taken)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(
    model, params: TrainParams
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the model's trainable (LoRA) parameters, and its warmup-cosine schedule."""
    optimizer = torch.optim.AdamW(
        trainable_parameters(model), lr=params.lr, weight_decay=params.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_lambda, warmup=params.warmup_steps, total=params.max_steps)
    )
    return optimizer, scheduler
