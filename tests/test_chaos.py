"""Chaos: a tiny experiment, killed with SIGKILL at seeded points in every stage, always resumes.

The tiny experiment runs every stage (prepare_model, the templates data, the reading curriculum
(texts, context, classification, relation_qa), filter, activation_cache, train on two torchrun
processes with checkpoints, evaluate, control, report and the view) once uninterrupted for
reference. Then at least 20 kill points, drawn with a fixed seed from every stage's fault points
(``pipeline.core.faults``), are hit in passes: a pass removes the artifacts of its first kill's
stage and everything built from them, and runs the workflow with the next kill point armed to
``pause``; once the paused process has written its mark, the test sends SIGKILL to the Snakemake
process group or to one process (the stage, one torchrun worker, the torchrun launcher). Each time
the run is resumed as a user would: ``snakemake --unlock``, then the normal command, armed with the
pass's next kill point, until the pass's last run completes.

After every kill: no process of the run survives (found by an environment tag), every store folder
without ``.partial`` has a complete manifest, and the killed stage published nothing before its
publication point. Once the killed stage is published again: its files are those of the
uninterrupted run, training resumed from its latest checkpoint (the activation cache from its
complete shards). After every pass: no ``.partial`` is left, the view names the same keys and
``eval.json`` holds the same figures as the uninterrupted run.

``make test-chaos`` runs it (about 5-6 minutes on 2 quiet cores); ``LATENTQA_CHAOS_SEED`` draws
other points. The table of kills is printed and written to ``chaos_table.md`` in the test's tmp
folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from processes import kill_all, tagged_env, tagged_processes, wait_for_mark, wait_until_gone
from workspace import Workspace

from pipeline.core import store
from pipeline.core.faults import ENV as FAULT
from pipeline.core.faults import MARKS_ENV as MARKS
from pipeline.training.checkpointing import COMPLETE, complete_checkpoints

pytestmark = pytest.mark.chaos

SEED = int(os.environ.get("LATENTQA_CHAOS_SEED", "18"))
KILLS = 22
PASSES = 4
MAX_STEPS, CHECKPOINT_EVERY, NPROC = 6, 2, 2
RUN_TIMEOUT_S = 900
VIEW = "view"
ALL_STAGES = (
    "prepare_model",
    "texts",
    "context",
    "classification",
    "relation_qa",
    "templates",
    "filter",
    "activation_cache",
    "train",
    "evaluate",
    "reading_curve",
    "control",
    "report",
    VIEW,
)
MAX_SHARDS = 16
"""Shard points marked in the uninterrupted run (the cache writes fewer)."""

GROUP = "snakemake process group"
STAGE = "stage process"
LAUNCHER = "torchrun launcher"


def worker(rank: int) -> str:
    return f"torchrun worker rank {rank}"


def chaos_workspace(root: Path, model_dir: Path) -> Workspace:
    """The workflow tests' tiny experiment with the curriculum, several checkpoints and shards."""
    workspace = Workspace(root, model_dir)
    tiny = workspace.config["experiments"]["tiny"]
    tiny["data"].update(context={}, classification={}, relation_qa={"sentences_per_fact": 1})
    tiny["texts"] = {"max_new_tokens": 24, "min_words": 3, "max_topics": 2, "batch_size": 16}
    tiny["cache"] = {"shard_tokens": 800}  # at least three shards of its dialogs' read tokens
    tiny["train"].update(
        max_steps=MAX_STEPS,
        checkpoint_every=CHECKPOINT_EVERY,
        eval_every=3,
        mix={"template": 0.4, "context": 0.25, "classification": 0.15, "relation_qa": 0.2},
    )
    tiny["resources"] = {"train": {"nproc": NPROC, "threads": 1}}
    workspace.write_config()
    return workspace


# --- what the uninterrupted run built ---------------------------------------------------------


@dataclass
class Artifact:
    stage: str
    key: str
    inputs: set[str]
    files: dict[str, str]
    info: dict

    def path(self, root: Path) -> Path:
        return root / "results" / "store" / self.stage / self.key


