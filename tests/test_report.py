"""The report stage on the artifacts of real stages (evaluate and reading curve on a tiny random
model): its sections in order, example reads true to the predictions, a folder that stands alone.
The same page opened in Chromium: tests/test_workflow.py."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from test_curve import curve_run  # noqa: F401  (the evaluate and reading-curve artifacts)

from pipeline.report import report
from pipeline.report.examples import ORDER

METRICS = [
    {"step": 0, "eval_loss": 4.5, "eval_loss_shuffled": 4.6},
    {"step": 1, "loss": 4.1},
    {"step": 2, "loss": 3.2, "eval_loss": 3.5, "eval_loss_shuffled": 3.9},
]


@pytest.fixture(scope="module")
def built(curve_run, tmp_path_factory):  # noqa: F811
    curve_dir, evaluated, _ = curve_run
    root = evaluated.parent
    (root / "train" / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in METRICS))
    (root / "data" / "filter_report.md").write_text("# Filter report\n\nkept 13 dialogs\n")
    inputs = {
        "train": root / "train",
        "evaluate": evaluated,
        "data": root / "data",
        "curve": curve_dir,
    }
    out = tmp_path_factory.mktemp("report")
    info: dict = {}
    report.run(report.ReportParams(examples_per_metric=2), inputs, out, info)
    return out, evaluated, info


def test_sections_come_in_the_order_a_reader_looks(built):
    out, _, _ = built
    summary = (out / "summary.md").read_text()
    titles = re.findall(r"^## (.+)$", summary, re.M)
    assert titles == [
        "Does it read?",
        "Example reads",
        "How it learned",
        "Evaluation tables",
        "Settings and artifacts",
    ]
    head = summary[: summary.index("## Example reads")]
    assert "**Does it read?" in head and "over shuffled" in head
    assert "![every metric under the four conditions](evaluate_plot_overview.png)" in head
    learned = summary[summary.index("## How it learned") : summary.index("## Evaluation tables")]
    assert "(training_curve.png)" in learned and "(reading_curve.png)" in learned
    assert "| step 0 | step 1 | step 2 |" in learned and "at 3 steps (0, 1, 2)" in learned
    evaluation = json.loads((built[1] / "eval.json").read_text())
    if len(evaluation["layers"]) > 1:  # each reading metric named with where it was read
        where = "at every read block at once" if evaluation["decoder"]["all_layers"] else "at block"
        assert f"| subject_identification (n=3, {where}" in learned
    settings = summary[summary.index("## Settings and artifacts") :]
    assert "| evaluate | evaluate | `2222222222222222` |" in settings
    assert "| train | train | `1111111111111111` |" in settings
    assert "#### Filter report" in settings  # the data's own headings sit below the section


def test_example_reads_show_every_condition_marked_by_the_metric_s_scorer(built, tmp_path):
    out, evaluated, info = built
    examples = [json.loads(line) for line in (out / "examples.jsonl").open()]
    # Two items of each kind the evaluation has (held-out persona, relation, subject, LatentQA).
    assert [e["metric"] for e in examples] == [
        m
        for m in (
            "recovery_heldout",
            "feature_extraction",
            "subject_identification",
            "latentqa_recovery",
        )
        for _ in range(2)
    ]
    assert info["examples"] == 8
    predictions = {
        (r["metric"], r["item"], r["condition"], r["layer"]): r
        for r in map(json.loads, (evaluated / "predictions.jsonl").open())
    }
    reported = json.loads((evaluated / "eval.json").read_text())["metrics"]
    for example in examples:
        assert list(example["answers"]) == list(ORDER)
        assert example["messages"] and example["question"] and example["reference"]
        # At the layer the evaluation reported the metric at (text-only reads none).
        assert example["layer"] == reported[example["metric"]]["layer"]
        for condition, answer in example["answers"].items():
            layer = None if condition == "text_only" else example["layer"]
            row = predictions[(example["metric"], example["item"], condition, layer)]
            assert answer["answer"] == row["prediction"]
            if example["scorer"] == "similarity":
                assert answer["hit"] is None
            else:
                assert answer["hit"] == (row[example["scorer"]] == 1.0)
        donor = example["answers"]["shuffled"]["read_from"]
        assert donor and donor != example["item"]
    persona = examples[0]
    assert persona["n_masked_turns"] == 1 and persona["messages"][0]["role"] == "system"
    summary = (out / "summary.md").read_text()
    assert "*(masked: run, not read)*" in summary
    # The same sample every time the report is drawn.
    again = tmp_path / "again"
    again.mkdir()
    report.run(
        report.ReportParams(examples_per_metric=2),
        {"train": evaluated.parent / "train", "evaluate": evaluated, "data": out},
        again,
        {},
    )
    assert (again / "examples.jsonl").read_text() == (out / "examples.jsonl").read_text()


def test_the_page_stands_alone_offline(built, tmp_path):
    out, _, _ = built
    page = (out / "summary.html").read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert {"evaluate_plot_overview.png", "training_curve.png", "reading_curve.png"} <= set(sources)
    # Relative paths: a copy of the folder still has every image the page shows.
    copy = tmp_path / "copied"
    shutil.copytree(out, copy)
    assert all((copy / src).is_file() and "/" not in src for src in sources)
    assert "<details><summary><h2>Settings and artifacts</h2>" in page
    assert page.count("class='example'") == 8
    # For `snakemake --report`: the headline and the examples as pages of their own.
    assert "over shuffled" in (out / "headline.html").read_text()
    assert "<img" not in (out / "headline.html").read_text()
    assert (out / "examples.html").read_text().count("class='example'") == 8
