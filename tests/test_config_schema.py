"""The config schema is generated from the params dataclasses and catches bad configs at start."""

import copy
import subprocess
import sys

import jsonschema
import pytest
import yaml
from conftest import REPO

from pipeline.core import config_schema

SCHEMA_PATH = REPO / "workflow" / "schemas" / "config.schema.yaml"


@pytest.fixture(scope="module")
def schema():
    return yaml.safe_load(SCHEMA_PATH.read_text())


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_committed_schema_is_up_to_date(schema):
    assert schema == yaml.safe_load(config_schema.render()), (
        "regenerate: python -m pipeline.core.config_schema > workflow/schemas/config.schema.yaml"
    )


def test_project_config_is_valid(schema, config):
    jsonschema.validate(config, schema)
    assert {"decoder_smollm2", "decoder_8b"} <= set(config["experiments"])


def test_every_field_is_documented(schema):
    for section in ("model", "filter", "cache", "train", "evaluate", "report"):
        props = schema["$defs"]["experiment"]["properties"][section]["properties"]
        undocumented = [name for name, prop in props.items() if not prop.get("description")]
        assert not undocumented, f"{section}: fields without a docstring: {undocumented}"


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("train", "learning_rate"), 1e-3, "learning_rate"),
        (("train", "max_steps"), "many", "'many' is not of type 'integer'"),
        (("model", "dtype"), 16, "16 is not one of"),
        (("train", "mode"), "bogus", r"'bogus' is not one of \['cached', 'on_the_fly'\]"),
        (("train", "lr"), -1.0, "-1.0 is less than or equal to the minimum of 0"),
        (("filter", "eval_fraction"), 1.5, "1.5 is greater than the maximum of 1"),
    ],
)
def test_bad_experiment_settings_are_rejected(schema, config, path, value, message):
    bad = copy.deepcopy(config)
    bad["experiments"]["decoder_smollm2"].setdefault(path[0], {})[path[1]] = value
    with pytest.raises(jsonschema.ValidationError, match=message):
        jsonschema.validate(bad, schema)


def test_choices_and_ranges_of_the_dataclasses_are_in_the_schema(schema):
    sections = schema["$defs"]["experiment"]["properties"]
    train = sections["train"]["properties"]
    assert train["mode"]["enum"] == ["cached", "on_the_fly"]
    assert train["parallel"]["enum"] == ["ddp", "fsdp"]
    assert train["dtype"]["enum"] == ["float32", "bfloat16"]
    assert train["lr"]["exclusiveMinimum"] == 0 and train["max_steps"]["minimum"] == 1
    assert sections["evaluate"]["properties"]["similarity"]["enum"] == [
        "auto",
        "minilm",
        "token_f1",
    ]
    cache = sections["analysis"]["anyOf"][0]["properties"]["layer_cache"]["properties"]
    assert cache["pooling"]["items"] == {"enum": ["last", "mean"]}
    assert cache["max_per_split"]["minimum"] == 1  # null still passes: bounds bind numbers only


@pytest.mark.parametrize(
    "setting, value, named",
    [("lerning_rate", 1e-3, "lerning_rate"), ("lr", -1.0, "experiments.decoder_smollm2.train.lr")],
)
def test_snakemake_stops_at_start_on_a_bad_setting(tmp_path, config, setting, value, named):
    bad = copy.deepcopy(config)
    bad["experiments"]["decoder_smollm2"]["train"][setting] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", str(path), "--cores", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert named in result.stdout + result.stderr
