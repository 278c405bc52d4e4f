"""The workflow on a real single-node Slurm cluster (scripts/slurm_single_node.sh).

One run of the tiny configuration through ``--workflow-profile workflow/profiles/slurm-test``,
with a training long enough to be cancelled: once it has written a checkpoint, its job is
cancelled with ``scancel`` (SIGTERM, then SIGKILL after KillWait); Snakemake resubmits it (the
profile's ``retries``) and it resumes. Then (1) every stage ran as its own ``sbatch`` job, as the
scheduler's log records, and the artifacts have the content keys that ``pipeline.core.graph``
computes for a local run; (2) the cancelled training job resumed from a checkpoint at step k > 0 and
finished.

Needs root, Debian's slurm-wlm and munge (installed by the script when apt can) and the env var
LATENTQA_SLURM_TESTS=1 (set by CI); skipped otherwise. Takes about 10-15 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO
from workspace import Workspace

pytestmark = pytest.mark.slurm

SCRIPT = REPO / "scripts" / "slurm_single_node.sh"
PROFILE = "workflow/profiles/slurm-test"
TRAIN = {
    "max_steps": 200,
    "checkpoint_every": 2,
    "adapter_every": 100,
    "eval_every": 0,
    "per_device_batch_size": 2,
}
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: (\S+)\)")
RUN_TIMEOUT_S = 2400


def _skip_unless_runnable() -> None:
    if os.environ.get("LATENTQA_SLURM_TESTS") != "1":
        pytest.skip(
            "Slurm tests are off: set LATENTQA_SLURM_TESTS=1 (needs root and Debian's "
            "slurm-wlm/munge, installed by scripts/slurm_single_node.sh)"
        )
    if os.geteuid() != 0:
        pytest.skip(
            "Slurm tests need root: scripts/slurm_single_node.sh starts munged, "
            "slurmctld and slurmd"
        )
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("Slurm is not installed and apt-get is not available to install it")
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        pytest.skip("snakemake-executor-plugin-slurm>=2.7.1 is not installed")


@pytest.fixture(scope="module")
def cluster():
    """A running single-node cluster; stopped afterwards if this test started it."""
    _skip_unless_runnable()
    was_up = subprocess.run([str(SCRIPT), "status"], capture_output=True).returncode == 0
    result = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        if shutil.which("slurmctld") is None:
            pytest.skip(f"could not install Slurm (apt unavailable?):\n{result.stderr[-2000:]}")
        pytest.fail(f"{SCRIPT} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    yield
    if not was_up:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=120)


def _slurmctld_log() -> Path:
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    found = re.search(r"^SlurmctldLogFile\s*=\s*(\S+)", config, re.M)
    return Path(found[1] if found else "/var/log/slurm/slurmctld.log")


def _submissions(log: str) -> list[tuple[str, str, int]]:
    """(rule, wildcard key, Slurm job id) of every sbatch submission in Snakemake's log."""
    jobs = []
    for job_id, path in SUBMITTED.findall(log):
        parts = Path(path).parts
        rule_dir = next(p for p in parts if p.startswith("rule_"))
        key = parts[parts.index(rule_dir) + 1]
        jobs.append((rule_dir.removeprefix("rule_"), key, int(job_id)))
    return jobs


def _cancel_training_after_checkpoint(root: Path, log_path: Path, process) -> dict:
    """Wait for the training job's first checkpoint, scancel it, and keep what its log says.

    The resubmitted job overwrites the rule's log, so the interrupted run's last words are read
    as soon as they appear.
    """
    deadline = time.time() + RUN_TIMEOUT_S
    cancelled = None
    while time.time() < deadline and process.poll() is None:
        if cancelled is None:
            jobs = [j for j in _submissions(log_path.read_text()) if j[0] == "train"]
            if jobs:
                _, key, job_id = jobs[0]
                staging = root / "results" / "store" / "train" / f"{key}.partial" / "checkpoints"
                steps = sorted(staging.glob("step-*")) if staging.exists() else []
                if steps:
                    subprocess.run(["scancel", str(job_id)], check=True)
                    cancelled = {
                        "job_id": job_id,
                        "key": key,
                        "checkpoint": steps[-1].name,
                        "at": time.time(),
                    }
        else:
            train_log = root / "results" / "logs" / "train" / f"{cancelled['key']}.log"
            text = train_log.read_text(errors="replace") if train_log.exists() else ""
            if "SIGTERM: checkpoint saved" in text or time.time() > cancelled["at"] + 120:
                cancelled["log"] = text
                return cancelled
        time.sleep(0.2)
    if cancelled is None:
        raise AssertionError(
            "the training job wrote no checkpoint to cancel it at:\n" + log_path.read_text()[-4000:]
        )
    cancelled["log"] = ""
    return cancelled


