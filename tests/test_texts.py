"""The texts stage: every topic x mood x style prompt, answered by the target model itself."""

from __future__ import annotations

import polars as pl
import pytest
import yaml

from pipeline.core import stage
from pipeline.data.schema import DataError
from pipeline.data.texts import TEXTS, TextParams, load_prompts, read_texts, run

PROMPTS = {
    "topics": ["the sea", "a cat", "homework"],
    "moods": {"positive": "happy", "negative": "sad"},
    "styles": ["Write about {topic}, {mood}.", "Describe {topic} in a {mood} way."],
}


def write_prompts(tmp_path, data=PROMPTS):
    path = tmp_path / "texts.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_topic_mood_and_style_is_one_prompt(tmp_path):
    prompts = load_prompts(write_prompts(tmp_path))
    assert len(prompts) == 3 * 2 * 2
    assert {(p["topic"], p["mood"]) for p in prompts} == {
        (t, m) for t in PROMPTS["topics"] for m in PROMPTS["moods"]
    }
    assert "Describe a cat in a sad way." in [p["prompt"] for p in prompts]
    assert len(load_prompts(write_prompts(tmp_path), max_topics=1)) == 4


@pytest.mark.parametrize(
    "data, field",
    [
        ({**PROMPTS, "topics": "the sea"}, "topics"),
        ({**PROMPTS, "moods": []}, "moods"),
        ({**PROMPTS, "styles": ["Write about {topic}."]}, "styles"),
    ],
)
def test_bad_prompt_files_name_the_field(tmp_path, data, field):
    with pytest.raises(DataError) as info:
        load_prompts(write_prompts(tmp_path, data))
    assert info.value.field == field


def test_the_stage_writes_the_models_own_texts(tmp_path, talking_model_dir):
    prompts = write_prompts(tmp_path)
    inputs = {"model": talking_model_dir, "prompts": prompts}
    params = TextParams(max_new_tokens=6, min_words=1, batch_size=5)
    texts = []
    for name in ("a", "b"):
        out = tmp_path / name
        stage.main("texts", TextParams, run, [
            "--out", str(out), "--key", "0" * 16, "--params", '{"max_new_tokens": 6, '
            '"min_words": 1, "batch_size": 5}', "--input", f"model={talking_model_dir}",
            "--input", f"prompts={prompts}"])  # fmt: skip
        texts.append(read_texts(out))
    assert texts[0] == texts[1]  # greedy: the same texts every run
    assert len(texts[0]) == 12 and all(t["text"].strip() for t in texts[0])
    assert len({t["id"] for t in texts[0]}) == 12
    strict = tmp_path / "strict"
    strict.mkdir()
    run(TextParams(max_new_tokens=6, min_words=50), inputs, strict, {})
    assert pl.read_parquet(strict / TEXTS).height == 0  # every reply is shorter than 50 words
    assert params.min_words == 1
