"""The training stage under real torchrun: same result on 1 or 2 processes, resume after kills.

Kills land at chosen steps through the train loop's fault points (``pipeline.core.faults``), so
no test depends on the run still going when a timer fires.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from processes import (
    kill_all,
    process_tree,
    tagged_env,
    tagged_processes,
    wait_for_mark,
    wait_until_gone,
)
from safetensors.torch import load_file

from pipeline.core import staging, store
from pipeline.core.faults import ENV as FAULT
from pipeline.core.faults import MARKS_ENV as MARKS
from pipeline.core.stage import ParamsError
from pipeline.data.schema import write_dialogs
from pipeline.training.checkpoint_adapters import published
from pipeline.training.optimizer import lr_lambda
from pipeline.training.params import TrainParams
from pipeline.training.train_data import build_examples, mix_pairs

PERSONAS = [
    "pirate",
    "chef",
    "doctor",
    "farmer",
    "pilot",
    "poet",
    "judge",
    "sailor",
    "baker",
    "miner",
    "clown",
    "monk",
]
QUESTIONS = ["What is the weather like?", "Tell me about your day.", "Any advice for me?"]

# Small, dropout-free, fast: 16 steps of global batch 4, checkpoints every 2.
STEPS = 16
BASE_PARAMS = {
    "read_layers": [1],
    "write_layer": 0,
    "mode": "on_the_fly",
    "positions": "all",
    "lora_r": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.0,
    "lr": 5e-3,
    "warmup_steps": 2,
    "max_steps": STEPS,
    "grad_accum": 1,
    "per_device_batch_size": 2,
    "seed": 3,
    "checkpoint_every": 2,
    "adapter_every": 6,
    "eval_every": 4,
    "eval_examples": 6,
    "device": "cpu",
}


def dialog_records() -> list[dict]:
    records = []
    for i, persona in enumerate(PERSONAS):
        for j, question in enumerate(QUESTIONS):
            records.append(
                {
                    "label": persona,
                    "kind": "system",
                    "messages": [
                        {"role": "system", "content": f"You are a {persona}."},
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": f"Well, as I see it {j}."},
                    ],
                    "n_masked_turns": 1,
                    "qa": [
                        {"question": "Who is the assistant?", "answer": f"A {persona}."},
                        {"question": "Is the assistant a person?", "answer": "Yes."},
                    ],
                    "source": "test",
                    "split": "train" if i < 9 else "validation",
                }
            )
    return records


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    write_dialogs(dialog_records(), out / "dialogs.parquet")
    return out


def launch_command(
    out: Path,
    model_dir: Path,
    data_dir: Path,
    params: dict,
    nproc: int | None,
    extra_inputs: tuple[str, ...] = (),
) -> list[str]:
    """``torchrun`` with ``nproc`` processes, or a plain single process when ``nproc`` is None."""
    head = (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(nproc),
        ]
        if nproc
        else [sys.executable]
    )
    cmd = head + [
        "-m",
        "pipeline.training.train",
        "--out",
        str(out),
        "--key",
        "testkey",
        "--params",
        json.dumps(params),
        "--input",
        f"model={model_dir}",
        "--input",
        f"data={data_dir}",
    ]
    for pair in extra_inputs:
        cmd += ["--input", pair]
    return cmd


def train_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    for name in (FAULT, MARKS):
        env.pop(name, None)
    return env


def launch(
    out: Path,
    model_dir: Path,
    data_dir: Path,
    params: dict,
    nproc: int | None,
    extra_inputs: tuple[str, ...] = (),
    env: dict | None = None,
    replace_env: bool = False,
) -> subprocess.Popen:
    """Start training; ``env`` adds to the training environment (or replaces it)."""
    cmd = launch_command(out, model_dir, data_dir, params, nproc, extra_inputs)
    full_env = (
        dict(env) if replace_env else {**train_env(), **{k: str(v) for k, v in (env or {}).items()}}
    )
    return subprocess.Popen(
        cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def train(out, model_dir, data_dir, params, nproc=None, extra_inputs=()) -> dict:
    proc = launch(out, model_dir, data_dir, params, nproc, extra_inputs)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-4000:]
    return store.read_manifest(out, verify="full")


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def assert_same_adapter(a: Path, b: Path, atol: float = 1e-5) -> None:
    """The same final adapter, and the same adapters published along the way."""
    assert [s for s, _ in published(a)] == [s for s, _ in published(b)]
    pairs = [(a / "adapter", b / "adapter")]
    pairs += [(x, y) for (_, x), (_, y) in zip(published(a), published(b), strict=True)]
    for x, y in pairs:
        left, right = adapter(x), adapter(y)
        assert left.keys() == right.keys()
        for name in left:
            torch.testing.assert_close(left[name], right[name], atol=atol, rtol=1e-4, msg=name)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, tiny_model_dir, data_dir) -> Path:
    """One plain process, two micro-steps per optimizer step: global batch 4."""
    out = tmp_path_factory.mktemp("single") / "train"
    train(out, tiny_model_dir, data_dir, {**BASE_PARAMS, "grad_accum": 2})
    return out


def test_lr_schedule_warms_up_then_decays_to_zero():
    values = [lr_lambda(s, warmup=2, total=10) for s in range(11)]
    assert values[0] < values[1] < values[2] == 1.0
    assert all(a >= b for a, b in zip(values[2:], values[3:], strict=False))
    assert values[10] == pytest.approx(0.0, abs=1e-12)


def test_examples_one_per_qa_pair_and_validation_split_held_out(tokenizer, data_dir):
    from pipeline.data.schema import read_dialogs, validate_record

    params = TrainParams(**{**BASE_PARAMS, "eval_examples": 100})
    dialogs = read_dialogs(data_dir / "dialogs.parquet")
    held = {k: v for k, v in dialogs[0].items() if k != "id"}
    held.update(label="held-out", split="eval", messages=[{"role": "user", "content": "Hi."}])
    held["n_masked_turns"] = 0
    dialogs.append(validate_record(held, "x", 0))
    train_set, eval_set, shuffled_set = build_examples(dialogs, tokenizer, params)
    assert len(train_set.examples) == 9 * 3 * 2
    assert len(eval_set.examples) == len(shuffled_set.examples) == 3 * 3 * 2
    # The eval split is for the evaluate stage only: training never reads it.
    assert dialogs[-1]["id"] not in train_set.dialog_ids + eval_set.dialog_ids
    # Item i of the shuffled set asks item i's question of another label's dialog.
    labels = {d["id"]: d["label"] for d in dialogs}
    for own, other in zip(eval_set.examples, shuffled_set.examples, strict=True):
        assert labels[eval_set.dialog_ids[own.dialog]] != labels[eval_set.dialog_ids[other.dialog]]
        tail = own.decoder.placeholder_positions[-1] + 1
        assert (
            own.decoder.labels[tail:]
            == other.decoder.labels[other.decoder.placeholder_positions[-1] + 1 :]
        )
        read = shuffled_set.reads[other.dialog]
        assert len(other.decoder.placeholder_positions) == len(read.read_positions)
    # The placeholders are exactly the read (unmasked) positions of the dialog.
    ex = train_set.examples[0]
    read = train_set.reads[ex.dialog]
    assert len(ex.decoder.placeholder_positions) == len(read.read_positions)
    assert ex.decoder.position_ids[ex.decoder.placeholder_positions[0]] == read.read_positions[0]


def test_questions_per_example_asks_a_dialogs_questions_together(tokenizer, data_dir):
    from pipeline.data.schema import read_dialogs

    dialogs = read_dialogs(data_dir / "dialogs.parquet")
    single, eval_one, _ = build_examples(dialogs, tokenizer, TrainParams(**BASE_PARAMS))
    params = TrainParams(**{**BASE_PARAMS, "questions_per_example": 2})
    packed, eval_two, _ = build_examples(dialogs, tokenizer, params)
    # Two QA pairs per dialog: one example each, asking both, every answer labelled.
    assert len(packed.examples) == 9 * 3 and len(single.examples) == 9 * 3 * 2
    assert sum(e.n_answer for e in packed.examples) == sum(e.n_answer for e in single.examples)
    reads = {e.dialog: len(e.decoder.placeholder_positions) for e in single.examples}
    for example in packed.examples:
        text = tokenizer.decode(example.decoder.input_ids)
        assert "Who is the assistant?" in text and "Is the assistant a person?" in text
        assert len(example.decoder.placeholder_positions) == reads[example.dialog]
    assert sorted(e.dialog for e in packed.examples) == sorted(reads)
    # Validation still asks one question per example.
    assert [e.decoder.input_ids for e in eval_two.examples] == [
        e.decoder.input_ids for e in eval_one.examples
    ]


def test_single_process_publishes_a_peft_adapter(single_run, tiny_model_dir):
    from peft import PeftModel

    from pipeline.mechanism.modeling import load_model

    manifest = store.read_manifest(single_run, verify="full")
    info = manifest["info"]
    assert info["steps"] == STEPS and info["world_size"] == 1 and info["global_batch_size"] == 4
    assert info["tokens_per_s"] > 0
    assert not (single_run / "checkpoints").exists()
    records = metrics(single_run)
    assert [m["step"] for m in records] == list(range(STEPS + 1))
    assert all(math.isfinite(m["loss"]) for m in records[1:])
    # Training lowers the held-out loss of this easy data (answers shared across labels).
    evals = [m["eval_loss"] for m in records if "eval_loss" in m]
    assert len(evals) == STEPS // 4 + 1 and evals[-1] < evals[0]
    base, _ = load_model(tiny_model_dir)
    peft_model = PeftModel.from_pretrained(base, single_run / "adapter")
    state = {k: v for k, v in peft_model.state_dict().items() if "lora_B" in k}
    assert state and any(float(v.abs().max()) > 0 for v in state.values())
    # The adapters of steps 6 and 12 (adapter_every) and of the last one are published, the
    # last one equal to the final adapter, the others not.
    assert [step for step, _ in published(single_run)] == [6, 12, STEPS]
    along = [adapter(folder) for _, folder in published(single_run)]
    final = adapter(single_run / "adapter")
    for name in final:
        torch.testing.assert_close(along[-1][name], final[name])
    assert not all(torch.equal(along[0][name], final[name]) for name in final)
    assert not (single_run / "checkpoint_adapters").joinpath(".tmp-step_000006").exists()


def test_the_recipe_step_by_step_gives_the_records_the_stage_logs(
    tmp_path, single_run, tiny_model_dir, data_dir
):
    from pipeline.core.stage import build_params
    from pipeline.training.distributed import Dist
    from pipeline.training.recipe import DecoderTraining

    params = build_params(TrainParams, {**BASE_PARAMS, "grad_accum": 2})  # single_run's
    recipe = DecoderTraining(params, {"model": tiny_model_dir, "data": data_dir}, tmp_path, Dist())
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        recipe.setup()
        assert recipe.resumed_from is None and recipe.state.step == 0
        logged = metrics(single_run)
        assert recipe.evaluate() == {k: v for k, v in logged[0].items() if k != "step"}
        for step in range(2):
            record, interrupted = recipe.train_step(step)
            assert not interrupted and record["step"] == step + 1
            want = {k: v for k, v in logged[step + 1].items() if k != "tokens_per_s"}
            assert {k: v for k, v in record.items() if k != "tokens_per_s"} == want
        recipe.save_checkpoint(2)  # checkpoint_every: 2
        assert (tmp_path / "checkpoints" / "step-000002" / "complete").exists()
    finally:
        signal.signal(signal.SIGTERM, sigterm)


def test_two_processes_match_one(tmp_path, single_run, tiny_model_dir, data_dir):
    out = tmp_path / "train"
    manifest = train(out, tiny_model_dir, data_dir, BASE_PARAMS, nproc=2)
    assert manifest["info"]["world_size"] == 2
    one, two = metrics(single_run), metrics(out)
    for a, b in zip(one, two, strict=True):
        assert a["step"] == b["step"]
        for name in ("loss", "eval_loss", "lr"):
            if name in a:
                assert b[name] == pytest.approx(a[name], rel=1e-4, abs=1e-6), (name, a, b)
    assert_same_adapter(single_run, out)


@pytest.mark.parametrize(
    "point, how, resumed_from",
    # SIGKILL right after the checkpoint of step 4: nothing after it is lost. SIGTERM there: the
    # handler finishes step 5, checkpoints it and exits with 143. SIGKILL once training is done
    # but not yet published: the checkpoint of the last step is still there.
    [
        ("train.step.4", "SIGKILL", 4),
        ("train.step.4", "SIGTERM", 5),
        ("stage.train.publish", "SIGKILL", STEPS),
    ],
)
def test_killed_run_resumes_to_the_same_adapter(
    point, how, resumed_from, tmp_path, single_run, tiny_model_dir, data_dir
):
    out = tmp_path / "train"
    params = {**BASE_PARAMS, "grad_accum": 2}  # the global batch of single_run
    proc = launch(out, tiny_model_dir, data_dir, params, None, env={FAULT: f"{point}:{how}"})
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == (-signal.SIGKILL if how == "SIGKILL" else 143), output[-3000:]
    assert not (out / store.MANIFEST).exists()
    if how == "SIGTERM":
        assert f"checkpoint saved at step {resumed_from} of {STEPS}" in output
    manifest = train(out, tiny_model_dir, data_dir, params)
    assert manifest["info"]["resumed_from_step"] == resumed_from
    assert [m["step"] for m in metrics(out)] == list(range(STEPS + 1))
    for a, b in zip(metrics(single_run), metrics(out), strict=True):
        assert b["loss" if "loss" in a else "eval_loss"] == pytest.approx(
            a["loss" if "loss" in a else "eval_loss"], rel=1e-4, abs=1e-6
        )
    assert_same_adapter(single_run, out)


def test_second_run_of_a_key_waits_while_the_first_holds_the_staging_lock(
    tmp_path, single_run, tiny_model_dir, data_dir
):
    """A second run of a key never writes into the folder the first holds: it says that it waits,
    naming the folder and the holder, and once the holder is gone resumes its last checkpoint."""
    out, marks = tmp_path / "train", tmp_path / "marks"
    marks.mkdir()
    params = {**BASE_PARAMS, "grad_accum": 2}
    first = launch(
        out, tiny_model_dir, data_dir, params, None, env={FAULT: "train.step.2:pause", MARKS: marks}
    )
    second = None
    try:
        pid = wait_for_mark(marks, "train.step.2", first)
        staged = sorted(p.name for p in (store.staging_dir(out) / "checkpoints").iterdir())
        second = launch(out, tiny_model_dir, data_dir, params, None)
        seen = []
        while not any("is being built by another run" in line for line in seen):
            line = second.stdout.readline()
            assert line, "".join(seen)[-3000:]
            seen.append(line)
        assert f"pid {pid}" in seen[-1] and str(store.staging_dir(out)) in seen[-1]
        time.sleep(2)
        assert second.poll() is None  # still waiting, and it wrote nothing
        assert sorted(p.name for p in (store.staging_dir(out) / "checkpoints").iterdir()) == staged
    finally:
        first.kill()
        first.communicate(timeout=60)
        if second is not None:
            output, _ = second.communicate(timeout=300)
    # The lock died with its holder: the waiting run resumes the stale folder's last checkpoint.
    assert second.returncode == 0, output[-3000:]
    manifest = store.read_manifest(out, verify="full")
    assert manifest["info"]["resumed_from_step"] == 2
    assert_same_adapter(single_run, out)


def _launch_in_job_shell(out, model_dir, data_dir, params, nproc, env, log) -> subprocess.Popen:
    """torchrun under a shell in a process group of its own, as a Snakemake job runs it."""
    cmd = launch_command(out, model_dir, data_dir, params, nproc)
    with open(log, "w") as handle:  # a file, not a pipe: a surviving worker would hold a pipe open
        return subprocess.Popen(
            ["bash", "-c", " ".join(shlex.quote(c) for c in cmd) + "; exit $?"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_killing_the_job_group_leaves_no_torchrun_worker(tmp_path, tiny_model_dir, data_dir):
    """SIGKILL to the job's process group: the workers (in their own sessions) die with it."""
    out, marks, log = tmp_path / "train", tmp_path / "marks", tmp_path / "train.log"
    marks.mkdir()
    env, tag = tagged_env({**train_env(), FAULT: "train.step.1:pause", MARKS: str(marks)})
    proc = _launch_in_job_shell(out, tiny_model_dir, data_dir, BASE_PARAMS, 2, env, log)
    try:
        wait_for_mark(marks, "train.step.1", proc)
        before = tagged_processes(tag)
        sessions = {os.getsid(p) for p in before}
        assert len(sessions) >= 2, "torchrun's workers should run in sessions of their own"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        survivors = wait_until_gone(tag, timeout=20)
        assert survivors == [], f"processes outlived the job: {survivors} (of {before})"
    finally:
        kill_all(tagged_processes(tag))
    assert not (out / store.MANIFEST).exists()
    # Nobody holds the staging folder any more.
    os.close(staging.lock_staging(store.staging_dir(out)))


