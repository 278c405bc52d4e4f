"""The Python API for notebooks: one load, readings and answers under every condition, and the
README's notebook example run as written."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from conftest import REPO
from test_read import MODEL_KEY, _train_artifact

from pipeline.api import CONDITIONS, Answer, Decoder, Reading
from pipeline.core import store
from pipeline.data.schema import DataError

SYSTEM = [
    {"role": "system", "content": "You are a pirate."},
    {"role": "user", "content": "Hello"},
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, talking_model_dir):
    """A prepared model (a tiny model that talks) and a train artifact on it."""
    root = tmp_path_factory.mktemp("api")
    model = root / "prepare_model" / MODEL_KEY
    shutil.copytree(talking_model_dir, model)
    store.write_manifest(model, MODEL_KEY, "prepare_model", {}, {})
    return model, _train_artifact(root, model, MODEL_KEY)


@pytest.fixture(scope="module")
def decoder(folders):
    model, train = folders
    return Decoder.from_folders(train, model, device="cpu")


def test_masked_turns_are_run_but_not_read(decoder):
    masked, unmasked = decoder.read_all([{"messages": SYSTEM, "n_masked_turns": 1}, SYSTEM])
    assert isinstance(masked, Reading) and masked.layer == 2  # the train manifest's read layer
    assert masked.n_read_tokens < unmasked.n_read_tokens
    assert masked._read.input_ids == unmasked._read.input_ids
    assert masked.activations.shape == (masked.n_read_tokens, 64)
    assert "pirate" not in masked.read_text and "pirate" in unmasked.read_text
    assert "Hello" in masked.read_text


def test_conditions_read_what_they_say(decoder):
    own, other = decoder.read_all(["My grandmother keeps bees in Wales.", "I sail on weekends."])
    question = "What does the user do?"
    # Shuffled reads the donor's activations: exactly the donor's own answer.
    shuffled = decoder.ask(own, question, "shuffled", donor=other, max_new_tokens=6)
    assert shuffled.answer == decoder.ask(other, question, max_new_tokens=6).answer
    assert shuffled.donor == 0 and shuffled.condition == "shuffled"
    # Text-only reads no activations: they can change without changing its answer.
    text_only = decoder.ask(own, question, "text_only", max_new_tokens=6).answer
    own._read.acts = torch.randn_like(own._read.acts) * 10
    assert decoder.ask(own, question, "text_only", max_new_tokens=6).answer == text_only
    compared = decoder.compare(other, question, donor=own, max_new_tokens=6)
    assert list(compared) == list(CONDITIONS)
    assert all(isinstance(a, Answer) and a.condition == c for c, a in compared.items())
    assert compared["shuffled"].to_dict()["donor"] == 0
    with pytest.raises(ValueError, match="donors"):
        decoder.ask(own, question, "shuffled")
    with pytest.raises(ValueError, match="condition"):
        decoder.ask(own, question, "sideways")


def test_untrained_turns_the_adapter_off(decoder):
    reading = decoder.read("Tell me a story about the sea.")
    question = "What is the topic?"
    untrained = decoder.ask(reading, question, "untrained", max_new_tokens=8).answer
    with decoder.model.disable_adapter():
        base = decoder.ask(reading, question, max_new_tokens=8).answer
    assert untrained == base
    # The adapter is back on afterwards (its random B changes what the decoder says).
    assert decoder.ask(reading, question, max_new_tokens=8).answer != base


def test_ask_all_orders_answers_by_reading_then_question(decoder):
    readings = decoder.read_all(["One.", "Two.", "Three."])
    answers = decoder.ask_all(readings, ["A?", "B?"], max_new_tokens=2)
    assert [(a.dialog, a.question) for a in answers] == [
        (d, q) for d in range(3) for q in ("A?", "B?")
    ]


def test_another_layer_and_bad_dialogs(decoder):
    default = decoder.read("Hello there.")
    lower = decoder.read("Hello there.", layer=1)
    assert lower.layer == 1 and not torch.equal(lower.activations, default.activations)
    with pytest.raises(ValueError, match="layer 9"):
        decoder.read("Hello there.", layer=9)
    with pytest.raises(DataError, match=r"messages\[0\].role"):
        decoder.read([{"role": "robot", "content": "beep"}])
    with pytest.raises(DataError, match="n_masked_turns"):
        decoder.read({"messages": SYSTEM, "n_masked_turns": 2})


def test_a_missing_manifest_needs_the_read_layer(folders, tmp_path):
    model, train = folders
    bare = tmp_path / "bare"
    shutil.copytree(train / "adapter", bare)
    with pytest.raises(ValueError, match="read_layer"):
        Decoder.from_folders(bare, model, device="cpu")
    decoder = Decoder.from_folders(bare, model, device="cpu", read_layer=1)
    assert decoder.settings.read_layer == 1
    with pytest.raises(ValueError, match="beyond the model"):
        Decoder.from_folders(bare, model, device="cpu", read_layer=7)


def readme_example() -> str:
    """The README's notebook example: the Python block under "In a notebook"."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### In a notebook") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_notebook_example_runs_as_written(folders, tmp_path, monkeypatch, capsys):
    model, train = folders
    view = tmp_path / "results" / "decoder_smollm2"
    view.mkdir(parents=True)
    (view / "view.json").write_text(json.dumps({"train": str(train), "prepare_model": str(model)}))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    for condition in CONDITIONS:
        assert f"{condition}:" in printed
    reading = namespace["beekeeper"]
    assert reading.completion and reading.messages[-1]["content"] == reading.completion
    assert isinstance(namespace["answer"], Answer)
