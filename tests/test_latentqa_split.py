"""LatentQA training data lives in data/latentqa/; the evaluation split is evaluation only."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from conftest import REPO, SHARED_EVAL

from pipeline.core.errors import InputError
from pipeline.core.graph import experiment_graph
from pipeline.data.latentqa_split import DataLeak, check_disjoint

LEAK = REPO / "tests" / "bad_inputs" / "latentqa" / "leak"


def _config(model_dir, train_dir, eval_dir, **eval_values) -> dict:
    return {
        "model": {"source": "local", "name": str(model_dir)},
        "data": {
            "latentqa": {"path": str(train_dir), "kinds": ["control"]},
            "latentqa_eval": {"path": str(eval_dir), "kinds": ["control"], **eval_values},
        },
        "train": {"read_layers": [1]},
    }


@pytest.fixture
def clean_train(tmp_path):
    """The leaking training folder without its leaked row."""
    folder = tmp_path / "train"
    shutil.copytree(LEAK / "train", folder)
    rows = json.loads((folder / "control.json").read_text())
    (folder / "control.json").write_text(json.dumps(rows[:1]))
    return folder


def test_a_training_row_of_the_evaluation_split_is_refused_naming_both_files():
    with pytest.raises(DataLeak) as leak:
        check_disjoint(LEAK / "train", LEAK / "eval")
    message = str(leak.value)
    assert "leak/train/control.json: 1 rows" in message
    assert "leak/eval/control.json" in message and "record 1 = record 0" in message


def test_disjoint_folders_pass(clean_train):
    check_disjoint(clean_train, LEAK / "eval")


def test_the_evaluation_split_feeds_evaluation_only(tiny_model_dir, clean_train):
    graph = experiment_graph("x", _config(tiny_model_dir, clean_train, LEAK / "eval"))
    evaluation = graph["data:latentqa_eval"]
    assert (
        evaluation.params["split"] == "eval" and graph["data:latentqa"].params["split"] == "train"
    )
    assert graph["evaluate"].inputs["latentqa"] is evaluation
    training_inputs = {**graph["filter"].inputs, **graph["train"].inputs}
    assert evaluation not in training_inputs.values()
    assert graph["data:latentqa"] in graph["filter"].inputs.values()


def test_the_evaluation_split_cannot_be_relabelled_for_training(tiny_model_dir, clean_train):
    with pytest.raises(InputError, match="latentqa_eval.split"):
        experiment_graph("x", _config(tiny_model_dir, clean_train, LEAK / "eval", split="train"))


def test_a_missing_training_folder_names_what_is_missing(tiny_model_dir, tmp_path):
    with pytest.raises(
        FileNotFoundError, match="lacks qa.json, control.json.*data/latentqa/README"
    ):
        experiment_graph("x", _config(tiny_model_dir, tmp_path / "absent", LEAK / "eval"))


def test_no_experiment_reads_data_outside_the_repository():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for name, values in config["experiments"].items():
        for source, spec in (values.get("data") or {}).items():
            if isinstance(spec, dict) and "path" in spec:
                assert not spec["path"].startswith(("..", "/")), (name, source, spec["path"])
    for name in ("decoder_8b", "decoder_8b_curriculum", "decoder_70b", "decoder_smollm2"):
        data = config["experiments"][name]["data"]
        assert data.get("latentqa", {"path": "data/latentqa"})["path"] == "data/latentqa"
        assert data["latentqa_eval"]["path"] == "data/latentqa_eval"


@pytest.mark.skipif(not SHARED_EVAL.exists(), reason="../shared/latentqa_eval is absent")
def test_the_committed_checksums_are_the_published_evaluation_splits():
    from pipeline.core import store

    listed = (REPO / "data" / "latentqa_eval" / "SHA256SUMS").read_text().split("\n")
    sums = dict(reversed(line.split()) for line in listed if line.strip())
    assert set(sums) == {"control.json", "qa.json", "stimulus.json", "system.json"}
    for name, digest in sums.items():
        assert store.file_sha256(SHARED_EVAL / name) == digest, name


def test_recorded_checksums_are_checked_at_start(tiny_model_dir, clean_train):
    from pipeline.core import store

    sums = clean_train / "SHA256SUMS"
    names = sorted(p.name for p in clean_train.glob("*.json"))
    sums.write_text("".join(f"{store.file_sha256(clean_train / n)}  {n}\n" for n in names))
    experiment_graph("x", _config(tiny_model_dir, clean_train, LEAK / "eval"))  # all match
    (clean_train / "qa.json").write_text((clean_train / "qa.json").read_text() + " ")
    with pytest.raises(InputError, match=r"qa.json does not match its checksum in .*SHA256SUMS"):
        experiment_graph("x", _config(tiny_model_dir, clean_train, LEAK / "eval"))
    sums.write_text("not a checksum line\n")
    with pytest.raises(InputError, match=r"SHA256SUMS, line 1: not"):
        experiment_graph("x", _config(tiny_model_dir, clean_train, LEAK / "eval"))
