"""The content-addressed workflow on a tiny configuration: a real build, then dry-runs.

The build runs with PATH stripped of the environment and decoy ``python``/``torchrun`` commands
first on it, so every rule must call the environment's interpreter explicitly. Then (a) an
unchanged, built configuration schedules no job; (b) an evaluation setting schedules only
evaluation and report jobs; (c) a training setting schedules training and its descendants, not
data, filtering or caching; (d) reverting a built change schedules no job and the view points at
the old artifacts again; (e) editing a stage's source reruns that stage and its descendants; (f)
an emptied store is rebuilt; (g) a run killed after a job published its output resumes; (h) a
stage added as its module and one declaration in the registry runs (README, "Adding a stage").
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
from processes import kill_all, tagged_env, tagged_processes, wait_for_mark, wait_until_gone
from workspace import Workspace

from pipeline.core.faults import ENV as FAULT
from pipeline.core.faults import MARKS_ENV as MARKS
from pipeline.report.browser import Chromium, find_chromium

DOWNSTREAM_OF_TRAIN = {
    "train",
    "evaluate",
    "reading_curve",
    "control",
    "report",
    "experiment",
    "probes",
    "explain",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_dir):
    workspace = Workspace(tmp_path_factory.mktemp("workflow"), tiny_model_dir, readers=True)
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
        "reading_curve",
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


def test_report_opens_in_a_browser_with_every_image_and_section(built, tmp_path):
    """The tiny experiment's report page in headless Chromium (Debian's ``chromium``), from a
    copy of its folder: every image loads, nothing is fetched but the folder's own files, and
    the headline, example reads and reading curve come first."""
    binary = find_chromium()
    if binary is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    copy = tmp_path / "copied_report"
    shutil.copytree(built.root / built.view()["report"], copy)
    with Chromium(binary) as browser:
        browser.open(copy / "summary.html")
        state = browser.inspect()
        browser.screenshot(tmp_path / "first_screen.png")
    images = {image["src"]: image for image in state["images"]}
    assert set(images) >= {
        "evaluate_plot_overview.png",
        "training_curve.png",
        "reading_curve.png",
        "probes_probes.png",
        "lens_lens.png",
    }
    assert all(image["loaded"] and image["width"] > 100 for image in images.values()), images
    assert state["scripts"] == 0
    assert state["requests"] and all(
        url.startswith(copy.as_uri() + "/") for url in state["requests"]
    ), state["requests"]
    sections = [(s["id"], s["title"]) for s in state["sections"]]
    assert sections[:3] == [
        ("headline", "Does it read?"),
        ("examples", "Example reads"),
        ("learning", "How it learned"),
    ]
    assert sections[-1] == ("settings", "Settings and artifacts")
    assert state["sections"][0]["text"] > 300  # the verdict and one sentence per metric
    assert len(state["examples"]) >= 8
    for example in state["examples"]:
        assert example["answers"] == ["true", "shuffled", "untrained", "text_only"], example
    assert (tmp_path / "first_screen.png").stat().st_size > 20_000


def test_snakemake_report_carries_the_figures_and_the_example_reads(built, tmp_path):
    out = tmp_path / "report.html"
    built.snakemake("--report", str(out))
    page = out.read_text()
    results = set(re.findall(r'"name": "([^"]+)"', page))
    assert results >= {
        "evaluate_plot_overview.png",
        "training_curve.png",
        "reading_curve.png",
        "probes_probes.png",
        "examples.html",
        "headline.html",
    }
    # summary.html shows its figures by relative path, which that report does not carry.
    assert "summary.html" not in results


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
    layers = built.module("pipeline.analysis.layers", "--experiment", "tiny")
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
        assert set(built.scheduled()) == {"evaluate", "reading_curve", "report", "experiment"}
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
        # The readers share the evaluation's conditions and scorers, not the evaluate stage:
        # editing it leaves probes and explanations be. The reading curve imports the evaluate
        # stage (its LatentQA eval rows) and scores with the evaluation's conditions.
        ("evaluation/evaluate", {"evaluate", "reading_curve", "report", "experiment"}),
        (
            "evaluation/conditions",
            {"evaluate", "reading_curve", "report", "experiment", "explain"},
        ),
        ("training/train", DOWNSTREAM_OF_TRAIN),
        # Training's params are not the activation cache's: editing them retrains, and the
        # target's forwards stay cached; the cache's own params rerun it and what follows.
        ("training/params", DOWNSTREAM_OF_TRAIN),
        ("training/cache_params", {"activation_cache"} | DOWNSTREAM_OF_TRAIN),
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


def test_f_an_emptied_store_is_rebuilt_with_its_view(built):
    """No artifact left (the store removed, or every key changed by a new model or an edited core
    module): every stage and the view are scheduled, although the view exists."""
    store_dir = built.root / "results" / "store"
    aside = store_dir.with_name("store.aside")
    store_dir.rename(aside)
    try:
        assert set(built.scheduled()) == {
            "prepare_model",
            "templates",
            "filter",
            "activation_cache",
            "train",
            "evaluate",
            "reading_curve",
            "control",
            "report",
            "experiment",
            *("statements", "layer_cache", "lens", "probes", "explain"),  # the readers
        }
    finally:
        # The parse made a new store folder and recorded the view in it (pipeline.core.usage).
        shutil.rmtree(store_dir, ignore_errors=True)
        aside.rename(store_dir)
    assert built.scheduled() == {}


def test_g_a_run_killed_after_a_job_published_is_resumed_by_the_normal_command(built, tmp_path):
    """SIGKILL to the Snakemake process group once the view is in place but before Snakemake has
    seen its job end: the output is complete (published atomically), so `--unlock` and the normal
    command finish the run; Snakemake's incomplete marker must not refuse it or rebuild it."""
    view = built.root / "results" / "tiny"
    # The report rebuilt, so the view job runs (a view merely removed is rewritten at parse).
    shutil.rmtree(built.root / built.view()["report"])
    marks = tmp_path / "marks"
    marks.mkdir()
    env, tag = tagged_env({**built.env, FAULT: "view.published:pause", MARKS: str(marks)})
    log = tmp_path / "killed.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            built.command(),
            cwd=built.root,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        try:
            wait_for_mark(marks, "view.published", proc, timeout=300)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log.read_text()[-4000:]}") from None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert wait_until_gone(tag) == []
    finally:
        kill_all(tagged_processes(tag))
    published = (view / "view.json").stat().st_mtime
    built.snakemake("--unlock")
    assert built.scheduled() == {}, log.read_text()[-3000:]
    assert "Nothing to be done" in built.snakemake()
    assert (view / "view.json").stat().st_mtime == published


