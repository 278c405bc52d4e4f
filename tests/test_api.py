"""The Python API for notebooks: one load, readings and answers under every condition, and the
README's notebook example run as written."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from conftest import REPO
from test_evaluate import make_train_artifact
from test_read import MODEL_KEY, _train_artifact, prepared_folders

from pipeline.api import CONDITIONS, Answer, Decoder, Reading
from pipeline.data.schema import DataError
from pipeline.mechanism.decoder_settings import UntrainedLayer
from pipeline.mechanism.layer_choice import LayerChoice

SYSTEM = [
    {"role": "system", "content": "You are a pirate."},
    {"role": "user", "content": "Hello"},
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, talking_model_dir):
    """A prepared model (a tiny model that talks) and a train artifact on it."""
    return prepared_folders(tmp_path_factory.mktemp("api"), talking_model_dir)


@pytest.fixture(scope="module")
def decoder(folders):
    model, train = folders
    return Decoder.from_folders(train, model, device="cpu")


def test_masked_turns_are_run_but_not_read(decoder):
    masked, unmasked = decoder.read_all([{"messages": SYSTEM, "n_masked_turns": 1}, SYSTEM])
    assert isinstance(masked, Reading) and masked.layers == (2,)  # the train manifest's
    assert masked.n_read_tokens < unmasked.n_read_tokens
    assert masked.input_ids == unmasked.input_ids
    assert masked.activations.shape == (1, masked.n_read_tokens, 64)
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
    own.activations = torch.randn_like(own.activations) * 10
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


def test_untrained_layers_and_bad_dialogs_are_refused(decoder):
    for layer in (1, 9):
        with pytest.raises(UntrainedLayer, match=rf"blocks \[2\], not block {layer}"):
            decoder.read("Hello there.", layer=layer)
    with pytest.raises(UntrainedLayer, match="one of blocks"):
        decoder.read("Hello there.", layer="all")
    with pytest.raises(ValueError, match="'top'"):
        decoder.read("Hello there.", layer="top")
    assert decoder.read("Hello there.", layer=2).layers == (2,)
    with pytest.raises(DataError, match=r"messages\[0\].role"):
        decoder.read([{"role": "robot", "content": "beep"}])
    with pytest.raises(DataError, match="n_masked_turns"):
        decoder.read({"messages": SYSTEM, "n_masked_turns": 2})


@pytest.fixture(scope="module")
def two_layers(folders, tmp_path_factory):
    """A decoder trained on blocks 1 and 3, its layer choice sending relation questions to 1 and
    persona questions to 3."""
    model, _ = folders
    choice = LayerChoice(
        losses={"template": {1: 2.0, 3: 1.0}, "relation_qa": {1: 0.5, 3: 2.0}},
        questions={
            "template": ["What persona is the assistant adopting?"],
            "relation_qa": ["Which country is mentioned?"],
        },
        layers=[1, 3],
    )
    root = tmp_path_factory.mktemp("api_two")
    train = _train_artifact(root, model, MODEL_KEY, (1, 3), choice, name="two")
    return Decoder.from_folders(train, model, device="cpu")


def test_a_decoder_of_two_layers_reads_each_question_at_its_layer(two_layers):
    decoder = two_layers
    assert decoder.layers == (1, 3) and decoder.layer == "auto"
    both = decoder.read("We flew to Lyon last year.")
    assert both.layers == (1, 3) and both.activations.shape[0] == 2
    # One forward pass reads both blocks: each as a reading of that block alone.
    for block in (1, 3):
        alone = decoder.read("We flew to Lyon last year.", layer=block)
        assert alone.layers == (block,)
        torch.testing.assert_close(alone.at(block), both.at(block))
    assert not torch.equal(both.at(1), both.at(3))
    city, persona = "Which city is mentioned?", "What persona is it?"
    assert [decoder.layer_for(q) for q in (city, persona)] == [1, 3]  # auto: by its kind
    answers = decoder.ask_all([both], [city, persona], max_new_tokens=4)
    assert [a.layer for a in answers] == [1, 3]
    at_one = decoder.ask(both, city, max_new_tokens=4, layer=1)
    assert at_one.answer == answers[0].answer and at_one.layer == 1
    assert decoder.ask(both, persona, "text_only", max_new_tokens=2).layer is None
    # The decoder is told which block it is given, as in training.
    examples, _, _ = decoder._inputs([both], [city], "true", None, [3])
    prompt = decoder.tokenizer.decode(examples[0].input_ids)
    assert "Layer 3:" in prompt and "Layer 1:" not in prompt
    assert set(examples[0].write_layers) == {3}  # written at the depth read (write_layer null)
    with pytest.raises(UntrainedLayer, match=r"trained to read blocks \[1, 3\], not block 2"):
        decoder.ask(both, city, layer=2)
    with pytest.raises(ValueError, match=r"holds blocks \[3\], not block 1"):
        decoder.ask(decoder.read("Hi.", layer=3), city)  # auto asks block 1 of it


def test_a_decoder_reading_every_layer_at_once_reads_them_all(folders, tmp_path):
    model, _ = folders
    train = make_train_artifact(tmp_path, model, (1, 2), None, name="all", all_layers=True)
    decoder = Decoder.from_folders(train, model, device="cpu")
    assert decoder.layer == "all" and decoder.layer_for("Which city?") == "all"
    with pytest.raises(UntrainedLayer, match=r"reads blocks \[1, 2\] at once"):
        Decoder.from_folders(train, model, device="cpu", read_layer=1)
    reading = decoder.read("We flew to Lyon last year.")
    assert reading.layers == (1, 2)
    answer = decoder.ask(reading, "Which city is mentioned?", max_new_tokens=3)
    assert answer.layer == "all"
    examples, acts, _ = decoder._inputs([reading], ["Q?"], "true", None, ["all"])
    prompt = decoder.tokenizer.decode(examples[0].input_ids)
    assert prompt.index("Layer 1:") < prompt.index("Layer 2:")
    assert len(examples[0].placeholder_positions) == 2 * reading.n_read_tokens == len(acts[0])
    with pytest.raises(UntrainedLayer, match="at once"):
        decoder.ask(reading, "Q?", layer=2)


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