TIMING_FIELDS = {"seconds", "tokens_per_s", "train_seconds", "wall_seconds_this_run"}
"""Wall-clock figures in JSON results (eval.json, control.json, metrics.jsonl): left out, with
``resumed_from_step`` (control.json copies training's manifest info, which records the resume)."""
RUN_FACTS = TIMING_FIELDS | {"resumed_from_step"}
WALL_CLOCK_PLOTS = {"reading_vs_minutes.png"}
"""Plots drawn against wall-clock training minutes: compared by presence only."""


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in RUN_FACTS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def tensors_digest(path: Path) -> str:
    """A safetensors file by its tensors and metadata (the header's key order varies by run)."""
    import torch
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        tensors = {
            name: hashlib.sha256(
                handle.get_tensor(name).contiguous().reshape(-1).view(torch.uint8).numpy()
            ).hexdigest()
            for name in handle.keys()
        }
        return json.dumps([tensors, handle.metadata()], sort_keys=True)


def content(folder: Path) -> dict[str, str]:
    """An artifact's files, checked against its manifest: sha256, or for JSON its content without
    wall-clock figures, for safetensors its tensors and metadata (plots against wall-clock
    minutes: their presence)."""
    manifest = store.read_manifest(folder, verify="full")
    files = {rel: entry["sha256"] for rel, entry in manifest["files"].items()}
    for rel in files:
        if rel.endswith((".json", ".jsonl")):
            text = (folder / rel).read_text()
            if rel.endswith(".json"):
                value = json.loads(text)
            else:
                value = [json.loads(line) for line in text.splitlines() if line.strip()]
            files[rel] = json.dumps(without_timings(value), sort_keys=True)
        elif rel.endswith(".safetensors"):
            files[rel] = tensors_digest(folder / rel)
        elif Path(rel).name in WALL_CLOCK_PLOTS:
            files[rel] = "a plot against wall-clock minutes"
    return files


def artifacts(root: Path) -> dict[str, Artifact]:
    """The published artifacts of the store, by stage."""
    found = {}
    for manifest_path in sorted((root / "results" / "store").glob("*/*/" + store.MANIFEST)):
        manifest = json.loads(manifest_path.read_text())
        found[manifest["stage"]] = Artifact(
            manifest["stage"],
            manifest["key"],
            set(manifest["inputs"].values()),
            content(manifest_path.parent),
            manifest.get("info", {}),
        )
    return found


def descendants(reference: dict[str, Artifact], stage: str) -> list[str]:
    """``stage`` and every stage built from it, by the keys in the manifests."""
    if stage == VIEW:
        return []
    found, todo = {stage}, [stage]
    while todo:
        key = reference[todo.pop()].key
        for other in reference.values():
            if key in other.inputs and other.stage not in found:
                found.add(other.stage)
                todo.append(other.stage)
    return sorted(found)


# --- kill points ------------------------------------------------------------------------------


@dataclass
class Kill:
    point: str
    rank: int
    target: str
    stage: str
    position: tuple[int, int]
    """(stage order, place in the stage): a pass hits its kills in this order."""
    row: dict = field(default_factory=dict)
    deferrals: int = 0

    @property
    def armed(self) -> str:
        return f"{self.point}/rank{self.rank}" if self.rank else self.point


def stage_points(stage: str, n_shards: int) -> list[str]:
    """The fault points a stage passes, in order."""
    if stage == VIEW:
        return ["view.start", "view.swap", "view.published"]
    middle = []
    if stage == "activation_cache":
        middle = [f"activation_cache.shard.{s}" for s in range(n_shards)]
    elif stage == "train":
        middle = [f"train.step.{n}" for n in range(1, MAX_STEPS + 1)]
    return [f"stage.{stage}.start", *middle, f"stage.{stage}.publish", f"stage.{stage}.published"]


def targets(stage: str, rank: int) -> list[str]:
    if stage == "train":
        return [GROUP, worker(rank), LAUNCHER]
    return [GROUP, STAGE]


