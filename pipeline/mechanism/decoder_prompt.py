"""Token ids of the decoder's prompts (docs/design.md §5.3), for any chat template: placeholders
for the read activations, the acknowledgement, the questions and their labelled answers.

Placeholders are inserted as token ids, so their count is exact whatever the tokenizer would make
of a string of placeholder characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from pipeline.mechanism.dialogs import encode, render

ACKNOWLEDGEMENT = "Okay, I have read the activations. What would you like to know?"
PLACEHOLDER_TEXT = "?"
_SENTINEL = "\u2063PLACEHOLDER\u2063"  # cannot occur in a template's own text


@dataclass(frozen=True)
class ReadAt:
    """Where one example's activations come from and go: a target block and a decoder block."""

    read: int
    """The target block whose output is read."""
    write: int
    """The decoder block whose output receives it at the placeholders."""
    named: bool = False
    """Name the read block to the decoder ("Layer 15:" before the placeholders): a decoder of
    several read layers must know which one it is given."""

    def prefix(self) -> str:
        return f"Layer {self.read}:" if self.named else ""


@dataclass(frozen=True)
class DecoderExample:
    input_ids: list[int]
    placeholder_positions: list[int]
    """Where the read activations are written."""
    position_ids: list[int]
    labels: list[int]
    """-100 except the answer tokens and the end-of-turn token."""
    write_layers: tuple[int, ...] = ()
    """Per placeholder, the decoder block whose output is patched there (default: block 0)."""


def placeholder_id(tokenizer) -> int:
    """A plain (non-special) token id, written once per read activation."""
    ids = encode(tokenizer, PLACEHOLDER_TEXT)
    if len(ids) != 1 or ids[0] in set(tokenizer.all_special_ids):
        raise ValueError(f"{PLACEHOLDER_TEXT!r} is not a single plain token for this tokenizer")
    return ids[0]


def _special_ids(tokenizer) -> set[int]:
    special = set(tokenizer.all_special_ids)
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special.update(i for i, tok in decoder.items() if getattr(tok, "special", False))
    return special


def _answer_labels(tokenizer, answer_ids: list[int]) -> list[int]:
    """Label the answer up to and including the first special token (the end of the turn)."""
    special = _special_ids(tokenizer)
    labels = [-100] * len(answer_ids)
    for i, token in enumerate(answer_ids):
        labels[i] = token
        if token in special:
            break
    return labels


@lru_cache(maxsize=32)
def _end_of_turn_ids(tokenizer) -> tuple[int, ...]:
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    prompt = render(tokenizer, messages[:1], add_generation_prompt=True)
    full = render(tokenizer, messages)
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    if full.startswith(prompt):
        answer = encode(tokenizer, full[len(prompt) :])
        labels = _answer_labels(tokenizer, answer)
        last = [t for t in labels if t != -100][-1:]
        ids.update(t for t in last if t in _special_ids(tokenizer))
    return tuple(sorted(ids))


def end_of_turn_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn: eos and the template's end-of-turn token."""
    return list(_end_of_turn_ids(tokenizer))


@lru_cache(maxsize=32)
def _decoder_opening(tokenizer) -> tuple[dict, ...]:
    """What the decoder's chat opens with: nothing, or an empty system turn where the template
    would otherwise add a default system prompt of its own (SmolLM2 adds 18 tokens to every
    decoder prompt; Llama-3's adds none). Whichever renders shorter; no system turn on a tie."""
    probe = [{"role": "user", "content": "x"}]
    empty = ({"role": "system", "content": ""},)
    try:
        with_empty = len(encode(tokenizer, render(tokenizer, [*empty, *probe])))
    except Exception:  # a template without a system role
        return ()
    return empty if with_empty < len(encode(tokenizer, render(tokenizer, probe))) else ()


