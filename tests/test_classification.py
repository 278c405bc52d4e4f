"""Classification questions: labels by construction, yes and no balanced, word answers true."""

from __future__ import annotations

import re

from test_context import TEXTS

from pipeline.data.classification import ClassificationParams, classification_rows
from pipeline.data.schema import validate_records

MORE = [
    {**TEXTS[i % 2], "id": f"x{i}", "topic": f"topic {i}", "text": TEXTS[i % 2]["text"] + f" {w}"}
    for i, w in enumerate(["Lanterns", "Marbles", "Pebbles", "Ribbons", "Saddles", "Tunnels"])
]


def test_rows_are_valid_and_labelled_by_construction():
    rows = validate_records(classification_rows(MORE, ClassificationParams()), "classification")
    assert len(rows) == len(MORE)
    for row, text in zip(rows, MORE, strict=True):
        assert row["messages"] == [{"role": "user", "content": text["text"]}]
        qa = {q["question"]: q["answer"] for q in row["qa"]}
        tone = qa["Is the tone of the text positive or negative?"]
        assert tone == {"positive": "Positive.", "negative": "Negative."}[text["mood"]]
        assert qa["What is the text about?"].lower().startswith(text["topic"])


def test_yes_and_no_are_balanced_and_true():
    rows = classification_rows(MORE, ClassificationParams(seed=3))
    topic_answers, word_answers = [], []
    for row, text in zip(rows, MORE, strict=True):
        for qa in row["qa"]:
            if qa["question"].startswith("Is the text about"):
                asked = qa["question"][len("Is the text about ") : -len("? Answer yes or no.")]
                assert (asked == text["topic"]) == (qa["answer"] == "Yes.")
                topic_answers.append(qa["answer"])
            if qa["question"].startswith("Does the word"):
                word = re.search(r'"(\w+)"', qa["question"]).group(1)
                present = word in re.findall(r"\w+", text["text"].lower())
                assert present == (qa["answer"] == "Yes.")
                word_answers.append(qa["answer"])
    for answers in (topic_answers, word_answers):
        assert answers.count("Yes.") == answers.count("No.") == len(MORE) // 2
