"""Reading with a decoder: the target's activations of dialogs, and the decoder's greedy answers.

Shared by the read command (``pipeline.read``) and the evaluate stage. One base model is in
memory: the target is the decoder's module with its adapter disabled.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import torch
from tqdm import tqdm

from pipeline.mechanism.decoder import answer_loss, collate, decoder_logits, generate
from pipeline.mechanism.decoder_prompt import DecoderExample
from pipeline.mechanism.decoder_settings import DecoderSettings
from pipeline.mechanism.dialogs import tokenize_read_dialog
from pipeline.mechanism.patching import gather, pad_batch, read_activations


@dataclass
class Read:
    """One read dialog as the target saw it, with the activations the decoder reads."""

    input_ids: list[int]
    read_positions: list[int]
    acts: torch.Tensor
    """(n, D) float32 on the CPU, one row per read position (per read layer, group after group,
    for a decoder reading every layer at once)."""


def target_mode(model):
    """The target is the decoder's module with its adapter disabled (if it has one)."""
    if hasattr(model, "disable_adapter"):
        return model.disable_adapter()
    return contextlib.nullcontext()


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def compute_reads(
    model,
    tokenizer,
    dialogs: list[tuple[list[dict], int]],
    settings: DecoderSettings,
    batch_size: int = 8,
    desc: str = "reading",
) -> list[Read]:
    """The target's activations at the layers ``settings`` reads (``layers_read``) for each
    (messages, n_masked_turns)."""
    tokenized = [tokenize_read_dialog(tokenizer, m, k, settings.positions) for m, k in dialogs]
    reads: list[Read | None] = [None] * len(tokenized)
    order = sorted(range(len(tokenized)), key=lambda i: len(tokenized[i].input_ids))
    device = _device(model)
    pad = tokenizer.pad_token_id
    for start in tqdm(
        range(0, len(order), batch_size),
        desc=desc,
        file=sys.stderr,
        disable=len(order) <= batch_size,
    ):
        chunk = order[start : start + batch_size]
        ids, mask = pad_batch([tokenized[i].input_ids for i in chunk], pad)
        positions = torch.arange(ids.shape[1]).expand(len(chunk), -1)
        layers = list(settings.layers_read)
        with target_mode(model):
            acts = read_activations(
                model, ids.to(device), mask.to(device), layers, position_ids=positions.to(device)
            )
        spans = [tokenized[i].read_positions for i in chunk]
        per_layer = [gather(acts[layer], spans) for layer in layers]
        for row, i in enumerate(chunk):
            value = torch.cat([rows[row] for rows in per_layer])
            value = value.float().cpu()
            if settings.cached:
                value = value.to(torch.bfloat16).float()
            reads[i] = Read(tokenized[i].input_ids, tokenized[i].read_positions, value)
    return reads  # type: ignore[return-value]


def generate_batched(
    model,
    tokenizer,
    examples: list[DecoderExample],
    acts: list[torch.Tensor],
    batch_size: int = 8,
    max_new_tokens: int = 32,
    desc: str = "generating",
    inject: str = "replace",
) -> list[str]:
    """Greedy answers for many decoder prompts, batched by length, in the input order (each
    written at its own example's write block)."""
    out: list[str] = [""] * len(examples)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    device = _device(model)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, file=sys.stderr):
        chunk = order[start : start + batch_size]
        batch = collate(
            [examples[i] for i in chunk],
            [acts[i] for i in chunk],
            tokenizer.pad_token_id,
            padding_side="left",
        ).to(device)
        for i, text in zip(
            chunk, generate(model, tokenizer, batch, max_new_tokens, inject), strict=True
        ):
            out[i] = text
    return out


@torch.no_grad()
def loglik_batched(
    model,
    tokenizer,
    examples: list[DecoderExample],
    acts: list[torch.Tensor],
    batch_size: int = 8,
    desc: str = "scoring",
    inject: str = "replace",
) -> list[tuple[float, int]]:
    """(summed NLL, token count) of each example's labelled answer tokens, in the input order."""
    out: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    device = _device(model)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, file=sys.stderr):
        chunk = order[start : start + batch_size]
        batch = collate(
            [examples[i] for i in chunk], [acts[i] for i in chunk], tokenizer.pad_token_id
        ).to(device)
        nll, count = answer_loss(model, batch, inject=inject, reduction="none")
        for i, a, b in zip(chunk, nll.tolist(), count.tolist(), strict=True):
            out[i] = (a, int(b))
    return out


def _divergence(candidates: list[DecoderExample]) -> int | None:
    """The first position where the candidates' tokens differ, if there each has its own token
    (an answer that is a prefix of another, or two sharing that token, gives None)."""
    rows = [ex.input_ids for ex in candidates]
    k = 0
    while all(len(r) > k for r in rows) and len({r[k] for r in rows}) == 1:
        k += 1
    if not all(len(r) > k for r in rows) or len({r[k] for r in rows}) != len(rows):
        return None
    return k


@torch.no_grad()
def choice_scores(
    model,
    tokenizer,
    candidates: list[list[DecoderExample]],
    acts: list[torch.Tensor],
    batch_size: int = 8,
    desc: str = "choosing",
    inject: str = "replace",
) -> list[list[float]]:
    """Per item, a score of each candidate answer (``candidates[i][c]``, the same prompt with
    answer ``c``): the logit of its token at the first position where the answers differ, from one
    forward of the shared prefix; where they share that token (or one answer is a prefix of
    another) the mean log-likelihood per token of each whole answer instead."""
    scores: list[list[float]] = [[0.0] * len(c) for c in candidates]
    fast, slow = [], []
    for i, cands in enumerate(candidates):
        k = _divergence(cands)
        (fast if k is not None else slow).append((i, k))
    prefixes = [
        DecoderExample(
            candidates[i][0].input_ids[:k],
            candidates[i][0].placeholder_positions,
            candidates[i][0].position_ids[:k],
            [-100] * k,
            candidates[i][0].write_layers,
        )
        for i, k in fast
    ]
    order = sorted(range(len(fast)), key=lambda j: len(prefixes[j].input_ids))
    device = _device(model)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, file=sys.stderr):
        chunk = order[start : start + batch_size]
        batch = collate(
            [prefixes[j] for j in chunk],
            [acts[fast[j][0]] for j in chunk],
            tokenizer.pad_token_id,
            padding_side="left",
        ).to(device)
        logits = decoder_logits(model, batch, inject=inject, logits_to_keep=1)[:, -1].float()
        for row, j in enumerate(chunk):
            i, k = fast[j]
            scores[i] = [float(logits[row, ex.input_ids[k]]) for ex in candidates[i]]
    if slow:
        flat = [(i, c) for i, _ in slow for c in range(len(candidates[i]))]
        results = loglik_batched(
            model,
            tokenizer,
            [candidates[i][c] for i, c in flat],
            [acts[i] for i, _ in flat],
            batch_size,
            desc,
            inject,
        )
        for (i, c), (nll, n) in zip(flat, results, strict=True):
            scores[i][c] = -nll / max(n, 1)
    return scores
