"""A config's experiments as the workflow, the layer choice and ``gc --keep`` see them: defaults
merged in, graphs built in the order reports compare, and the experiments that cannot run here
set aside with their reason while the others still build."""

import pytest
from conftest import REPO

from pipeline.core import stage
from pipeline.core.errors import InputError
from pipeline.core.experiments import load_experiments
from pipeline.core.graph import deep_merge, experiment_graph


@pytest.fixture
def config(tiny_model_dir, tmp_path):
    return {
        "defaults": {
            "model": {"source": "local", "name": str(tiny_model_dir)},
            "train": {"read_layers": [1], "max_steps": 2},
            "evaluate": {},
            "report": {},
        },
        "experiments": {
            "tiny": {"data": {"templates": {"completion_tokens": 4}}},
            "longer": {
                "data": {"templates": {"completion_tokens": 4}},
                "train": {"max_steps": 6},
                "report": {"compare_with": ["tiny"]},
            },
            # Its data is not on this machine, so it cannot run; nor can what compares with it.
            "absent": {"data": {"latentqa": {"path": str(tmp_path / "absent")}}},
            "after_absent": {
                "data": {"templates": {}},
                "report": {"compare_with": ["absent"]},
            },
        },
    }


def test_defaults_are_merged_and_graphs_keyed_as_one_experiment_alone(config):
    loaded = load_experiments(config, REPO)
    assert loaded.values["longer"]["train"] == {"read_layers": [1], "max_steps": 6}
    assert list(loaded.graphs) == ["tiny", "longer"]
    alone = experiment_graph("tiny", deep_merge(config["defaults"], config["experiments"]["tiny"]))
    assert {n: v.key for n, v in loaded.graphs["tiny"].items()} == {
        n: v.key for n, v in alone.items()
    }
    assert (
        loaded.graphs["longer"]["report"].inputs["peer_tiny_train"]
        is loaded.graphs["tiny"]["train"]
    )


def test_an_experiment_that_cannot_run_is_set_aside_with_its_reason(config):
    loaded = load_experiments(config, REPO)
    assert "lacks qa.json" in loaded.errors["absent"]
    assert loaded.errors["after_absent"].startswith("it compares with absent, which cannot run: ")
    with pytest.raises(InputError, match=r"^my.yaml: experiment absent: .*lacks qa.json"):
        loaded.graphs_of(["tiny", "absent"], "my.yaml")
    with pytest.raises(InputError, match=r"no experiment 'nope', 'other'; known: \['absent'"):
        loaded.graphs_of(["nope", "other"])
    assert set(loaded.graphs_of(["longer"])) == {"longer"}


def test_only_the_named_experiments_and_those_they_compare_with_are_built(config):
    loaded = load_experiments(config, REPO, ["longer"])
    assert set(loaded.graphs) == {"tiny", "longer"} and not loaded.errors
    assert set(loaded.values) == set(config["experiments"])


def test_a_callers_check_sets_an_experiment_aside(config):
    def no_long_training(values, graph):
        return "too long" if graph["train"].params["max_steps"] > 2 else None

    loaded = load_experiments(config, REPO, ["longer"], check=no_long_training)
    assert loaded.errors == {"longer": "too long"} and set(loaded.graphs) == {"tiny"}


def test_a_setting_no_stage_takes_stops_the_whole_config(config):
    bad = deep_merge(config, {"experiments": {"tiny": {"train": {"lerning_rate": 1.0}}}})
    with pytest.raises(stage.ParamsError, match=r"experiments\.tiny\.train.*lerning_rate"):
        load_experiments(bad, REPO)
