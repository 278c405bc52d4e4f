"""Stage `classification`: yes/no and short-label questions about the model's own texts.

Input: ``texts`` (a ``texts`` artifact). Each text is read as one user turn (nothing masked) with
four questions: whether it is about a named topic (its own or another's, yes and no balanced over
the set), whether its tone is positive or negative, whether a named word occurs in it (one of
its own words or a word of another text that it lacks, balanced), and what it is about. Labels
come from how the text was prompted. Rows are of kind ``text``, source ``classification``, split
``train``.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pipeline.core import stage
from pipeline.core.stage import bounded
from pipeline.data.schema import as_answer, write_dialogs
from pipeline.data.texts import read_texts

log = logging.getLogger("pipeline.data.classification")
SOURCE = "classification"
TONES = {"positive": "Positive.", "negative": "Negative."}
COMMON = frozenset(
    """about after again also been before being below between both could does doing down during
    each from further have having here into itself just more most other over same should some
    such than that their them then there these they this those through under until very what
    when where which while with would your""".split()
)


@dataclass
class ClassificationParams:
    """How the classification questions are drawn."""

    MIX_NAME: ClassVar[str] = SOURCE
    """What ``train.mix`` calls this stage's rows (their ``source`` up to any colon)."""

    seed: int = 0
    """Seed of the yes/no draws and of the words asked about."""
    min_word_length: int = bounded(5, minimum=1)
    """Words asked about have at least this many letters (content words, not "the")."""


def content_words(text: str, min_length: int) -> list[str]:
    found = re.findall(r"[A-Za-z]+", text)
    return sorted({w.lower() for w in found if len(w) >= min_length} - COMMON)


def _balanced(n: int, rng: random.Random) -> list[bool]:
    flags = [True] * (n // 2) + [False] * (n - n // 2)
    rng.shuffle(flags)
    return flags


def classification_rows(texts: list[dict[str, Any]], params: ClassificationParams) -> list[dict]:
    rng = random.Random(params.seed)
    topics = sorted({t["topic"] for t in texts})
    vocab = {t["id"]: content_words(t["text"], params.min_word_length) for t in texts}
    topic_yes, word_yes = _balanced(len(texts), rng), _balanced(len(texts), rng)
    rows = []
    for text, on_topic, has_word in zip(texts, topic_yes, word_yes, strict=True):
        asked = text["topic"] if on_topic else rng.choice([t for t in topics if t != text["topic"]])
        own = vocab[text["id"]]
        others = sorted({w for t in texts for w in vocab[t["id"]]} - set(own))
        if not own or not others:
            continue
        word = rng.choice(own if has_word else others)
        qa = [
            (f"Is the text about {asked}? Answer yes or no.", "Yes." if on_topic else "No."),
            ("Is the tone of the text positive or negative?", TONES[text["mood"]]),
            (
                f'Does the word "{word}" appear in the text? Answer yes or no.',
                "Yes." if has_word else "No.",
            ),
            ("What is the text about?", as_answer(text["topic"])),
        ]
        rows.append(
            {
                "label": f"text:{text['id']}",
                "kind": "text",
                "messages": [{"role": "user", "content": text["text"]}],
                "n_masked_turns": 0,
                "qa": [{"question": q, "answer": a} for q, a in qa],
                "source": SOURCE,
                "split": "train",
            }
        )
    return rows


def run(params: ClassificationParams, inputs: dict[str, Path], workdir: Path, info: dict) -> None:
    texts = read_texts(inputs["texts"])
    unknown = sorted({t["mood"] for t in texts} - set(TONES))
    if unknown:
        raise SystemExit(f"classification: moods {unknown} have no tone answer ({list(TONES)})")
    rows = write_dialogs(classification_rows(texts, params), workdir / "dialogs.parquet")
    info.update(rows=len(rows))
    log.info("wrote %d classification dialogs", len(rows))


if __name__ == "__main__":
    stage.main("classification", ClassificationParams, run, needs=("texts",))