def _expected_nodes(root: Path, env: dict) -> dict[str, dict[str, str]]:
    """The graph a local run would build, computed with the workspace's own code."""
    code = (
        "import json, yaml\n"
        "from pipeline.core.experiments import load_experiments\n"
        "config = yaml.safe_load(open('config/config.yaml'))\n"
        "graph = load_experiments(config, '.', ['tiny']).graphs_of(['tiny'])['tiny']\n"
        "print(json.dumps({n: {'stage': v.stage, 'key': v.key} for n, v in graph.items()}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory, tiny_model_dir):
    workspace = Workspace(tmp_path_factory.mktemp("slurm"), tiny_model_dir)
    workspace.config["experiments"]["tiny"]["train"].update(TRAIN)
    workspace.write_config()
    # Every job of this run, on this machine, must read the same code and write the same store.
    env = {**workspace.env, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    log_path = workspace.root / "snakemake.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "snakemake", "--workflow-profile", PROFILE, "results/tiny"],
            cwd=workspace.root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            cancelled = _cancel_training_after_checkpoint(workspace.root, log_path, process)
            returncode = process.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if process.poll() is None:
                process.terminate()  # Snakemake cancels its Slurm jobs on SIGTERM
                process.wait(timeout=120)
    log = log_path.read_text()
    assert returncode == 0, log[-8000:]
    return {
        "root": workspace.root,
        "log": log,
        "cancelled": cancelled,
        "expected": _expected_nodes(workspace.root, env),
        "scheduler_log": _slurmctld_log().read_text(errors="replace"),
    }


def test_every_stage_ran_through_sbatch(slurm_run):
    root, expected = slurm_run["root"], slurm_run["expected"]
    jobs = _submissions(slurm_run["log"])
    submitted = {(rule, key) for rule, key, _ in jobs}
    assert submitted == {(n["stage"], n["key"]) for n in expected.values()}, jobs
    scheduler = slurm_run["scheduler_log"]
    for rule, key, job_id in jobs:
        # Snakemake's record of the job and the scheduler's own.
        assert (
            root / ".snakemake" / "slurm_logs" / f"rule_{rule}" / key / f"{job_id}.log"
        ).exists(), (rule, job_id)
        assert re.search(rf"_slurm_rpc_submit_batch_job: JobId={job_id}\b", scheduler), job_id
        # The main scheduler logs "Allocate", the backfill scheduler "Started": either started it.
        assert re.search(rf"(Allocate|_start_job: Started) JobId={job_id}\b", scheduler), job_id
        if job_id != slurm_run["cancelled"]["job_id"]:
            assert re.search(rf"_job_complete: JobId={job_id} WEXITSTATUS 0\b", scheduler), job_id
    # Only the view (a local rule) ran outside Slurm. Inside an allocation a job runs as a
    # "localrule" too: the failed (cancelled) job's Slurm log, printed into the main log, has one.
    local = Counter(re.findall(r"^localrule (\w+):", slurm_run["log"], re.M))
    for path in (root / ".snakemake" / "slurm_logs").rglob("*.log"):
        local.subtract(re.findall(r"^localrule (\w+):", path.read_text(errors="replace"), re.M))
    assert {rule for rule, n in local.items() if n > 0} <= {"experiment", "all"}, local


def test_artifacts_have_the_content_keys_of_a_local_run(slurm_run):
    root, expected = slurm_run["root"], slurm_run["expected"]
    store = root / "results" / "store"
    for node in expected.values():
        assert (store / node["stage"] / node["key"] / "_manifest.json").exists(), node
    built = {(p.parent.name, p.name) for p in store.glob("*/*") if not p.name.endswith(".partial")}
    assert built == {(n["stage"], n["key"]) for n in expected.values()}
    view = json.loads((root / "results" / "tiny" / "view.json").read_text())
    paths = {f"results/store/{n['stage']}/{n['key']}" for n in expected.values()}
    assert set(view.values()) == paths


def test_cancelled_training_job_resumes_from_its_checkpoint(slurm_run):
    root, cancelled = slurm_run["root"], slurm_run["cancelled"]
    train_jobs = [j for j in _submissions(slurm_run["log"]) if j[0] == "train"]
    assert [j[2] for j in train_jobs][0] == cancelled["job_id"]
    assert len(train_jobs) == 2, train_jobs  # cancelled, then resubmitted by Snakemake
    assert all(key == cancelled["key"] for _, key, _ in train_jobs)
    # The scheduler's record of the cancellation, and Snakemake's.
    assert re.search(rf"REQUEST_KILL_JOB JobId={cancelled['job_id']}\b", slurm_run["scheduler_log"])
    assert (
        f"SLURM-job '{cancelled['job_id']}' failed, SLURM status is: 'CANCELLED'"
        in (slurm_run["log"])
    )

    # SIGTERM reached the training processes inside the job step: they saved a checkpoint.
    interrupted = re.search(r"SIGTERM: checkpoint saved at step (\d+)", cancelled["log"])
    assert interrupted, cancelled["log"][-3000:]

    train_log = (root / "results" / "logs" / "train" / f"{cancelled['key']}.log").read_text()
    resumed = re.search(r"train: resuming from \S+ \(step (\d+)\)", train_log)
    assert resumed, train_log[-3000:]
    step = int(resumed[1])
    assert step == int(interrupted[1]) >= int(cancelled["checkpoint"].removeprefix("step-")) > 0
    manifest = json.loads(
        (root / "results" / "store" / "train" / cancelled["key"] / "_manifest.json").read_text()
    )
    assert manifest["info"]["resumed_from_step"] == step
    assert manifest["info"]["steps"] == TRAIN["max_steps"]
    metrics = [
        json.loads(line)
        for line in (
            root / "results" / "store" / "train" / cancelled["key"] / "metrics.jsonl"
        ).open()
    ]
    assert [m["step"] for m in metrics if "loss" in m] == list(range(1, TRAIN["max_steps"] + 1))
