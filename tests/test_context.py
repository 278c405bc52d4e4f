"""Context prediction: the answer lies in the text's words, never in what is read unmasked."""

from __future__ import annotations

from pipeline.data.context import QUESTIONS, ContextParams, context_rows, first_sentence
from pipeline.data.schema import validate_records
from pipeline.mechanism.dialogs import tokenize_read_dialog

TEXTS = [
    {
        "id": "t1",
        "topic": "the sea",
        "mood": "positive",
        "prompt": "Write about the sea, happy.",
        "text": "The waves sparkle in the morning sun. Gulls call over the harbour while "
        "boats drift slowly home.",
    },
    {
        "id": "t2",
        "topic": "a cat",
        "mood": "negative",
        "prompt": "Describe a cat in a sad way.",
        "text": "The old cat sleeps alone by the cold window. It waits for someone who never "
        "comes back home again.",
    },
]


def test_three_variants_per_text_valid_rows():
    rows = validate_records(context_rows(TEXTS, ContextParams()), "context")
    assert len(rows) == 6
    assert {r["kind"] for r in rows} == {"text"} and {r["split"] for r in rows} == {"train"}
    assert {r["qa"][0]["question"] for r in rows} == set(QUESTIONS.values())


def test_next_words_are_not_in_the_read_turn(tokenizer):
    rows = context_rows(TEXTS, ContextParams(variants=("next",), next_words=4))
    for row, text in zip(rows, TEXTS, strict=True):
        request, reply = row["messages"]
        answer = row["qa"][0]["answer"]
        assert row["n_masked_turns"] == 1 and request["content"] == text["prompt"]
        assert f"{reply['content']} {answer}" in text["text"]
        assert len(answer.split()) == 4 and answer not in reply["content"]
        read = tokenize_read_dialog(tokenizer, row["messages"], row["n_masked_turns"])
        seen = tokenizer.decode([read.input_ids[p] for p in read.read_positions])
        assert text["prompt"] not in seen  # the request is masked


def test_request_is_masked_and_repeat_reads_one_sentence():
    rows = context_rows(TEXTS[:1], ContextParams(variants=("request", "repeat")))
    request, repeat = rows
    assert request["n_masked_turns"] == 1 and request["qa"][0]["answer"] == TEXTS[0]["prompt"]
    assert repeat["n_masked_turns"] == 0
    assert repeat["messages"][0]["content"] == repeat["qa"][0]["answer"]
    assert repeat["qa"][0]["answer"] == "The waves sparkle in the morning sun."


def test_first_sentence_length_bounds():
    assert first_sentence("One two three. Four.", 5) == "One two three."
    assert first_sentence("Hi. There.", 5) is None  # fewer than 3 words
    assert first_sentence("a b c d e f g.", 5) is None
