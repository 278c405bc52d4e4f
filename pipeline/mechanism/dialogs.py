"""Token ids of read dialogs (docs/design.md §5.1), for any chat template: which positions of a
conversation the decoder may read.

Turn boundaries are found by rendering prefixes of the conversation with the tokenizer's own chat
template, never from per-model token tables. The decoder's own prompt is built in
``pipeline.mechanism.decoder_prompt``; this module is all the activation cache needs, so a change
to the decoder's prompt never reruns the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, get_args

Inject = Literal["replace", "add"]
"""How read activations enter the decoder's residual stream at the placeholders, both scaled to
the decoder's own norm there: ``replace`` it, or ``add`` to it (Activation Oracles' injection)."""
INJECT_MODES = get_args(Inject)


@dataclass(frozen=True)
class TokenizedRead:
    input_ids: list[int]
    read_positions: list[int]
    """Indices into ``input_ids`` whose activations the decoder reads."""


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def encode(tokenizer, text: str) -> list[int]:
    """Ids of rendered chat text: the template already wrote every special token it wants."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def parse_positions(positions: str) -> int | None:
    """``"all"`` -> None, ``"last:K"`` -> K."""
    if positions == "all":
        return None
    head, sep, count = positions.partition(":")
    if head == "last" and sep and count.isdigit() and int(count) > 0:
        return int(count)
    raise ValueError(f"positions must be 'all' or 'last:K' with K > 0, not {positions!r}")


def _boundary(tokenizer, prefix_text: str, full_text: str, full_ids: list[int]) -> int:
    """The index of the first token of ``full_ids`` that lies entirely after ``prefix_text``."""
    if not full_text.startswith(prefix_text):
        raise ValueError(
            "the chat template does not render a conversation's first turns as a prefix of the "
            "whole conversation, so masked turns cannot be separated from read ones; "
            f"prefix {prefix_text[-80:]!r} vs conversation {full_text[: len(prefix_text)][-80:]!r}"
        )
    prefix_ids = encode(tokenizer, prefix_text)
    if full_ids[: len(prefix_ids)] == prefix_ids:
        return len(prefix_ids)
    # A token merged across the boundary: fall back to character offsets and leave out any token
    # that holds masked text, so nothing of the masked turns is ever read.
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("turn boundary falls inside a token and the tokenizer gives no offsets")
    offsets = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
    cut = len(prefix_text)
    return next(
        (i for i, (start, _end) in enumerate(offsets["offset_mapping"]) if start >= cut),
        len(full_ids),
    )


@lru_cache(maxsize=32)
def _constant_prefix(tokenizer, role: str) -> tuple[int, ...]:
    """The tokens that every conversation opening with a ``role`` turn starts with: the BOS, any
    default system prompt the template adds, the turn's header. A causal model's activations there
    are the same for every such conversation, so they carry nothing to read."""
    try:
        first, second = (
            encode(tokenizer, render(tokenizer, [{"role": role, "content": text}]))
            for text in ("x", "y")
        )
    except Exception:  # a template that refuses a conversation of one such turn
        return ()
    common = 0
    while common < min(len(first), len(second)) and first[common] == second[common]:
        common += 1
    return tuple(first[:common])


def tokenize_read_dialog(
    tokenizer, messages: list[dict], n_masked_turns: int, positions: str = "all"
) -> TokenizedRead:
    """The target's ids for a read dialog and the positions the decoder may read.

    Read positions are the tokens of the turns after the first ``n_masked_turns`` (with the
    generation prompt when the dialog ends with a user turn). With no masked turns, the tokens
    every conversation starts with (:func:`_constant_prefix`: BOS, a default system prompt the
    template adds, the first turn's header) are not read: their activations are the same for every
    dialog, and each would cost the decoder a placeholder.
    """
    if not messages:
        raise ValueError("a read dialog needs at least one message")
    if not 0 <= n_masked_turns < len(messages):
        raise ValueError(f"n_masked_turns={n_masked_turns} must be in [0, {len(messages)})")
    keep_last = parse_positions(positions)
    full_text = render(tokenizer, messages, add_generation_prompt=messages[-1]["role"] == "user")
    input_ids = encode(tokenizer, full_text)
    if n_masked_turns:
        prefix_text = render(tokenizer, messages[:n_masked_turns])
        start = _boundary(tokenizer, prefix_text, full_text, input_ids)
    else:
        constant = _constant_prefix(tokenizer, messages[0]["role"])
        start = len(constant) if tuple(input_ids[: len(constant)]) == constant else 0
        if start == 0 and input_ids[:1] == [tokenizer.bos_token_id]:
            start = 1
    read = list(range(start, len(input_ids)))
    if not read:
        raise ValueError("the read dialog has no tokens after its masked turns")
    if keep_last is not None:
        read = read[-keep_last:]
    return TokenizedRead(input_ids=input_ids, read_positions=read)
