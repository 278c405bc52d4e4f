"""The decoder's forward passes with read activations patched in: logits, answer loss, generation.

Decoder and target are one module: the decoder is the PEFT model with its adapter enabled, the
target the same module inside ``model.disable_adapter()``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from pipeline.mechanism.decoder_prompt import DecoderExample, end_of_turn_ids
from pipeline.mechanism.modeling import cache_argument
from pipeline.mechanism.patching import patch_rows


@dataclass
class DecoderBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    patch_positions: torch.Tensor
    """(B, N) long, -1 where a row has fewer than N placeholders."""
    patch_values: torch.Tensor
    """(B, N, D) activations written at ``patch_positions``."""
    write_layers: torch.Tensor
    """(B, N) long: the decoder block each placeholder's activation is written at."""

    def to(self, device) -> DecoderBatch:
        return DecoderBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def collate(
    examples: list[DecoderExample],
    activations: list[torch.Tensor],
    pad_id: int,
    padding_side: str = "right",
) -> DecoderBatch:
    """Pad examples to one length; ``activations[i]`` (n_i, D) goes to example i's placeholders."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    if len(examples) != len(activations) or not examples:
        raise ValueError(f"{len(examples)} examples but {len(activations)} activation sets")
    length = max(len(ex.input_ids) for ex in examples)
    slots = max(len(ex.placeholder_positions) for ex in examples)
    dim = activations[0].shape[-1]
    batch = len(examples)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    position_ids = torch.zeros((batch, length), dtype=torch.long)
    labels = torch.full((batch, length), -100, dtype=torch.long)
    patch_positions = torch.full((batch, slots), -1, dtype=torch.long)
    patch_values = torch.zeros((batch, slots, dim), dtype=activations[0].dtype)
    write_layers = torch.zeros((batch, slots), dtype=torch.long)
    for i, (ex, acts) in enumerate(zip(examples, activations, strict=True)):
        n = len(ex.placeholder_positions)
        if tuple(acts.shape) != (n, dim):
            raise ValueError(
                f"example {i}: {n} placeholders but activations of shape "
                f"{tuple(acts.shape)} (expected ({n}, {dim}))"
            )
        size = len(ex.input_ids)
        start = length - size if padding_side == "left" else 0
        span = slice(start, start + size)
        input_ids[i, span] = torch.tensor(ex.input_ids)
        attention_mask[i, span] = 1
        position_ids[i, span] = torch.tensor(ex.position_ids)
        labels[i, span] = torch.tensor(ex.labels)
        patch_positions[i, :n] = torch.tensor(ex.placeholder_positions) + start
        patch_values[i, :n] = acts
        if ex.write_layers:
            write_layers[i, :n] = torch.tensor(ex.write_layers)
    return DecoderBatch(
        input_ids,
        attention_mask,
        position_ids,
        labels,
        patch_positions,
        patch_values,
        write_layers,
    )


def _patched(model, batch: DecoderBatch, inject: str):
    return patch_rows(
        model, batch.write_layers, batch.patch_positions, batch.patch_values, mode=inject
    )


def decoder_logits(
    model,
    batch: DecoderBatch,
    *,
    inject: str = "replace",
    logits_to_keep: torch.Tensor | int = 0,
) -> torch.Tensor:
    """Logits (B, L, V) of the decoder with each row's activations written at its write block.

    ``inject``: how they are written (``dialogs.INJECT_MODES``). ``logits_to_keep`` (a 1-D
    tensor of positions) limits the vocabulary projection to those.
    """
    with _patched(model, batch, inject):
        default = isinstance(logits_to_keep, int) and logits_to_keep == 0
        kwargs = {} if default else {"logits_to_keep": logits_to_keep}
        return model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            **kwargs,
        ).logits


def answer_loss(model, batch: DecoderBatch, *, inject: str = "replace", reduction: str = "mean"):
    """Cross-entropy of the labelled tokens given the patched prompt.

    ``"mean"``: mean over every labelled token of the batch. ``"none"``: ``(nll_sum, n_tokens)``
    per example, each of shape (B,), for log-likelihood evaluation.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', not {reduction!r}")
    targets = batch.labels[:, 1:]
    # Project onto the vocabulary only where some row predicts a label: answers are short.
    keep = (targets != -100).any(dim=0).nonzero(as_tuple=True)[0]
    if keep.numel() == 0:
        raise ValueError("the batch has no labelled tokens")
    logits = decoder_logits(model, batch, inject=inject, logits_to_keep=keep)
    targets = targets[:, keep]
    nll = F.cross_entropy(
        logits.float().transpose(1, 2), targets, ignore_index=-100, reduction="none"
    )
    mask = targets != -100
    nll_sum = (nll * mask).sum(dim=1)
    counts = mask.sum(dim=1)
    if reduction == "none":
        return nll_sum, counts
    return nll_sum.sum() / counts.sum()


@torch.no_grad()
def generate_ids(
    model,
    batch: DecoderBatch,
    stop_ids: list[int],
    pad_id: int,
    max_new_tokens: int = 32,
    inject: str = "replace",
) -> list[list[int]]:
    """Greedy new token ids per row of a left-padded batch, each cut after its first stop id.

    The patch applies at prefill only; decode steps reuse the patched keys and values cached then.
    """
    from transformers import DynamicCache

    if not bool(batch.attention_mask[:, -1].all()):
        raise ValueError("generation needs a left-padded batch (collate(..., padding_side='left'))")
    stop = torch.tensor(sorted(stop_ids), device=batch.input_ids.device)
    attention_mask = batch.attention_mask
    position = batch.position_ids[:, -1:]
    cache = {cache_argument(model): DynamicCache(config=model.config)}
    done = torch.zeros(batch.input_ids.shape[0], dtype=torch.bool, device=stop.device)
    tokens = []
    with _patched(model, batch, inject):
        logits = model(
            input_ids=batch.input_ids,
            attention_mask=attention_mask,
            position_ids=batch.position_ids,
            **cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits
        for step in range(max_new_tokens):
            token = logits[:, -1].argmax(dim=-1)
            token = torch.where(done, torch.full_like(token, pad_id), token)
            tokens.append(token)
            done |= torch.isin(token, stop)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            attention_mask = torch.cat([attention_mask, torch.ones_like(position)], dim=1)
            position = position + 1
            logits = model(
                input_ids=token[:, None],
                attention_mask=attention_mask,
                position_ids=position,
                **cache,
                use_cache=True,
            ).logits
    rows = torch.stack(tokens, dim=1).tolist() if tokens else [[] for _ in range(len(done))]
    stops = set(stop_ids)
    return [row[: next((i + 1 for i, t in enumerate(row) if t in stops), len(row))] for row in rows]


def generate(
    model, tokenizer, batch: DecoderBatch, max_new_tokens: int = 32, inject: str = "replace"
) -> list[str]:
    """Greedy answers, one per row of a left-padded batch, up to end-of-turn or eos."""
    stop_ids = end_of_turn_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    rows = generate_ids(model, batch, stop_ids, pad_id, max_new_tokens, inject)
    rows = [row[:-1] if row and row[-1] in stop_ids else row for row in rows]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in rows]