@pytest.mark.slow
@pytest.mark.parametrize("how, resumed_from", [("SIGKILL", 4), ("SIGTERM", 5)])
def test_killed_torchrun_resumes_to_the_same_adapter(
    how, resumed_from, tmp_path, single_run, tiny_model_dir, data_dir
):
    out, marks = tmp_path / "train", tmp_path / "marks"
    marks.mkdir()
    env, tag = tagged_env({**train_env(), FAULT: "train.step.4:pause", MARKS: str(marks)})
    proc = launch(out, tiny_model_dir, data_dir, BASE_PARAMS, 2, env=env, replace_env=True)
    wait_for_mark(marks, "train.step.4", proc)
    if how == "SIGKILL":  # a node failure: the launcher and every worker at once
        kill_all(process_tree(proc.pid))
    else:  # torchrun forwards SIGTERM to its workers (as on scancel or a Slurm time limit)
        os.kill(proc.pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, output[-3000:]
    assert wait_until_gone(tag) == []
    assert not (out / store.MANIFEST).exists(), output[-3000:]
    if how == "SIGTERM":
        assert f"checkpoint saved at step {resumed_from} of {STEPS}" in output
    manifest = train(out, tiny_model_dir, data_dir, BASE_PARAMS, nproc=2)
    assert manifest["info"]["resumed_from_step"] == resumed_from
    assert_same_adapter(single_run, out)


def test_cached_mode_matches_on_the_fly(tmp_path, single_run, tiny_model_dir, data_dir):
    cache = tmp_path / "cache"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.training.activation_cache",
            "--out",
            str(cache),
            "--key",
            "c",
            "--params",
            json.dumps({"layers": BASE_PARAMS["read_layers"], "device": "cpu"}),
            "--input",
            f"model={tiny_model_dir}",
            "--input",
            f"data={data_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "train"
    params = {**BASE_PARAMS, "mode": "cached", "grad_accum": 2}
    train(out, tiny_model_dir, data_dir, params, extra_inputs=(f"cache={cache}",))
    # The cache holds bf16 activations: equal to the on-the-fly run up to that rounding.
    for a, b in zip(metrics(single_run), metrics(out), strict=True):
        key = "loss" if "loss" in a else "eval_loss"
        assert b[key] == pytest.approx(a[key], rel=1e-3)
    # Adam's normalised steps amplify the rounding for near-zero gradients: compare tensors as
    # wholes rather than element by element.
    left, right = adapter(single_run / "adapter"), adapter(out / "adapter")
    assert left.keys() == right.keys()
    for name in left:
        gap = float((left[name] - right[name]).norm() / left[name].norm())
        assert gap < 0.05, (name, gap)


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_matches_one(tmp_path, single_run, tiny_model_dir, data_dir):
    out = tmp_path / "train"
    train(out, tiny_model_dir, data_dir, {**BASE_PARAMS, "parallel": "fsdp"}, nproc=2)
    for a, b in zip(metrics(single_run), metrics(out), strict=True):
        key = "loss" if "loss" in a else "eval_loss"
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6)
    assert_same_adapter(single_run, out)