def draw_kills(order: list[str], n_shards: int, rng: random.Random) -> list[Kill]:
    """One point in every stage, then more in training (its publication among them) and caching,
    then anywhere; seeded."""
    candidates = []
    for s, stage in enumerate(order):
        for p, point in enumerate(stage_points(stage, n_shards)):
            ranks = range(NPROC) if point.startswith("train.step.") else [0]
            candidates += [(stage, point, rank, (s, p)) for rank in ranks]
    while True:
        chosen = [rng.choice([c for c in candidates if c[0] == stage]) for stage in order]
        steps = [c for c in candidates if c[1].startswith("train.step.") and c not in chosen]
        shards = [c for c in candidates if c[1].startswith("activation_cache.") and c not in chosen]
        chosen += rng.sample(steps, 3) + rng.sample(shards, 1)
        # Training done, not yet published: the most expensive point to lose.
        chosen += [c for c in candidates if c[1] == "stage.train.publish" and c not in chosen]
        chosen += rng.sample([c for c in candidates if c not in chosen], KILLS - len(chosen))
        # Distinct points (a point is passed once per run); a step killed after its checkpoint and
        # one killed between checkpoints; both kinds of target.
        killed_steps = [
            int(c[1].rsplit(".", 1)[1]) for c in chosen if c[1].startswith("train.step")
        ]
        if len({c[1] for c in chosen}) < len(chosen):
            continue
        if not any(n % CHECKPOINT_EVERY == 0 for n in killed_steps) or not any(
            n % CHECKPOINT_EVERY and n > CHECKPOINT_EVERY for n in killed_steps
        ):
            continue
        kills = [
            Kill(point, rank, rng.choice(targets(stage, rank)), stage, position)
            for stage, point, rank, position in chosen
        ]
        groups = sum(k.target == GROUP for k in kills)
        in_training = {k.target for k in kills if k.stage == "train"}
        if (
            len(kills) // 3 <= groups <= len(kills) - len(kills) // 3
            and GROUP in in_training
            and any(t.startswith("torchrun worker") for t in in_training)
        ):
            return sorted(kills, key=lambda k: k.position)


