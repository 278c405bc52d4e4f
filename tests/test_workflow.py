"""The content-addressed workflow on a tiny configuration: a real build, then dry-runs.

(a) an unchanged, built configuration schedules no job; (b) an evaluation setting schedules only
evaluation and report jobs; (c) a training setting schedules training and its descendants, not
data, filtering or caching; (d) reverting a built change schedules no job and the view points at
the old artifacts again; (e) editing a stage's source reruns that stage and its descendants.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

COPIED = ("workflow", "pipeline", "data", "config", "environment.yml")
DOWNSTREAM_OF_TRAIN = {"train", "evaluate", "control", "report", "experiment", "probes", "explain"}


def tiny_config(model_dir: Path) -> dict:
    return {
        "store": "results/store",
        "logs": "results/logs",
        "default_experiments": ["tiny"],
        "experiments": {
            "tiny": {
                "model": {"source": "local", "name": str(model_dir)},
                "data": {
                    "templates": {
                        "labels_per_family": 3,
                        "stimuli_per_label": 2,
                        "completion_tokens": 0,
                        "batch_size": 8,
                    }
                },
                "filter": {"eval_fraction": 0.3},
                "train": {
                    "read_layer": 1,
                    "mode": "cached",
                    "max_steps": 2,
                    "warmup_steps": 1,
                    "per_device_batch_size": 4,
                    "checkpoint_every": 1,
                    "eval_every": 1,
                    "eval_examples": 4,
                },
                "evaluate": {
                    "max_loglik_items": 4,
                    "max_recovery_items": 2,
                    "max_relation_items": 4,
                    "max_new_tokens": 4,
                    "bootstrap": 10,
                },
                "control": {
                    "steps": 1,
                    "n_prompts": 2,
                    "n_eval_prompts": 2,
                    "max_new_tokens": 4,
                    "batch_size": 2,
                },
                "report": {"readers": True},
                "analysis": {
                    "statements": {"max_facts_per_relation": 3},
                    "probes": {
                        "ccs_restarts": 1,
                        "ccs_steps": 10,
                        "random_directions": 2,
                        "bootstrap": 10,
                        "max_iter": 10,
                    },
                    "lens": {"max_facts_per_relation": 1, "translation_pairs": ["fr-de"]},
                    "explain": {"max_items": 3, "max_new_tokens": 4, "bootstrap": 10},
                },
                "resources": {"train": {"nproc": 1, "threads": 1}},
            }
        },
    }


class Workspace:
    def __init__(self, root: Path, model_dir: Path):
        self.root = root
        for name in COPIED:
            source = REPO / name
            if source.is_dir():
                shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(source, root / name)
        self.config = tiny_config(model_dir)
        self.write_config()
        self.env = {
            **os.environ,
            "PYTHONPATH": str(root),
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        }

    def write_config(self) -> None:
        (self.root / "config" / "config.yaml").write_text(yaml.safe_dump(self.config))

    def set(self, section: str, name: str, value) -> None:
        self.config["experiments"]["tiny"].setdefault(section, {})[name] = value
        self.write_config()

    def snakemake(self, *args: str, timeout: int = 900, target: str = "results/tiny") -> str:
        result = subprocess.run(
            [sys.executable, "-m", "snakemake", "--cores", "2", *args, target],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-6000:]
        return output

    def scheduled(self, target: str = "results/tiny") -> dict[str, int]:
        output = self.snakemake("-n", target=target)
        if "Nothing to be done" in output:
            return {}
        table = output[output.index("Job stats:") :]
        return {
            m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"
        }

    def view(self) -> dict:
        return json.loads((self.root / "results" / "tiny" / "view.json").read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_dir):
    workspace = Workspace(tmp_path_factory.mktemp("workflow"), tiny_model_dir)
    workspace.snakemake()
    return workspace


def test_build_publishes_every_stage_and_the_view(built):
    view = built.view()
    assert set(view) >= {
        "prepare_model",
        "data_templates",
        "filter",
        "activation_cache",
        "train",
        "evaluate",
        "control",
        "report",
        "statements",
        "layer_cache_dialogs",
        "layer_cache_statements",
        "lens",
        "probes",
        "explain",
    }
    for path in view.values():
        assert (built.root / path / "_manifest.json").exists()
    assert (built.root / "results" / "tiny" / "adapter" / "adapter_config.json").exists()
    assert (built.root / "results" / "tiny" / "eval.json").exists()
    for name in ("probes.json", "lens.json", "explain.json"):
        assert (built.root / "results" / "tiny" / name).exists()
    summary = (built.root / view["report"] / "summary.md").read_text()
    assert "## Readers beside the decoder" in summary and "| ccs |" in summary
    assert {"probes_probes.png", "lens_lens.png"} <= {
        p.name for p in (built.root / view["report"]).iterdir()
    }


def test_analysis_has_its_own_target_reusing_the_built_artifacts(built):
    # Every analysis artifact is built: parsing the workflow points the view at them, no job.
    assert built.scheduled("results/tiny_analysis") == {}
    analysis = json.loads((built.root / "results" / "tiny_analysis" / "view.json").read_text())
    assert set(analysis) == {
        "statements",
        "layer_cache_dialogs",
        "layer_cache_statements",
        "lens",
        "probes",
        "explain",
    }
    assert all(built.view()[name] == path for name, path in analysis.items())
    assert (built.root / "results" / "tiny_analysis" / "probes.json").exists()
    layers = subprocess.run(
        [sys.executable, "-m", "pipeline.analysis.layers", "--experiment", "tiny"],
        cwd=built.root,
        env=built.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.search(r"^suggested read layer: [0-3] ", layers, re.M), layers
    assert len(re.findall(r"^\s+[0-3]\s", layers, re.M)) == 4
    # A training setting leaves what needs no decoder alone: only probes and explanations rerun.
    built.set("train", "lr", 5e-4)
    try:
        assert set(built.scheduled("results/tiny_analysis")) == {
            "train",
            "probes",
            "explain",
            "analysis_view",
        }
    finally:
        built.set("train", "lr", 1e-3)


def test_a_unchanged_configuration_schedules_nothing(built):
    assert built.scheduled() == {}


def test_b_evaluation_setting_schedules_only_evaluation_and_report(built):
    built.set("evaluate", "max_new_tokens", 5)
    try:
        assert set(built.scheduled()) == {"evaluate", "report", "experiment"}
    finally:
        built.set("evaluate", "max_new_tokens", 4)


def test_c_training_setting_schedules_training_and_descendants(built):
    built.set("train", "lr", 5e-4)
    try:
        assert set(built.scheduled()) == DOWNSTREAM_OF_TRAIN
    finally:
        built.set("train", "lr", 1e-3)


def test_d_reverting_a_built_change_schedules_nothing(built):
    original = built.view()
    built.set("evaluate", "max_relation_items", 3)
    built.snakemake()
    changed = built.view()
    assert changed["evaluate"] != original["evaluate"]
    assert changed["train"] == original["train"]
    built.set("evaluate", "max_relation_items", 4)
    assert built.scheduled() == {}
    assert built.view() == original


@pytest.mark.parametrize(
    "module, expected",
    [
        # The probes and explanation stages score with the evaluation's own decoder passes.
        ("evaluation/evaluate", {"evaluate", "report", "experiment", "probes", "explain"}),
        ("training/train", DOWNSTREAM_OF_TRAIN),
        # The params module is imported by both training stages, not by evaluate's own code.
        ("training/params", {"activation_cache"} | DOWNSTREAM_OF_TRAIN),
    ],
)
def test_e_editing_a_stage_source_reruns_it_and_descendants(built, module, expected):
    source = built.root / "pipeline" / f"{module}.py"
    original = source.read_text()
    source.write_text(original + "\n# an edit\n")
    try:
        assert set(built.scheduled()) == expected
    finally:
        source.write_text(original)
