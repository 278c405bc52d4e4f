"""The read layer chosen per kind of question, kept with the adapter."""

from __future__ import annotations

import json

import pytest

from pipeline.mechanism import layer_choice
from pipeline.mechanism.layer_choice import LayerChoice


def choice() -> LayerChoice:
    return LayerChoice(
        losses={"template": {15: 2.0, 23: 1.5}, "relation_qa": {15: 0.8, 23: 1.9}},
        counts={"template": 30, "relation_qa": 30},
        questions={
            "template": ["What persona is the assistant adopting?"],
            "relation_qa": ["Which country is mentioned?", "Which landmark is mentioned?"],
        },
        layers=[15, 23],
    )


def test_each_family_gets_its_lowest_loss_layer_and_unknown_families_the_best_mean():
    c = choice()
    assert c.chosen("template") == 23 and c.chosen("relation_qa") == 15
    assert c.default() == 15  # mean 1.4 at 15 against 1.7 at 23
    assert c.chosen("public") == 15
    assert c.for_families(("latentqa-import", "template")) == (23, "template")
    assert c.for_families(("nothing",)) == (15, None)


def test_a_question_reads_at_the_layer_of_the_family_it_resembles():
    c = choice()
    assert c.for_question("Which city is mentioned in the text?") == (15, "relation_qa")
    assert c.for_question("What persona does the assistant adopt?") == (23, "template")
    assert c.for_question("Zebra?") == (15, None)


def test_round_trip_and_refusals(tmp_path):
    c = choice()
    layer_choice.write(c, tmp_path)
    back = layer_choice.read(tmp_path, [23, 15])
    assert back.to_json() == c.to_json()
    assert json.loads((tmp_path / layer_choice.FILE).read_text())["chosen"] == {
        "relation_qa": 15,
        "template": 23,
    }
    with pytest.raises(ValueError, match="differ from the decoder"):
        layer_choice.read(tmp_path, [15])
    (tmp_path / layer_choice.FILE).write_text('{"losses": 3}')
    with pytest.raises(ValueError, match="not a layer choice"):
        layer_choice.read(tmp_path, [15, 23])


def test_a_decoder_without_a_choice_reads_its_deepest_layer(tmp_path):
    c = layer_choice.read(tmp_path, [7, 15])
    assert c.default() == 15 and c.for_question("Anything?") == (15, None)


def test_the_recorded_choice_is_kept_and_a_partial_file_refused(tmp_path):
    c = choice()
    layer_choice.write(c, tmp_path)
    data = json.loads((tmp_path / layer_choice.FILE).read_text())
    data["chosen"]["template"] = 15  # as if the rounded losses tied differently
    (tmp_path / layer_choice.FILE).write_text(json.dumps(data))
    assert layer_choice.read(tmp_path, [15, 23]).chosen("template") == 15
    del data["losses"]["template"]["15"]
    (tmp_path / layer_choice.FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="family template lacks a loss"):
        layer_choice.read(tmp_path, [15, 23])


def test_a_family_kept_to_some_layers_is_chosen_only_among_them(tmp_path):
    c = choice()
    c.trained = {"relation_qa": [23]}  # its loss is lower at 15, where it never trained
    assert c.chosen("relation_qa") == 23 and c.chosen("template") == 23
    layer_choice.write(c, tmp_path)
    data = json.loads((tmp_path / layer_choice.FILE).read_text())
    assert data["chosen"]["relation_qa"] == 23 and data["trained"] == {"relation_qa": [23]}
    assert layer_choice.read(tmp_path, [15, 23]).trained == {"relation_qa": [23]}
    data["trained"] = {"relation_qa": [7]}
    (tmp_path / layer_choice.FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="trained layers"):
        layer_choice.read(tmp_path, [15, 23])