def passes(kills: list[Kill]) -> list[list[Kill]]:
    """Consecutive kills, in pipeline order, split into passes of nearly equal length."""
    size = -(-len(kills) // PASSES)
    return [kills[i : i + size] for i in range(0, len(kills), size)]


def last_periodic_checkpoint(step: int) -> int:
    """The latest ``checkpoint_every`` step at or before ``step`` (0: none)."""
    return max(
        [c for c in range(CHECKPOINT_EVERY, MAX_STEPS, CHECKPOINT_EVERY) if c <= step] or [0]
    )


# --- running and killing ----------------------------------------------------------------------


class Runner:
    def __init__(self, workspace: Workspace, log_dir: Path):
        self.workspace = workspace
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.count = 0

    @property
    def root(self) -> Path:
        return self.workspace.root

    def env(self, faults: list[str], marks: Path) -> tuple[dict[str, str], str]:
        env = {k: v for k, v in self.workspace.env.items() if k not in (FAULT, MARKS)}
        # PEFT writes an adapter's target modules from a set: a fixed hash seed orders them the
        # same way in every run, so that whole artifacts compare byte for byte.
        env.update(
            OMP_NUM_THREADS="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1", PYTHONHASHSEED="0"
        )
        if faults:
            env.update({FAULT: ",".join(faults), MARKS: str(marks)})
        return tagged_env(env)

    def start(self, faults: list[str]) -> tuple[subprocess.Popen, str, Path, Path]:
        """``snakemake --unlock``, then the normal command in a process group of its own."""
        self.count += 1
        marks = self.log_dir / f"marks-{self.count:02d}"
        marks.mkdir()
        log = self.log_dir / f"run-{self.count:02d}.log"
        env, tag = self.env(faults, marks)
        unlock = subprocess.run(
            self.workspace.command("--unlock", cores=1),
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert unlock.returncode == 0, unlock.stdout + unlock.stderr
        with open(log, "w") as handle:  # a file: a surviving process would hold a pipe open
            proc = subprocess.Popen(
                self.workspace.command(cores=1),
                cwd=self.root,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return proc, tag, marks, log

    def log_path(self, artifact: Artifact) -> Path:
        return self.root / "results" / "logs" / artifact.stage / f"{artifact.key}.log"


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def kill(kill_: Kill, proc: subprocess.Popen, pid: int) -> None:
    if kill_.target == GROUP:
        os.killpg(proc.pid, signal.SIGKILL)
    elif kill_.target == LAUNCHER:
        os.kill(parent_of(pid), signal.SIGKILL)
    else:
        os.kill(pid, signal.SIGKILL)


def store_dirs(root: Path) -> list[Path]:
    folder = root / "results" / "store"
    return sorted(folder.glob("*/*")) if folder.exists() else []


def assert_nothing_half_published(root: Path) -> None:
    """Every store folder but a staging folder is a complete artifact."""
    for path in store_dirs(root):
        if not path.name.endswith(".partial"):
            assert (path / store.MANIFEST).exists(), f"{path} was published without a manifest"
            store.read_manifest(path, verify="full")


def published(root: Path, reference: dict[str, Artifact], stage: str) -> bool:
    if stage == VIEW:
        return False
    return (reference[stage].path(root) / store.MANIFEST).exists()


def resumed_from(text: str, stage: str) -> str:
    """What a run of ``stage`` resumed from, by its log."""
    if stage == "train":
        found = re.findall(r"train: resuming from .* \(step (\d+)\)", text)
        return f"step {found[-1]}" if found else "step 0"
    if stage == "activation_cache":
        found = re.findall(r"(\d+) shards \((\d+) already complete\)", text)
        return f"{found[-1][1]}/{found[-1][0]} shards" if found else "?"
    return "-"


def reached(marks: Path, point: str) -> float | None:
    path = marks / point
    return path.stat().st_mtime if path.exists() else None


def latest_checkpoint(root: Path, artifact: Artifact) -> int:
    folder = store.staging_dir(artifact.path(root)) / "checkpoints"
    if not folder.exists():
        return 0
    steps = [json.loads((p / COMPLETE).read_text())["step"] for p in complete_checkpoints(folder)]
    return max(steps, default=0)


def complete_shards(root: Path, artifact: Artifact) -> int:
    folder = store.staging_dir(artifact.path(root)) / "shards"
    return len(list(folder.glob("*.index.parquet"))) if folder.exists() else 0


def reachable(kill_: Kill, root: Path, reference: dict[str, Artifact]) -> bool:
    """Whether a run from the store as it is passes the kill's point."""
    if kill_.stage == VIEW:
        return True
    if published(root, reference, kill_.stage):
        return False
    number = int(kill_.point.rsplit(".", 1)[1]) if kill_.point[-1].isdigit() else None
    if kill_.point.startswith("train.step."):
        return latest_checkpoint(root, reference["train"]) < number
    if kill_.point.startswith("activation_cache.shard."):
        return complete_shards(root, reference["activation_cache"]) <= number
    return True


def first_point_back(
    kill_: Kill, marks: Path, ref_time: dict[str, float], ended: float, ref_end: float
) -> float:
    """When a run was back where ``kill_`` stopped its predecessor, in the uninterrupted run's
    terms: the first point at or after the killed one that it passed, less the time the
    uninterrupted run took from the killed point to that one (the end of the run if none)."""
    killed = ref_time[kill_.point]
    for point in sorted((p for p, t in ref_time.items() if t >= killed), key=ref_time.get):
        if (t := reached(marks, point)) is not None:
            return t - (ref_time[point] - killed)
    return ended - (ref_end - killed)


def test_killed_anywhere_the_workflow_resumes_to_the_same_results(tmp_path, talking_model_dir):
    started = time.time()
    workspace = chaos_workspace(tmp_path / "workspace", talking_model_dir)
    runner = Runner(workspace, tmp_path / "runs")
    root = workspace.root

    # The uninterrupted run, every point marked: the reference results, stage order and timings.
    every_point = [p for stage in ALL_STAGES for p in stage_points(stage, MAX_SHARDS)]
    proc, tag, marks, log = runner.start([f"{p}:mark" for p in every_point])
    assert proc.wait(timeout=RUN_TIMEOUT_S) == 0, log.read_text()[-6000:]
    ref_end = time.time()
    reference_seconds = ref_end - started
    assert wait_until_gone(tag) == []
    reference = artifacts(root)
    reference_view = workspace.view()
    reference_eval = without_timings(
        json.loads((root / "results" / "tiny" / "eval.json").read_text())
    )
    ref_time = {p: t for p in every_point if (t := reached(marks, p)) is not None}
    order = sorted(reference, key=lambda s: ref_time[f"stage.{s}.start"]) + [VIEW]
    n_shards = reference["activation_cache"].info["n_shards"]
    assert 3 <= n_shards <= MAX_SHARDS and reference["train"].info["steps"] == MAX_STEPS
    every_point = [p for p in every_point if p in ref_time]

    kills = draw_kills(order, n_shards, random.Random(SEED))
    assert len(kills) >= 20 and {k.stage for k in kills} == set(order)
    rows: list[Kill] = []
    plan = passes(kills)
    print("\nkill plan:", *(f"pass {n}: {[k.armed for k in p]}" for n, p in enumerate(plan, 1)))
    number = 0
    while plan:
        pass_kills = plan.pop(0)
        number += 1
        pass_started = time.time()
        stale = {s for k in pass_kills for s in descendants(reference, k.stage)}
        for stage in sorted(stale):
            shutil.rmtree(reference[stage].path(root))
        if any(k.stage == VIEW for k in pass_kills) and not stale:
            shutil.rmtree(root / "results" / "tiny")
        checked = {s for s in reference if published(root, reference, s)}
        previous: Kill | None = None
        deferred: list[Kill] = []
        queue: list[Kill | None] = [*pass_kills, None]
        while queue:
            kill_ = queue.pop(0)
            if kill_ is not None and not reachable(kill_, root, reference):
                # Snakemake ran an independent stage first (its order among ready jobs varies),
                # or a resumed stage starts past the point: hit it in the next pass.
                kill_.deferrals += 1
                assert kill_.deferrals <= 3, f"{kill_.armed} was never reached"
                deferred.append(kill_)
                continue
            pause = [f"{kill_.armed}:pause"] if kill_ else []
            watched = [f"{p}:mark" for p in every_point if not kill_ or p != kill_.point]
            run_started = time.time()
            proc, tag, marks, log = runner.start(watched + pause)
            try:
                if kill_ is not None:
                    pid = wait_for_mark(marks, kill_.point, proc, timeout=RUN_TIMEOUT_S)
                    kill_.row["killed_at"] = time.time()
                    kill(kill_, proc, pid)
                returncode = proc.wait(timeout=RUN_TIMEOUT_S)
                ended = time.time()
                survivors = wait_until_gone(tag, timeout=30)
            finally:
                kill_all(tagged_processes(tag))
            output = log.read_text(errors="replace")
            where = f"pass {number}, {kill_.armed if kill_ else 'final run'} ({log})"
            assert survivors == [], f"{where}: processes outlived the run: {survivors}"
            assert_nothing_half_published(root)

            if previous is not None:
                back = first_point_back(previous, marks, ref_time, ended, ref_end)
                previous.row["lost"] = back - previous.row["killed_at"]
                stage = previous.stage
                if stage in ("train", "activation_cache") and "resumed" not in previous.row:
                    stage_log = runner.log_path(reference[stage])
                    if stage_log.exists() and stage_log.stat().st_mtime >= run_started:
                        previous.row["resumed"] = resumed_from(stage_log.read_text(), stage)
                        assert previous.row["resumed"] == previous.row["expected"], (
                            f"{where}: after a kill at {previous.armed} {stage} resumed from "
                            f"{previous.row['resumed']}, not {previous.row['expected']}"
                        )
                if "kept" in previous.row:
                    manifest = reference[stage].path(root) / store.MANIFEST
                    assert manifest.exists() and manifest.stat().st_mtime == previous.row["kept"], (
                        f"{where}: {stage}, published before the kill, was built again"
                    )

            # Whatever this run published matches the uninterrupted run, file by file.
            differ = []
            for stage in order:
                artifact = reference.get(stage)
                if artifact is None or stage in checked or not published(root, reference, stage):
                    continue
                checked.add(stage)
                assert not store.staging_dir(artifact.path(root)).exists(), (
                    f"{where}: {stage} was published and its staging folder is still there"
                )
                files = content(artifact.path(root))
                differ += [
                    f"{stage}/{f}" for f in sorted(files) if files[f] != artifact.files.get(f)
                ]
                differ += [
                    f"{stage}/{f} (missing)" for f in sorted(set(artifact.files) - set(files))
                ]
            assert not differ, f"{where}: differs from the uninterrupted run: {differ}"

            if kill_ is None:
                assert returncode == 0, f"{where}: the resumed run failed:\n{output[-6000:]}"
                break
            assert returncode != 0, f"{where}: the killed run succeeded:\n{output[-3000:]}"
            record_kill(kill_, root, reference, where)
            kill_.row.update(number=len(rows) + 1, pass_=number)
            rows.append(kill_)
            previous = kill_
        if deferred:
            if plan:
                plan[0] = sorted(plan[0] + deferred, key=lambda k: k.position)
            else:
                plan.append(deferred)

        assert not [p for p in store_dirs(root) if p.name.endswith(".partial")]
        assert not list((root / "results").glob("tiny.*")), "the view left a temporary behind"
        assert workspace.view() == reference_view
        eval_now = without_timings(
            json.loads((root / "results" / "tiny" / "eval.json").read_text())
        )
        assert eval_now == reference_eval, f"pass {number}: eval.json differs"
        print(f"pass {number}: {len(pass_kills) - len(deferred)} kills", end=" ")
        print(f"({len(deferred)} deferred), {time.time() - pass_started:.0f} s")

    table = format_table(rows, reference_seconds, time.time() - started)
    (tmp_path / "chaos_table.md").write_text(table)
    print("\n" + table + f"\n(written to {tmp_path / 'chaos_table.md'})")


def record_kill(kill_: Kill, root: Path, reference: dict[str, Artifact], where: str) -> None:
    """What a killed run left: nothing published before its publication point, and the
    checkpoints or shards the next run must resume from."""
    stage = kill_.stage
    if kill_.point.endswith(".published"):
        if stage != VIEW:
            manifest = reference[stage].path(root) / store.MANIFEST
            assert manifest.exists(), f"{where}: {stage}, published before the kill, is gone"
            kill_.row["kept"] = manifest.stat().st_mtime
            kill_.row["resumed"] = "published"
        return
    if stage != VIEW:
        assert not published(root, reference, stage), (
            f"{where}: {stage} was published although killed before publication"
        )
    if stage == "train":
        latest = latest_checkpoint(root, reference[stage])
        kill_.row["expected"] = f"step {latest}"
        if kill_.point.startswith("train.step."):
            step = int(kill_.point.rsplit(".", 1)[1])
        else:
            step = MAX_STEPS if kill_.point.endswith(".publish") else 0
        assert latest >= last_periodic_checkpoint(step), (
            f"{where}: killed after step {step}, but the latest checkpoint left is step {latest}"
        )
    elif stage == "activation_cache":
        done = complete_shards(root, reference[stage])
        kill_.row["expected"] = f"{done}/{reference[stage].info['n_shards']} shards"
        if kill_.point.startswith("activation_cache.shard."):
            shard = int(kill_.point.rsplit(".", 1)[1])
            assert done >= shard + 1, f"{where}: killed after shard {shard}, {done} shards left"


def format_table(rows: list[Kill], reference_seconds: float, total_seconds: float) -> str:
    lines = [
        f"Chaos run, seed {SEED}: {len(rows)} kills (SIGKILL)",
        "",
        "| # | pass | kill point | killed | resumed from | seconds lost |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for k in rows:
        r = k.row
        lost = f"{r['lost']:.1f}" if "lost" in r else "?"
        lines.append(
            f"| {r['number']} | {r['pass_']} | `{k.armed}` | {k.target} | "
            f"{r.get('resumed', '-')} | {lost} |"
        )
    lines += [
        "",
        f"uninterrupted run: {reference_seconds:.0f} s; whole chaos test: {total_seconds:.0f} s",
    ]
    return "\n".join(lines) + "\n"
