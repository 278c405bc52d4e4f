"""A workspace for running the real workflow on a tiny experiment: a copy of the repository's
workflow, package, data and config, with a tiny random model and a PATH stripped of this
environment (decoys first on it, so every rule must call the environment's interpreter).

Shared by the workflow, Slurm, 8B-smoke and chaos tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO

COPIED = ("workflow", "pipeline", "data", "config", "environment.yml")


def tiny_experiment(model_dir: Path) -> dict:
    """A config whose one experiment, ``tiny``, runs every default stage in seconds."""
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
                    "read_layers": [1],
                    "mode": "cached",
                    "max_steps": 2,
                    "warmup_steps": 1,
                    "per_device_batch_size": 4,
                    "checkpoint_every": 1,
                    "adapter_every": 1,
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


READERS = {
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
}
"""What ``tiny`` adds to build the readers beside the decoder, in its report."""


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
    def __init__(self, root: Path, model_dir: Path, readers: bool = False):
        self.root = root
        self.decoys = root / "decoy-bin"
        for name in COPIED:
            source = REPO / name
            if source.is_dir():
                shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(source, root / name)
        self.config = tiny_experiment(model_dir)
        if readers:
            self.config["experiments"]["tiny"].update(READERS)
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

    def command(self, *args: str, cores: int = 2, target: str = "results/tiny") -> list[str]:
        """The Snakemake command line of a build of ``target``."""
        return [sys.executable, "-m", "snakemake", "--cores", str(cores), *args, target]

    def snakemake(self, *args: str, timeout: int = 900, target: str = "results/tiny") -> str:
        result = subprocess.run(
            self.command(*args, target=target),
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-6000:]
        return output

    def module(self, name: str, *args: str) -> str:
        """The output of ``python -m <name> <args>`` run in the workspace (it must succeed)."""
        return subprocess.run(
            [sys.executable, "-m", name, *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

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
