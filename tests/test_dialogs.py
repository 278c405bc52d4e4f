"""Read positions exclude masked turns exactly; decoder prompts hold exact placeholder counts."""

from __future__ import annotations

import pytest

from pipeline.mechanism.decoder_prompt import (
    ACKNOWLEDGEMENT,
    build_decoder_example,
    end_of_turn_ids,
    placeholder_id,
)
from pipeline.mechanism.dialogs import parse_positions, tokenize_read_dialog

CONTROL = "Pretend you are a pirate captain looking for treasure."
CONTROL_REPLY = "Arr, I be the captain of this ship!"
STIMULUS = "What do you think about the weather today?"
COMPLETION = "Fair winds and clear skies for sailing."
SYSTEM = "You are a grumpy medieval blacksmith."

# (kind, messages, n_masked_turns, texts that must be read, texts that must not)
CASES = [
    (
        "control",
        [{"role": "user", "content": CONTROL}, {"role": "assistant", "content": CONTROL_REPLY}],
        0,
        [CONTROL, CONTROL_REPLY],
        [],
    ),
    (
        "stimulus",
        [
            {"role": "user", "content": CONTROL},
            {"role": "assistant", "content": CONTROL_REPLY},
            {"role": "user", "content": STIMULUS},
        ],
        2,
        [STIMULUS],
        [CONTROL, CONTROL_REPLY, "pirate", "captain"],
    ),
    (
        "stimulus_completion",
        [
            {"role": "user", "content": CONTROL},
            {"role": "assistant", "content": CONTROL_REPLY},
            {"role": "user", "content": STIMULUS},
            {"role": "assistant", "content": COMPLETION},
        ],
        2,
        [STIMULUS, COMPLETION],
        [CONTROL, CONTROL_REPLY, "pirate", "captain"],
    ),
    (
        "system",
        [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": STIMULUS},
            {"role": "assistant", "content": COMPLETION},
        ],
        1,
        [STIMULUS, COMPLETION],
        [SYSTEM, "blacksmith", "system"],
    ),
]


def read_text(tokenizer, read) -> str:
    return tokenizer.decode([read.input_ids[i] for i in read.read_positions])


@pytest.mark.parametrize("kind,messages,masked,present,absent", CASES, ids=[c[0] for c in CASES])
def test_read_positions_exclude_masked_turns(tokenizer, kind, messages, masked, present, absent):
    read = tokenize_read_dialog(tokenizer, messages, masked)
    text = read_text(tokenizer, read)
    for snippet in present:
        assert snippet in text
    for snippet in absent:
        assert snippet not in text
    # Exactly the masked part is left out: the unread tokens decode to the rendered masked turns
    # (with none masked, to what every conversation opening with that role starts with).
    unread = tokenizer.decode(read.input_ids[: read.read_positions[0]])
    if masked:
        assert unread == tokenizer.apply_chat_template(messages[:masked], tokenize=False)
    else:
        other = [{"role": messages[0]["role"], "content": "Something else entirely."}]
        assert tokenizer.apply_chat_template(other, tokenize=False).startswith(unread)
    assert read.read_positions == list(range(read.read_positions[0], len(read.input_ids)))


def test_first_read_token_starts_the_first_unmasked_turn(tokenizer):
    _, messages, masked, _, _ = CASES[1]
    read = tokenize_read_dialog(tokenizer, messages, masked)
    assert read.input_ids[read.read_positions[0]] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    # the generation prompt is added after a final user turn and is read
    assert read_text(tokenizer, read).endswith("<|im_start|>assistant\n")


def test_what_every_dialog_starts_with_is_not_read(tokenizer):
    """With nothing masked, reading starts at the first token two dialogs can differ in: the BOS,
    SmolLM2's default system prompt and the first turn's header give every dialog the same
    activations, and would each cost a placeholder."""
    _, messages, _, _, _ = CASES[0]
    read = tokenize_read_dialog(tokenizer, messages, 0)
    other = tokenize_read_dialog(tokenizer, [{"role": "user", "content": "Hi."}], 0)
    first = read.read_positions[0]
    assert read.input_ids[0] == tokenizer.bos_token_id
    assert "SmolLM" in tokenizer.decode(read.input_ids[:first])
    assert read.input_ids[:first] == other.input_ids[:first]
    assert read.input_ids[first] != other.input_ids[first]
    assert other.read_positions[0] == first
    assert tokenizer.decode(read.input_ids[first:]).startswith(CONTROL)


def test_last_k_positions(tokenizer):
    _, messages, masked, _, _ = CASES[2]
    full = tokenize_read_dialog(tokenizer, messages, masked)
    last = tokenize_read_dialog(tokenizer, messages, masked, positions="last:5")
    assert last.read_positions == full.read_positions[-5:]
    huge = tokenize_read_dialog(tokenizer, messages, masked, positions="last:100000")
    assert huge.read_positions == full.read_positions


@pytest.mark.parametrize("bad", ["first:3", "last:0", "last:x", "", "ALL"])
def test_bad_positions_rejected(bad):
    with pytest.raises(ValueError):
        parse_positions(bad)


