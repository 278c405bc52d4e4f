"""The content-addressed workflow on a tiny configuration: a real build, then dry-runs.

The build runs with PATH stripped of the environment and decoy ``python``/``torchrun`` commands
first on it, so every rule must call the environment's interpreter explicitly. Then (a) an
unchanged, built configuration schedules no job; (b) an evaluation setting schedules only
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
DOWNSTREAM_OF_TRAIN = {"train", "evaluate", "control", "report", "experiment"}


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
                "report": {},
                "resources": {"train": {"nproc": 1, "threads": 1}},
            }
        },
    }


DECOYS = ("python", "python3", "torchrun")


def path_without_environment(decoy_dir: Path) -> str:
    """PATH without this environment's bin folder, behind decoys that record being called.

    As when `.venv/bin/snakemake` runs in a shell where the venv is not activated: a rule that
    calls `python` or `torchrun` from PATH reaches a decoy, which fails and leaves a mark.
    """
    decoy_dir.mkdir(parents=True, exist_ok=True)
    for name in DECOYS:
        decoy = decoy_dir / name
        decoy.write_text(
            f'#!/bin/sh\necho "$0 $*" >> {decoy_dir}/called\necho "decoy {name}" >&2\nexit 97\n'
        )
        decoy.chmod(0o755)
    env_bin = str(Path(sys.executable).parent)
    kept = [d for d in os.environ["PATH"].split(os.pathsep) if d and d != env_bin]
    return os.pathsep.join([str(decoy_dir), *kept])


class Workspace:
    def __init__(self, root: Path, model_dir: Path):
        self.root = root
        self.decoys = root / "decoy-bin"
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
            "PATH": path_without_environment(self.decoys),
        }
        self.env.pop("VIRTUAL_ENV", None)

    def write_config(self) -> None:
        (self.root / "config" / "config.yaml").write_text(yaml.safe_dump(self.config))

    def set(self, section: str, name: str, value) -> None:
        self.config["experiments"]["tiny"].setdefault(section, {})[name] = value
        self.write_config()

    def snakemake(self, *args: str, timeout: int = 900) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "snakemake", "--cores", "2", *args, "results/tiny"],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-6000:]
        return output

    def scheduled(self) -> dict[str, int]:
        output = self.snakemake("-n")
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
    }
    for path in view.values():
        assert (built.root / path / "_manifest.json").exists()
    assert (built.root / "results" / "tiny" / "adapter" / "adapter_config.json").exists()
    assert (built.root / "results" / "tiny" / "eval.json").exists()


def test_rules_need_no_interpreter_on_path(built):
    """The build above ran every rule, torchrun included, without the environment on PATH."""
    assert not (built.decoys / "called").exists(), (built.decoys / "called").read_text()
    built.set("train", "lr", 5e-4)
    try:
        output = built.snakemake("-n", "--printshellcmds")
    finally:
        built.set("train", "lr", 1e-3)
    commands = [line for line in output.splitlines() if "-m pipeline." in line]
    assert commands, output[-3000:]
    for command in commands:
        assert f"{sys.executable} -m " in command, command
        assert "torchrun " not in command, command
    assert any("-m torch.distributed.run --standalone" in c for c in commands), commands


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
        ("evaluation/evaluate", {"evaluate", "report", "experiment"}),
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
