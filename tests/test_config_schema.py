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
        (("model", "dtype"), 16, "16 is not of type 'string'"),
    ],
)
def test_bad_experiment_settings_are_rejected(schema, config, path, value, message):
    bad = copy.deepcopy(config)
    bad["experiments"]["decoder_smollm2"].setdefault(path[0], {})[path[1]] = value
    with pytest.raises(jsonschema.ValidationError, match=message):
        jsonschema.validate(bad, schema)


def test_snakemake_stops_at_start_on_an_unknown_key(tmp_path, config):
    bad = copy.deepcopy(config)
    bad["experiments"]["decoder_smollm2"]["train"]["lerning_rate"] = 1e-3
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
    assert "lerning_rate" in result.stdout + result.stderr