def test_masking_every_turn_is_rejected(tokenizer):
    with pytest.raises(ValueError, match="n_masked_turns"):
        tokenize_read_dialog(tokenizer, [{"role": "user", "content": "hi"}], 1)


@pytest.mark.parametrize("n", [1, 7, 33])
def test_decoder_example_structure(tokenizer, n):
    read_positions = list(range(40, 40 + n))
    ex = build_decoder_example(tokenizer, read_positions, "Who are you?", "A pirate.")
    pid = placeholder_id(tokenizer)
    assert [ex.input_ids[p] for p in ex.placeholder_positions] == [pid] * n
    first, last = ex.placeholder_positions[0], ex.placeholder_positions[-1]
    assert ex.placeholder_positions == list(range(first, first + n))
    # the user turn holds exactly the n placeholders: the template's own text follows
    assert ex.input_ids[: last + 1].count(pid) == n
    assert ex.input_ids[last + 1] != pid
    text = tokenizer.decode(ex.input_ids)
    assert ACKNOWLEDGEMENT in text and "Who are you?" in text
    labelled = [t for t in ex.labels if t != -100]
    assert tokenizer.decode(labelled) == "A pirate.<|im_end|>"
    # labels are a contiguous tail ending just before the template's trailing newline
    first = ex.labels.index(labelled[0])
    assert ex.labels[first : first + len(labelled)] == labelled
    assert ex.input_ids[first : first + len(labelled)] == labelled
    assert len(ex.position_ids) == len(ex.input_ids) == len(ex.labels)


def test_follow_up_questions_label_every_answer_and_no_question(tokenizer):
    one = build_decoder_example(tokenizer, [5, 6, 7], "Who are you?", "A pirate.")
    ex = build_decoder_example(
        tokenizer,
        [5, 6, 7],
        "Who are you?",
        "A pirate.",
        follow_ups=[("Where are you?", "At sea."), ("Is it windy?", "Yes.")],
    )
    # The first question's example is the start of the longer one, labels and all.
    assert ex.input_ids[: len(one.input_ids)] == one.input_ids
    assert ex.labels[: len(one.labels)] == one.labels
    assert ex.placeholder_positions == one.placeholder_positions
    text = tokenizer.decode(ex.input_ids)
    assert text.endswith(
        "A pirate.<|im_end|>\n<|im_start|>user\nWhere are you?<|im_end|>\n<|im_start|>assistant\n"
        "At sea.<|im_end|>\n<|im_start|>user\nIs it windy?<|im_end|>\n<|im_start|>assistant\n"
        "Yes.<|im_end|>\n"
    )
    spans, current = [], []
    for token, label in zip(ex.input_ids, ex.labels, strict=True):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    assert spans + ([tokenizer.decode(current)] if current else []) == [
        "A pirate.<|im_end|>",
        "At sea.<|im_end|>",
        "Yes.<|im_end|>",
    ]
    assert ex.position_ids[len(one.input_ids) :] == list(
        range(ex.position_ids[len(one.input_ids) - 1] + 1, ex.position_ids[-1] + 1)
    )
    with pytest.raises(ValueError, match="follow-up questions need the first question's answer"):
        build_decoder_example(tokenizer, [1], "Q?", None, follow_ups=[("Q2?", "A2.")])


def test_aligned_position_ids(tokenizer):
    read_positions = [3, 4, 5, 90, 91]
    ex = build_decoder_example(tokenizer, read_positions, "Q?", "A.", align_positions=True)
    start = ex.placeholder_positions[0]
    assert ex.position_ids[:start] == list(range(start))
    assert [ex.position_ids[p] for p in ex.placeholder_positions] == read_positions
    tail = ex.position_ids[ex.placeholder_positions[-1] + 1 :]
    assert tail[0] == 92 and tail == list(range(92, 92 + len(tail)))
    plain = build_decoder_example(tokenizer, read_positions, "Q?", "A.", align_positions=False)
    assert plain.position_ids == list(range(len(plain.input_ids)))
    assert plain.input_ids == ex.input_ids


def test_reading_prompt_ends_with_generation_prompt(tokenizer):
    ex = build_decoder_example(tokenizer, [1, 2], "Who are you?", None)
    assert set(ex.labels) == {-100}
    assert tokenizer.decode(ex.input_ids).endswith(
        "Who are you?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_end_of_turn_ids(tokenizer):
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in end_of_turn_ids(tokenizer)


def test_the_decoder_prompt_carries_no_default_system_prompt(tokenizer):
    """SmolLM2's template adds "You are a helpful AI assistant named SmolLM..." to a chat without a
    system turn; the decoder's chat gives an empty one instead, 18 tokens shorter, the same for
    training and reading."""
    ex = build_decoder_example(tokenizer, [3, 4, 5], "Who are you?", "A pirate.")
    text = tokenizer.decode(ex.input_ids)
    assert "SmolLM" not in text
    assert text.startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\n")
    default = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    assert "SmolLM" in default  # the template would have added it
