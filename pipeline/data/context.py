"""Stage `context`: context-prediction dialogs on the model's own texts (reading curriculum).

Input: ``texts`` (a ``texts`` artifact). Per text, three read dialogs, each with one question
whose answer lies in the text's own words:

- next words: the user's request (masked) and the first half of the reply are read; "What are
  the next words of the text?" is answered with the reply's next few words;
- the masked request: the request (masked) and the whole reply are read; "What did the user
  ask for?" is answered with the request, which only the reply's activations attended to;
- repeat: the reply's first sentence is read as a user turn; "Repeat the text." is answered with
  it word for word.

Rows are of kind ``text``, source ``context`` and split ``train``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

from pipeline.core import stage
from pipeline.core.stage import bounded
from pipeline.data.schema import write_dialogs
from pipeline.data.texts import read_texts

log = logging.getLogger("pipeline.data.context")
SOURCE = "context"
Variant = Literal["next", "request", "repeat"]
"""The context questions, one dialog per text each (:data:`QUESTIONS`)."""
QUESTIONS = {
    "next": "What are the next words of the text?",
    "request": "What did the user ask for?",
    "repeat": "Repeat the text.",
}


@dataclass
class ContextParams:
    """Which context questions, and how long their answers are."""

    MIX_NAME: ClassVar[str] = SOURCE
    """What ``train.mix`` calls this stage's rows (their ``source`` up to any colon)."""

    variants: tuple[Variant, ...] = get_args(Variant)
    """Which of ``next``, ``request``, ``repeat`` to write (one dialog per text each)."""
    next_words: int = bounded(6, minimum=1)
    """Words in a ``next`` answer."""
    repeat_words: int = bounded(16, minimum=3)
    """Longest sentence a ``repeat`` dialog reads."""

    def __post_init__(self) -> None:
        if not self.variants:
            raise stage.ParamsError("context: variants must name at least one question")


def first_sentence(text: str, max_words: int) -> str | None:
    """The text's first sentence, if it has at most ``max_words`` words (and at least 3)."""
    sentence = re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)[0]
    return sentence if 3 <= len(sentence.split()) <= max_words else None


def context_rows(texts: list[dict[str, Any]], params: ContextParams) -> list[dict[str, Any]]:
    rows = []

    def row(text, messages, masked, variant, answer):
        return {
            "label": f"text:{text['id']}",
            "kind": "text",
            "messages": messages,
            "n_masked_turns": masked,
            "qa": [{"question": QUESTIONS[variant], "answer": answer}],
            "source": SOURCE,
            "split": "train",
        }

    for text in texts:
        request = {"role": "user", "content": text["prompt"]}
        words = text["text"].split()
        half = len(words) // 2
        if "next" in params.variants and len(words) - half >= params.next_words:
            reply = {"role": "assistant", "content": " ".join(words[:half])}
            rows.append(
                row(text, [request, reply], 1, "next", " ".join(words[half:][: params.next_words]))
            )
        if "request" in params.variants:
            reply = {"role": "assistant", "content": text["text"]}
            rows.append(row(text, [request, reply], 1, "request", text["prompt"]))
        sentence = first_sentence(text["text"], params.repeat_words)
        if "repeat" in params.variants and sentence:
            rows.append(row(text, [{"role": "user", "content": sentence}], 0, "repeat", sentence))
    return rows


def run(params: ContextParams, inputs: dict[str, Path], workdir: Path, info: dict) -> None:
    rows = write_dialogs(
        context_rows(read_texts(inputs["texts"]), params), workdir / "dialogs.parquet"
    )
    info.update(rows=len(rows))
    log.info("wrote %d context dialogs", len(rows))


if __name__ == "__main__":
    stage.main("context", ContextParams, run, needs=("texts",))