def _answer_turns(
    tokenizer, messages: list[dict], prompt_text: str, turns: list[tuple[str | None, str]]
) -> tuple[list[int], list[int]]:
    """The ids after the prompt and their labels: each answer labelled up to the end of its turn,
    each follow-up question (the first is already in the prompt: None) unlabelled."""
    ids: list[int] = []
    labels: list[int] = []
    done, messages = prompt_text, list(messages)
    for question, answer in turns:
        if question is not None:
            messages.append({"role": "user", "content": question})
            asked = render(tokenizer, messages, add_generation_prompt=True)
            if not asked.startswith(done):
                raise ValueError("the chat template does not render a follow-up after the answer")
            part = encode(tokenizer, asked[len(done) :])
            ids, labels, done = ids + part, labels + [-100] * len(part), asked
        messages.append({"role": "assistant", "content": answer})
        full = render(tokenizer, messages)
        if not full.startswith(done):
            raise ValueError("the chat template does not render the answer after the prompt")
        part = encode(tokenizer, full[len(done) :])
        ids, labels, done = ids + part, labels + _answer_labels(tokenizer, part), full
    return ids, labels


def build_decoder_example(
    tokenizer,
    read_positions: Sequence[int] | Sequence[Sequence[int]],
    question: str,
    answer: str | None,
    align_positions: bool = True,
    at: ReadAt | Sequence[ReadAt] | None = None,
    follow_ups: Sequence[tuple[str, str]] = (),
) -> DecoderExample:
    """The decoder's chat: placeholders, acknowledgement, question, then the answer (if any),
    after an empty system turn where the template would add a default one
    (:func:`_decoder_opening`).

    ``answer=None`` ends the prompt with the generation prompt (for reading), all labels -100.
    ``at``: the read and write blocks (default: write at block 0, the read block not named); a
    sequence of them gives one group of placeholders per read layer, each after its own name,
    with ``read_positions`` one list per group (or one list shared by all). ``follow_ups``:
    (question, answer) turns after the answer, each answer labelled too: several questions about
    one read for the price of one set of placeholders.
    """
    if follow_ups and answer is None:
        raise ValueError("follow-up questions need the first question's answer")
    groups = [at or ReadAt(read=0, write=0)] if not isinstance(at, Sequence) else list(at)
    if not groups:
        raise ValueError("a decoder example needs at least one read layer")
    spans = (
        [list(p) for p in read_positions]
        if read_positions and isinstance(read_positions[0], Sequence)
        else [list(read_positions)] * len(groups)
    )
    if len(spans) != len(groups) or not all(spans):
        raise ValueError("a decoder example needs at least one read position per read layer")
    messages = [
        *_decoder_opening(tokenizer),
        {"role": "user", "content": " ".join(g.prefix() + _SENTINEL for g in groups)},
        {"role": "assistant", "content": ACKNOWLEDGEMENT},
        {"role": "user", "content": question},
    ]
    prompt_text = render(tokenizer, messages, add_generation_prompt=True)
    if prompt_text.count(_SENTINEL) != len(groups):
        raise ValueError("the chat template does not keep the user's text verbatim")
    parts = [encode(tokenizer, part) for part in prompt_text.split(_SENTINEL)]
    answer_ids, answer_labels = (
        _answer_turns(tokenizer, messages, prompt_text, [(None, answer), *follow_ups])
        if answer is not None
        else ([], [])
    )
    input_ids, labels, position_ids, placeholders, write_layers = [], [], [], [], []
    # Text takes the next positions; with align_positions, placeholders sit where the target saw
    # those tokens, and what follows them continues after the furthest of them.
    counter = 0
    for index, part in enumerate(parts):
        if index == len(parts) - 1:
            part = part + answer_ids
        input_ids += part
        position_ids += list(range(counter, counter + len(part)))
        counter += len(part)
        if index < len(groups):
            span = spans[index]
            placeholders += range(len(input_ids), len(input_ids) + len(span))
            write_layers += [groups[index].write] * len(span)
            input_ids += [placeholder_id(tokenizer)] * len(span)
            if align_positions:
                position_ids += span
                counter = max(counter, max(span) + 1)
            else:
                position_ids += list(range(counter, counter + len(span)))
                counter += len(span)
    labels = [-100] * (len(input_ids) - len(answer_ids)) + answer_labels
    return DecoderExample(
        input_ids=input_ids,
        placeholder_positions=placeholders,
        position_ids=position_ids,
        labels=labels,
        write_layers=tuple(write_layers),
    )
