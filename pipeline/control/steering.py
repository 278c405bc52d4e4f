"""Steering helpers: the mean-difference baseline and greedy generation with or without steering.

A mean-difference vector is the mean residual stream (output of block ``layer``) over the user-turn
tokens of a set of prompts when the control is given as a system prompt, minus the same mean
without it (ActAdd-style, docs/design.md §5.6). Adding it, scaled, to that block's output at every
position is the baseline that the decoder-guided steering adapter is compared with.

Every function runs whatever ``model`` currently is: the caller chooses the target (adapters
disabled), the steered target (steering adapter active) or adds a vector with :func:`add_vector`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pipeline.mechanism.decoder_prompt import end_of_turn_ids
from pipeline.mechanism.dialogs import encode, render, tokenize_read_dialog
from pipeline.mechanism.modeling import decoder_layers
from pipeline.mechanism.patching import pad_batch, read_activations


def prompt_ids(tokenizer, prompt: str, system: str | None = None) -> list[int]:
    """Chat-template ids of a user prompt (after an optional system turn), ready to answer."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": prompt})
    return encode(tokenizer, render(tokenizer, messages, add_generation_prompt=True))


def _chunks(n: int, size: int) -> list[range]:
    if size < 1:
        raise ValueError(f"batch size must be positive, not {size}")
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


@contextmanager
def add_vector(model, layer: int, vector: torch.Tensor):
    """Add ``vector`` (D,) to block ``layer``'s output at every position of every forward."""
    block = decoder_layers(model)[layer]

    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden + vector.to(device=hidden.device, dtype=hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def user_turn(tokenizer, prompt: str, system: str | None) -> tuple[list[int], list[int]]:
    """Ids of a prompt ready to answer and the positions of its user turn and generation prompt.

    With a system turn these are the tokens after it; without one, the same number of final
    tokens (the template may add its own default system prompt, which is not user text), so both
    cover exactly the same text.
    """
    messages = [{"role": "system", "content": system or "."}, {"role": "user", "content": prompt}]
    with_system = tokenize_read_dialog(tokenizer, messages, n_masked_turns=1)
    n_user = len(with_system.read_positions)
    ids = with_system.input_ids if system is not None else prompt_ids(tokenizer, prompt)
    return ids, list(range(len(ids) - n_user, len(ids)))


@torch.no_grad()
def mean_user_activation(
    model,
    tokenizer,
    prompts: Sequence[str],
    layer: int,
    system: str | None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Mean output of block ``layer`` over the user-turn tokens of ``prompts`` (see user_turn)."""
    reads = [user_turn(tokenizer, prompt, system) for prompt in prompts]
    total, count = None, 0
    for chunk in _chunks(len(reads), batch_size):
        rows = [reads[i] for i in chunk]
        ids, mask = pad_batch([r[0] for r in rows], tokenizer.pad_token_id, "right")
        acts = read_activations(model, ids.to(device), mask.to(device), [layer])[layer].float()
        for i, (_ids, positions) in enumerate(rows):
            picked = acts[i, positions].sum(dim=0)
            total = picked if total is None else total + picked
            count += len(positions)
    return (total / count).cpu()


def mean_difference_vector(
    model,
    tokenizer,
    prompts: Sequence[str],
    control: str,
    layer: int,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """(D,): mean activation with ``control`` as system prompt minus the mean without it."""
    args = (batch_size, device)
    with_control = mean_user_activation(model, tokenizer, prompts, layer, control, *args)
    without = mean_user_activation(model, tokenizer, prompts, layer, None, *args)
    return with_control - without


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 48,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    desc: str = "generate",
) -> list[str]:
    """Greedy completions of user prompts (left-padded batches, stopping at end of turn)."""
    from transformers import GenerationConfig

    stop = end_of_turn_ids(tokenizer)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stop,
        pad_token_id=tokenizer.pad_token_id,
    )
    rows = [prompt_ids(tokenizer, p) for p in prompts]
    texts = []
    for chunk in tqdm(_chunks(len(rows), batch_size), desc=desc, leave=False):
        ids, mask = pad_batch([rows[i] for i in chunk], tokenizer.pad_token_id, "left")
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
        )
        for row in out[:, ids.shape[1] :].tolist():
            cut = next((i for i, t in enumerate(row) if t in stop), len(row))
            texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    return texts


@torch.no_grad()
def completion_nll(
    model,
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str],
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> tuple[list[float], list[int]]:
    """Per completion: summed NLL of its tokens given the prompt, and its token count."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    items = []
    for prompt, completion in zip(prompts, completions, strict=True):
        head = prompt_ids(tokenizer, prompt)
        tail = encode(tokenizer, completion) if completion else []
        items.append((head, tail))
    nll, counts = [], []
    for chunk in _chunks(len(items), batch_size):
        rows = [items[i] for i in chunk]
        ids, mask = pad_batch([h + t for h, t in rows], tokenizer.pad_token_id, "right")
        labels = torch.full_like(ids, -100)
        for i, (head, tail) in enumerate(rows):
            labels[i, len(head) : len(head) + len(tail)] = torch.tensor(tail, dtype=torch.long)
        logits = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False
        ).logits.float()
        targets = labels[:, 1:].to(logits.device)
        token_nll = F.cross_entropy(
            logits[:, :-1].transpose(1, 2), targets, ignore_index=-100, reduction="none"
        )
        nll.extend((token_nll * (targets != -100)).sum(dim=1).tolist())
        counts.extend((targets != -100).sum(dim=1).tolist())
    return nll, counts


def perplexity(nll: Sequence[float], counts: Sequence[int]) -> float | None:
    """exp(total NLL / total tokens); None when there are no tokens."""
    tokens = sum(counts)
    return math.exp(sum(nll) / tokens) if tokens else None
