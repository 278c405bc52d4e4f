"""Stage `texts`: short texts the target model writes itself, for the reading curriculum.

Input: ``model`` (a prepared model folder) and the prompt file ``data/curriculum/texts.yaml``
(topics, moods, styles). Every topic in every mood and style becomes one prompt; the model's greedy
reply is the text, labelled with its topic and mood by construction. Output ``texts.parquet``
(``id, topic, mood, prompt, text``), read by the ``context`` and ``classification`` stages. The
texts are the model's own: reading them is reading activations the model produces in use.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.core import stage
from pipeline.core.choices import Dtype
from pipeline.core.stage import bounded
from pipeline.data.schema import DataError

log = logging.getLogger("pipeline.data.texts")
TEXTS = "texts.parquet"


@dataclass
class TextParams:
    """How the curriculum's texts are written."""

    max_new_tokens: int = bounded(48, minimum=1)
    """Longest text, in tokens of the target model."""
    min_words: int = bounded(12, minimum=1)
    """Shorter replies are dropped (too little to ask about)."""
    max_topics: int | None = bounded(None, minimum=1)
    """Use only the first this many topics (None: all)."""
    batch_size: int = bounded(64, minimum=1)
    """Prompts per generation batch."""
    dtype: Dtype = "float32"
    """Compute dtype of the model."""
    device: str = "cpu"
    """``cpu``, ``cuda``, ..."""


def load_prompts(path: Path, max_topics: int | None = None) -> list[dict[str, str]]:
    """Every (topic, mood, style) prompt of the file; errors name the file and the field."""
    file = str(path)
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(file, None, "<file>", f"unreadable prompt file: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(file, None, "<top level>", "expected topics, moods and styles")
    topics, moods, styles = data.get("topics"), data.get("moods"), data.get("styles")
    if not isinstance(topics, list) or not all(isinstance(t, str) and t for t in topics):
        raise DataError(file, None, "topics", "expected a list of topic strings")
    if not isinstance(moods, dict) or not moods:
        raise DataError(file, None, "moods", "expected a mapping label: wording")
    if not isinstance(styles, list) or not styles:
        raise DataError(file, None, "styles", "expected a list of prompt templates")
    for i, style in enumerate(styles):
        if not isinstance(style, str) or "{topic}" not in style or "{mood}" not in style:
            raise DataError(file, i, "styles", "a style needs the fields {topic} and {mood}")
    return [
        {"topic": topic, "mood": mood, "prompt": style.format(topic=topic, mood=wording)}
        for topic in topics[:max_topics]
        for mood, wording in moods.items()
        for style in styles
    ]


def text_id(prompt: str, text: str) -> str:
    return hashlib.sha256(f"{prompt}\x1f{text}".encode()).hexdigest()[:16]


def read_texts(folder: Path) -> list[dict[str, Any]]:
    """The texts of a ``texts`` artifact."""
    import polars as pl

    path = Path(folder) / TEXTS
    if not path.exists():
        raise DataError(path, None, "<file>", "does not exist (not a texts artifact?)")
    return pl.read_parquet(path).to_dicts()


def run(params: TextParams, inputs: dict[str, Path], workdir: Path, info: dict) -> None:
    import polars as pl

    from pipeline.mechanism.completion import generate_completions
    from pipeline.mechanism.modeling import load_model

    prompts = load_prompts(inputs["prompts"], params.max_topics)
    model, tokenizer = load_model(inputs["model"], params.dtype, params.device)
    replies, stats = generate_completions(
        model,
        tokenizer,
        [[{"role": "user", "content": p["prompt"]}] for p in prompts],
        params.max_new_tokens,
        params.batch_size,
    )
    rows = [
        {"id": text_id(p["prompt"], text), **p, "text": text}
        for p, text in zip(prompts, replies, strict=True)
        if len(text.split()) >= params.min_words
    ]
    pl.DataFrame(rows).write_parquet(workdir / TEXTS)
    info.update(
        stats, prompts=len(prompts), texts=len(rows), dropped_short=len(prompts) - len(rows)
    )
    log.info("wrote %d texts (%d too short)", len(rows), len(prompts) - len(rows))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stage.main("texts", TextParams, run, needs=("model", "prompts"))
