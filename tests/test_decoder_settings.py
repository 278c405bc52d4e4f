"""A decoder's read settings from its train manifest, one or several read layers."""

from __future__ import annotations

import pytest

from pipeline.mechanism.decoder_prompt import ReadAt
from pipeline.mechanism.decoder_settings import DecoderSettings, UntrainedLayer


def test_several_layers_read_the_deepest_by_default_and_write_where_they_read():
    manifest = {"params": {"read_layers": [23, 15], "write_layer": None, "mode": "cached"}}
    settings = DecoderSettings.from_manifest(manifest)
    assert settings.read_layers == (15, 23) and settings.read_layer == 23
    assert settings.at() == ReadAt(23, 23, named=True) and settings.cached
    low = settings.with_layer(15)
    assert low.at() == ReadAt(15, 15, named=True) and low.lowest_write_block == 15
    with pytest.raises(UntrainedLayer, match=r"trained to read blocks \[15, 23\], not block 7"):
        settings.with_layer(7)
    assert "target blocks 15, 23" in settings.describe()


def test_one_layer_and_decoders_trained_before_read_layers():
    legacy = DecoderSettings.from_manifest({"params": {"read_layer": 4, "write_layer": 0}})
    assert legacy.read_layers == (4,) and legacy.at() == ReadAt(4, 0, named=False)
    early = DecoderSettings.from_manifest(
        {"params": {"read_layers": [4, 8], "write_layer": 1, "inject": "add"}}, layer=4
    )
    assert early.at() == ReadAt(4, 1, named=True) and early.inject == "add"
    assert "adds it to the output of its own block 1" in early.describe()


@pytest.mark.parametrize(
    "params, message",
    [
        ({}, "no params.read_layers"),
        ({"read_layers": [3, -1]}, "block indices"),
        ({"read_layers": [3], "write_layer": True}, "block indices"),
        ({"read_layers": [3], "positions": "some"}, "params.positions"),
        ({"read_layers": [3], "inject": "blend"}, "params.inject"),
    ],
)
def test_bad_manifests_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        DecoderSettings.from_manifest({"params": params}, where="train/_manifest.json")


def test_a_deeper_decoder_is_refused_on_a_shallow_model():
    settings = DecoderSettings.from_manifest({"params": {"read_layers": [2, 6], "write_layer": 0}})
    settings.check_depth(7)
    with pytest.raises(ValueError, match="block 6; the model has 6 blocks"):
        settings.check_depth(6)
