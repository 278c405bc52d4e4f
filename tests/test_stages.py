"""The stage registry: each declaration is a rule of the workflow, with its defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO

from pipeline.core import stages
from pipeline.core.stages import STAGES

VIEWS = {"all", "experiment", "analysis_view"}


def _snakemake(*args: str) -> str:
    snakemake = Path(sys.executable).with_name("snakemake")
    done = subprocess.run(
        [str(snakemake), *args], cwd=REPO, capture_output=True, text=True, check=True
    )
    return done.stdout


def test_every_registered_stage_is_a_rule_and_nothing_else_is():
    rules = set(_snakemake("--list-rules").split())
    assert rules == set(STAGES) | VIEWS


def test_a_stage_job_gets_its_declared_resources_and_launcher():
    out = _snakemake("-n", "--forceall", "--printshellcmds", "results/decoder_smollm2")
    jobs = {}
    for block in out.split("\n\n"):
        lines = block.strip().splitlines()
        names = [line.split()[-1].rstrip(":") for line in lines if "rule " in line[:12]]
        if names:
            jobs[names[0]] = block
    report, train = jobs["report"], jobs["train"]
    assert "runtime=10," in report and "mem_mb=2000," in report  # the report's declaration
    assert f"runtime={STAGES['train'].runtime}," in train
    assert (
        "-m torch.distributed.run --standalone --nproc_per_node 1 -m pipeline.training.train"
        in (train)
    )
    assert f"-m pipeline.{STAGES['report'].module} --out" in report


def test_the_readers_digest_no_evaluation_code():
    """Editing an evaluation table or scorer reruns the evaluation, not the probes or the lens:
    the statistics and the sentence-embedding model they share sit on lower floors."""
    for stage in ("probes", "lens", "layer_cache"):
        files = [str(p) for p in stages.source_files(STAGES[stage].module)]
        assert not [f for f in files if "/pipeline/evaluation/" in f], stage
        assert not [f for f in files if "/pipeline/training/" in f], stage


def test_the_activation_cache_digests_no_decoder_code():
    """Changing how the decoder trains or is prompted must not rerun the activation cache (hours
    of target forwards on a large model): only how dialogs are read and cached is its code."""
    files = {
        p.relative_to(stages.REPO_DIR).as_posix()
        for p in stages.source_files(STAGES["activation_cache"].module)
    }
    assert {"pipeline/mechanism/dialogs.py", "pipeline/training/cache_params.py"} <= files
    for decoder_side in ("training/params.py", "mechanism/decoder_prompt.py", "mechanism/lora.py"):
        assert f"pipeline/{decoder_side}" not in files, decoder_side


def test_start_checks_are_found_and_no_part_of_their_stages_digest():
    """A start check runs when the graph is built; changing it must rerun nothing."""
    declared = {name: spec for name, spec in STAGES.items() if spec.start_check}
    assert "import_latentqa" in declared
    for name, spec in declared.items():
        assert callable(stages.start_check(name)), name
        module = spec.start_check.partition(":")[0]
        assert stages.module_file(module) not in stages.source_files(spec.module), name
    assert stages.start_check("train") is None
