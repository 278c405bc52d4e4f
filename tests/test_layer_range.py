"""The blocks an experiment names are refused at parse when its model lacks them."""

import pytest

from pipeline.core.errors import InputError
from pipeline.core.layer_range import check_layers


def test_a_block_past_the_model_names_the_setting_the_model_and_its_blocks():
    check_layers("experiments.x.train.read_layers", [0, 3], 4, "tiny")
    with pytest.raises(InputError) as info:
        check_layers("experiments.x.train.read_layers", [1, 4], 4, "tiny")
    assert str(info.value) == (
        "experiments.x.train.read_layers = 4, but the model tiny has 4 blocks (0..3)"
    )
    with pytest.raises(InputError, match="cache.layers = -1"):
        check_layers("experiments.x.cache.layers", [-1], 4, "tiny")


def test_a_model_of_unknown_depth_is_left_to_its_stages():
    check_layers("experiments.x.train.read_layers", [99], None, "tiny")