def test_mix_gives_each_source_its_share_of_the_examples():
    sources = ["template"] * 6 + ["context"] * 2 + ["openai:gpt-4o-mini"] * 2
    pairs = [(d, {"q": d}) for d in range(10)]
    mixed = mix_pairs(pairs, sources, {"template": 0.5, "context": 0.3, "openai": 0.2}, seed=0)
    assert len(mixed) == 10
    families = [sources[d].split(":")[0] for d, _ in mixed]
    assert families.count("template") == 5 and families.count("context") == 3
    assert families.count("openai") == 2
    context = [d for d, _ in mixed if sources[d] == "context"]
    assert sorted(set(context)) == [6, 7]  # each context pair once before any repeats
    assert mixed == mix_pairs(pairs, sources, {"template": 0.5, "context": 0.3, "openai": 0.2}, 0)
    with pytest.raises(ValueError, match=r"unnamed: \['openai'\]"):
        mix_pairs(pairs, sources, {"template": 1, "context": 1}, seed=0)
    with pytest.raises(ValueError, match=r"absent: \['relation_qa'\]"):
        mix_pairs(pairs, sources, {"template": 1, "context": 1, "openai": 1, "relation_qa": 1}, 0)


def test_layers_are_assigned_balanced_within_each_family():
    from pipeline.training.train_data import assign_layers

    families = ["template"] * 7 + ["relation_qa"] * 4

    def both(family):
        return [5, 9]

    layers = assign_layers(families, both, seed=1)
    assert layers == assign_layers(families, both, seed=1)
    for family, size in (("template", 7), ("relation_qa", 4)):
        mine = [layer for f, layer in zip(families, layers, strict=True) if f == family]
        assert sorted(mine.count(layer) for layer in (5, 9)) == [size // 2, size - size // 2]
    assert assign_layers(families, both, seed=2) != layers  # the seed shuffles, not a pattern


def test_family_layers_keep_a_family_at_its_layers():
    from pipeline.training.train_data import assign_layers

    params = TrainParams(
        **{**BASE_PARAMS, "read_layers": [5, 9], "family_layers": {"template": [9]}}
    )
    families = ["template"] * 7 + ["relation_qa"] * 4
    layers = assign_layers(families, params.layers_of, seed=1)
    assert layers[:7] == [9] * 7
    assert sorted(layers[7:]) == [5, 5, 9, 9]
    for bad in ({"template": [7]}, {"template": []}, {"template": [9, 9]}):
        with pytest.raises(ParamsError, match="family_layers.template"):
            TrainParams(**{**BASE_PARAMS, "read_layers": [5, 9], "family_layers": bad})
    with pytest.raises(ParamsError, match="read_all_layers reads all"):
        TrainParams(
            **{**BASE_PARAMS, "read_layers": [5, 9], "family_layers": {"template": [9]}},
            read_all_layers=True,
        )


def test_examples_of_two_layers_name_their_layer_and_write_where_they_read(tokenizer, data_dir):
    from pipeline.data.schema import read_dialogs

    params = TrainParams(**{**BASE_PARAMS, "read_layers": [1, 2], "write_layer": None})
    dialogs = read_dialogs(data_dir / "dialogs.parquet")
    train_set, eval_set, shuffled_set = build_examples(dialogs, tokenizer, params)
    assert {ex.layer for ex in train_set.examples} == {1, 2}
    for ex in train_set.examples + eval_set.examples:
        assert set(ex.decoder.write_layers) == {ex.layer}
        prompt = tokenizer.decode(ex.decoder.input_ids[: ex.decoder.placeholder_positions[0]])
        assert prompt.endswith(f"Layer {ex.layer}:")
    assert [ex.layer for ex in eval_set.examples] == [ex.layer for ex in shuffled_set.examples]
    # One layer: nothing named, written at the fixed write block.
    single, _, _ = build_examples(dialogs, tokenizer, TrainParams(**BASE_PARAMS))
    ex = single.examples[0]
    assert "Layer" not in tokenizer.decode(ex.decoder.input_ids)
    assert set(ex.decoder.write_layers) == {0}


def test_examples_reading_every_layer_at_once_have_one_named_group_each(tokenizer, data_dir):
    from pipeline.data.schema import read_dialogs
    from pipeline.training.train_data import ALL_LAYERS

    params = TrainParams(
        **{**BASE_PARAMS, "read_layers": [1, 2], "write_layer": None, "read_all_layers": True}
    )
    dialogs = read_dialogs(data_dir / "dialogs.parquet")
    train_set, _, _ = build_examples(dialogs, tokenizer, params)
    ex = train_set.examples[0]
    n = len(train_set.reads[ex.dialog].read_positions)
    assert ex.layer == ALL_LAYERS and ex.decoder.write_layers == (1,) * n + (2,) * n
    text = tokenizer.decode(ex.decoder.input_ids[: ex.decoder.placeholder_positions[n]])
    assert "Layer 1:" in text and text.endswith("Layer 2:")


def test_two_read_layers_train_one_adapter_and_keep_a_layer_choice(
    tmp_path, tiny_model_dir, data_dir
):
    from pipeline.mechanism import layer_choice

    out = tmp_path / "train"
    params = {
        **BASE_PARAMS,
        "read_layers": [1, 2],
        "write_layer": None,
        "lora_blocks": "from_write",
        "max_steps": 4,
        "layer_choice_examples": 3,
    }
    manifest = train(out, tiny_model_dir, data_dir, params)
    names = adapter(out / "adapter").keys()
    blocks = {int(n.split("layers.")[1].split(".")[0]) for n in names}
    assert blocks == {1, 2, 3}  # from the lowest write block up
    choice = layer_choice.read(out / "adapter", [1, 2])
    assert set(choice.losses) == {"test"} and set(choice.losses["test"]) == {1, 2}
    assert choice.counts == {"test": 3}
    assert manifest["info"]["layer_choice"] == {"test": choice.chosen("test")}


def test_a_family_kept_to_one_layer_is_scored_at_both_and_chosen_at_its_own(
    tmp_path, tiny_model_dir, data_dir
):
    from pipeline.mechanism import layer_choice

    out = tmp_path / "train"
    params = {
        **BASE_PARAMS,
        "read_layers": [1, 2],
        "family_layers": {"test": [1]},
        "write_layer": None,
        "max_steps": 2,
        "layer_choice_examples": 3,
    }
    manifest = train(out, tiny_model_dir, data_dir, params)
    choice = layer_choice.read(out / "adapter", [1, 2])
    assert set(choice.losses["test"]) == {1, 2} and choice.trained == {"test": [1]}
    assert choice.chosen("test") == 1 and manifest["info"]["layer_choice"] == {"test": 1}


def test_reading_every_layer_at_once_trains_without_a_layer_choice(
    tmp_path, tiny_model_dir, data_dir
):
    out = tmp_path / "train"
    params = {
        **BASE_PARAMS,
        "read_layers": [1, 2],
        "read_all_layers": True,
        "write_layer": None,
        "lora_blocks": "from_write",
        "max_steps": 2,
    }
    manifest = train(out, tiny_model_dir, data_dir, params)
    assert manifest["info"]["layer_choice"] is None
    assert not (out / "adapter" / "layer_choice.json").exists()
    assert all(math.isfinite(m["eval_loss"]) for m in metrics(out) if "eval_loss" in m)


@pytest.mark.parametrize("all_layers", [False, True])
def test_training_and_reading_build_the_same_decoder_inputs(
    tokenizer, tiny_model_dir, data_dir, all_layers
):
    """What a trained decoder is given when it reads (DecoderSettings from the train manifest,
    compute_reads) is what it was trained on (train_data): the same ids, positions, write blocks
    and activations, in the same order."""
    from pipeline.data.schema import read_dialogs
    from pipeline.mechanism.decoder_prompt import build_decoder_example
    from pipeline.mechanism.decoder_settings import DecoderSettings
    from pipeline.mechanism.lora import add_lora
    from pipeline.mechanism.modeling import load_model
    from pipeline.mechanism.reading import compute_reads
    from pipeline.training.batches import make_batch
    from pipeline.training.distributed import Dist

    values = {
        **BASE_PARAMS,
        "read_layers": [1, 2],
        "write_layer": None,
        "read_all_layers": all_layers,
    }
    params = TrainParams(**values)
    dialogs = read_dialogs(data_dir / "dialogs.parquet")
    train_set, _, _ = build_examples(dialogs, tokenizer, params)
    model = add_lora(load_model(tiny_model_dir)[0], r=4).eval()
    ctx = Dist()
    settings = DecoderSettings.from_manifest({"params": values})
    for index in range(4):
        ex = train_set.examples[index]
        batch, _ = make_batch(train_set, [index], model, 0, params, ctx, contextlib.nullcontext)
        row = next(d for d in dialogs if d["id"] == train_set.dialog_ids[ex.dialog])
        there = settings if all_layers else settings.with_layer(ex.layer)
        read = compute_reads(model, tokenizer, [(row["messages"], row["n_masked_turns"])], there)
        qa = next(q for q in row["qa"] if q["question"] == ex.question)
        built = build_decoder_example(
            tokenizer, read[0].read_positions, qa["question"], qa["answer"], True, there.at()
        )
        assert built == ex.decoder
        n = len(ex.decoder.placeholder_positions)
        torch.testing.assert_close(batch.patch_values[0, :n], read[0].acts, rtol=1e-5, atol=1e-5)
        assert batch.write_layers[0, :n].tolist() == list(ex.decoder.write_layers)


def statement_records(n_facts: int = 6) -> list[dict]:
    """Contrast pairs the way the statements stage writes them: two rows per fact, one label."""
    rows = []
    for k in range(n_facts):
        for obj, answer in ((f"city {k}", "Yes."), (f"town {k + 1}", "No.")):
            rows.append(
                {
                    "label": f"capital:land {k}",
                    "kind": "text",
                    "messages": [{"role": "user", "content": f"The capital of land {k} is {obj}."}],
                    "n_masked_turns": 0,
                    "qa": [{"question": "Is the statement true?", "answer": answer}],
                    "source": "statements",
                    "split": "train",
                }
            )
    return rows


def test_batch_units_pair_each_copy_of_a_contrast_pair(tokenizer):
    from pipeline.training.train_data import batch_units

    dialogs = [{**row, "id": f"d{i}"} for i, row in enumerate(dialog_records())]
    dialogs += [{**row, "id": f"s{i}"} for i, row in enumerate(statement_records(3))]
    # Statements at 0.5 of 60 examples: each of the six rows five times.
    params = TrainParams(**{**BASE_PARAMS, "mix": {"test": 1, "statements": 1}})
    train_set, _, _ = build_examples(dialogs, tokenizer, params)
    units = batch_units(train_set, dialogs, ["statements"])
    members: dict[tuple, list[str]] = {}
    for ex, unit in zip(train_set.examples, units, strict=True):
        members.setdefault(unit, []).append(train_set.dialog_ids[ex.dialog])
    pairs = {unit: ids for unit, ids in members.items() if unit[0] == "statements"}
    # Five copies of three pairs: each unit one copy of a true row and its false partner.
    assert len(pairs) == 15
    for ids in pairs.values():
        assert len(ids) == 2 and int(ids[1][1:]) == int(ids[0][1:]) + 1
    others = [unit for unit in members if unit[0] != "statements"]
    assert all(len(members[unit]) == 1 for unit in others) and len(others) == 30
    # Not named as pairs: every example alone.
    assert len(set(batch_units(train_set, dialogs, []))) == len(train_set.examples)


def test_pair_families_need_batches_by_family():
    with pytest.raises(ParamsError, match="need batching: by_family"):
        TrainParams(**{**BASE_PARAMS, "pair_families": ["statements"]})
    with pytest.raises(ParamsError, match="family_run 4 .* need batching: by_family"):
        TrainParams(**{**BASE_PARAMS, "family_run": 4})
    with pytest.raises(ParamsError, match=r"pair_families \['statement'\] are not among"):
        TrainParams(
            **BASE_PARAMS,
            mix={"test": 1, "statements": 1},
            batching="by_family",
            pair_families=["statement"],
        )


def test_training_by_family_takes_each_step_from_one_family(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    data.mkdir()
    write_dialogs(dialog_records() + statement_records(), data / "dialogs.parquet")
    params = {
        **BASE_PARAMS,
        "mix": {"test": 0.5, "statements": 0.5},
        "batching": "by_family",
        "pair_families": ["statements"],
        "family_run": 2,
        "per_device_batch_size": 4,
    }
    train(tmp_path / "train", tiny_model_dir, data, params)
    steps = [r for r in metrics(tmp_path / "train") if "loss" in r]
    families = [r["family"] for r in steps]
    assert len(steps) == STEPS and set(families) == {"test", "statements"}
    # 66 training examples resampled half and half: 33 each, eight batches of four a family an
    # epoch, so each family takes half of the 16 steps.
    assert families.count("statements") == families.count("test") == STEPS // 2
    assert all(families[i] == families[i + 1] for i in range(0, STEPS, 2))  # runs of two
    # A one-family step's loss is that family's.
    for r in steps:
        assert r["loss_by_family"] == {r["family"]: pytest.approx(r["loss"])}


def test_training_loss_by_family_in_mixed_batches(tmp_path, tiny_model_dir):
    # Two families of the same lengths (length buckets would keep families of different lengths
    # apart): half of the personas are "other".
    rows = [
        {**row, "source": "other"} if row["label"] in PERSONAS[::2] else row
        for row in dialog_records()
    ]
    data = tmp_path / "data"
    data.mkdir()
    write_dialogs(rows, data / "dialogs.parquet")
    train(tmp_path / "train", tiny_model_dir, data, BASE_PARAMS)
    steps = [r for r in metrics(tmp_path / "train") if "loss" in r]
    assert all("family" not in r for r in steps)
    both = [r for r in steps if sorted(r["loss_by_family"]) == ["other", "test"]]
    assert len(both) >= 4, [sorted(r["loss_by_family"]) for r in steps]
    # The step's loss is the token-weighted mean of its families': between theirs.
    for r in both:
        losses = r["loss_by_family"].values()
        assert min(losses) - 1e-9 <= r["loss"] <= max(losses) + 1e-9
    assert any(
        max(r["loss_by_family"].values()) - min(r["loss_by_family"].values()) > 1e-3 for r in both
    )