TOKEN_COUNT = '''"""Stage `token_count`: the dialogs of one split that the filter kept."""

import json
from dataclasses import dataclass
from typing import Literal

from pipeline.core import stage
from pipeline.data.schema import read_dialogs


@dataclass
class TokenCountParams:
    """What to count."""

    split: Literal["train", "validation", "eval"] = "train"
    """The split whose dialogs are counted."""


def run(params, inputs, workdir, info):
    rows = read_dialogs(inputs["data"] / "dialogs.parquet")
    rows = [r for r in rows if r["split"] == params.split]
    counts = {"dialogs": len(rows), "turns": sum(len(r["messages"]) for r in rows)}
    (workdir / "counts.json").write_text(json.dumps(counts))
    info.update(counts)


if __name__ == "__main__":
    stage.main("token_count", TokenCountParams, run, needs=("data",))
'''

DECLARATION = """
STAGES["token_count"] = StageSpec(
    "analysis.token_count",
    "analysis.token_count:TokenCountParams",
    threads=1,
    mem_mb=1000,
    reads={"data": "filter"},
)
"""


def test_h_a_stage_added_as_its_module_and_one_declaration_runs(built):
    (built.root / "pipeline" / "analysis" / "token_count.py").write_text(TOKEN_COUNT)
    registry = built.root / "pipeline" / "core" / "stages.py"
    registry.write_text(registry.read_text() + DECLARATION)
    schema = built.module("pipeline.core.config_schema")
    (built.root / "workflow" / "schemas" / "config.schema.yaml").write_text(schema)
    built.config["experiments"]["tiny"]["token_count"] = {"split": "eval"}
    built.write_config()
    assert "token_count" in built.snakemake("--list-rules").split()
    assert built.scheduled() == {"token_count": 1, "experiment": 1}  # nothing else reruns
    built.snakemake()
    counts = json.loads((built.root / built.view()["token_count"] / "counts.json").read_text())
    assert counts["dialogs"] > 0 and counts["turns"] >= 2 * counts["dialogs"]
    built.config["experiments"]["tiny"]["token_count"] = {"split": "nonsense"}
    built.write_config()
    with pytest.raises(AssertionError, match="token_count.split"):
        built.snakemake("-n")  # its choices are checked at parse, like any stage's
