"""Stage `report`: plots and a summary of one decoder, for people and for `snakemake --report`."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core import stage, store
from pipeline.core.stage import bounded
from pipeline.mechanism.decoder_settings import DecoderSettings
from pipeline.report import examples, headline, learning, reading_curve
from pipeline.report.html import Section, markdown_body, report_html, report_markdown

log = logging.getLogger("pipeline.report.report")
TITLE = "Decoder report"


@dataclass
class ReportParams:
    """How the report is drawn."""

    smoothing: int = bounded(5, minimum=1)
    """Window (in logged steps) of the moving average drawn over the training loss."""
    compare_with: list[str] = field(default_factory=list)
    """Experiments whose decoders are drawn beside this one: reading metrics against training
    minutes (experiments on the same data with other training lengths)."""
    readers: bool = False
    """Show the readers beside the decoder (probes, logit lens, explanation scoring); needs the
    experiment's ``analysis`` section and builds it with the experiment."""
    examples_per_metric: int = bounded(3, minimum=0)
    """Example reads shown per kind of item (held-out persona, relation fact, subject, LatentQA)."""
    seed: int = 0
    """Seed of the example reads' sample."""


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_training(metrics: list[dict[str, Any]], path: Path, window: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    train = [(m["step"], m["loss"]) for m in metrics if m.get("loss") is not None]
    held = [(m["step"], m["eval_loss"]) for m in metrics if m.get("eval_loss") is not None]
    if train:
        steps, losses = zip(*train, strict=True)
        ax.plot(steps, losses, alpha=0.3, color="C0")
        ax.plot(steps, _moving_average(list(losses), window), color="C0", label="train")
    shuffled = [
        (m["step"], m["eval_loss_shuffled"])
        for m in metrics
        if m.get("eval_loss_shuffled") is not None
    ]
    for points, color, label in (
        (held, "C1", "validation labels"),
        (shuffled, "C2", "validation, shuffled activations"),
    ):
        if points:
            steps, losses = zip(*points, strict=True)
            ax.plot(steps, losses, "o-", color=color, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("answer loss (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _demoted(markdown: str, levels: int = 2) -> list[str]:
    """A stage's Markdown under a report section: its headings two levels down."""
    return ["#" * levels + line if line.startswith("#") else line for line in markdown.splitlines()]


def _image(workdir: Path, name: str, caption: str) -> list[str]:
    return [f"![{caption}]({name})", ""] if (workdir / name).exists() else []


def headline_section(inputs: dict[str, Path], workdir: Path, settings) -> Section:
    lines = [settings.describe(), ""]
    report_file = inputs["evaluate"] / "eval.json"
    if not report_file.exists():
        return Section("headline", "Does it read?", lines + ["No evaluation was run."])
    report = json.loads(report_file.read_text())
    lines += headline.headline_lines(report)
    lines += [
        "",
        "Every metric under the four conditions (true: its own activations; shuffled: another "
        "item's; untrained: the adapter off; text-only: the dialog as text), with 95% bootstrap "
        "intervals:",
        "",
        *_image(workdir, "evaluate_plot_overview.png", "every metric under the four conditions"),
    ]
    return Section("headline", "Does it read?", lines)


def examples_section(inputs: dict[str, Path], workdir: Path, params: ReportParams, info) -> Section:
    intro = [
        "A seeded sample of evaluation items of each kind: the dialog the target ran (masked "
        "turns run through it but not read), the question, and the decoder's answers when it "
        "reads the item's own activations (true), another item's (shuffled: whose, in brackets), "
        "with its adapter off (untrained) and given the dialog as text (text-only), each marked "
        "by the metric's own scorer. Also in `examples.jsonl`.",
    ]
    if not (inputs["evaluate"] / "predictions.jsonl").exists():
        return Section("examples", "Example reads", ["No evaluation was run."])
    chosen = examples.choose(inputs["evaluate"], params.examples_per_metric, params.seed)
    examples.write_jsonl(chosen, workdir / "examples.jsonl")
    block = examples.html_block(chosen)
    (workdir / "examples.html").write_text(
        report_html("Example reads", [Section("examples", "Example reads", intro, block)])
    )
    info["examples"] = len(chosen)
    return Section(
        "examples",
        "Example reads",
        intro + examples.markdown_lines(chosen),
        markdown_body("\n".join(intro)) + block,
    )


def learning_section(
    inputs: dict[str, Path], workdir: Path, metrics: list[dict[str, Any]], info
) -> Section:
    lines = [
        "The training loss, and the answer loss on validation labels read with each item's own "
        "activations and with another label's (shuffled): the gap between them is what the "
        "decoder learns to read.",
        "",
        *_image(workdir, "training_curve.png", "training curve"),
    ]
    held = [m for m in metrics if m.get("eval_loss") is not None]
    if held:
        lines += [
            f"Held-out answer loss (validation labels): {held[0]['eval_loss']:.3f} at the start, "
            f"{held[-1]['eval_loss']:.3f} at the end ({len(held)} evaluations)."
        ]
        if held[-1].get("eval_loss_shuffled") is not None:
            lines[-1] += (
                f" With shuffled activations at the end: {held[-1]['eval_loss_shuffled']:.3f}."
            )
        lines.append("")
    if "curve" in inputs:
        curve = json.loads((inputs["curve"] / "curve.json").read_text())
        learning.plot(curve, workdir / "reading_curve.png")
        lines += [
            "The reading metrics at the adapters saved while training, against optimizer steps:",
            "",
            *_image(workdir, "reading_curve.png", "reading curve"),
            learning.cost_line(curve),
            "",
            *learning.table_lines(curve),
        ]
        info["curve_steps"] = curve["steps"]
    else:
        lines.append(
            "No reading curve: set `train.adapter_every` to publish the adapter along the way "
            '(README, "What the report shows").'
        )
    if (
        any(key.startswith("peer_") for key in inputs)
        and (inputs["evaluate"] / "eval.json").exists()
    ):
        found = reading_curve.points(inputs)
        reading_curve.plot(found, workdir / "reading_vs_minutes.png")
        lines += ["", "### Beside the decoders it is compared with", "", "true / shuffled:", ""]
        lines += reading_curve.table(found)
        lines += ["", *_image(workdir, "reading_vs_minutes.png", "reading against minutes")]
        info["reading"] = found
    return Section("learning", "How it learned", lines)


def settings_section(inputs: dict[str, Path], train_manifest: dict, settings) -> Section:
    lines = [settings.describe(), "", "| training setting | value |", "| --- | --- |"]
    for name, value in sorted(train_manifest["params"].items()):
        lines.append(f"| {name} | {value} |")
    lines += ["", "Artifacts this report was built from (`results/store/<stage>/<key>`):", ""]
    lines += ["| input | stage | key |", "| --- | --- | --- |"]
    for name, path in sorted(inputs.items()):
        if (path / store.MANIFEST).is_file():
            manifest = json.loads((path / store.MANIFEST).read_text())
            lines.append(f"| {name} | {manifest.get('stage')} | `{manifest.get('key')}` |")
    filter_report = inputs.get("data", Path()) / "filter_report.md"
    if filter_report.exists():
        lines += ["", "### Data", "", *_demoted(filter_report.read_text().strip(), 3)]
    return Section("settings", "Settings and artifacts", lines, collapsed=True)


def sections(
    params: ReportParams, inputs: dict[str, Path], workdir: Path, info: dict
) -> list[Section]:
    """The report in the order a reader looks: does it read, examples, curves, the rest."""
    metrics = _read_jsonl(inputs["train"] / "metrics.jsonl")
    train_manifest = json.loads((inputs["train"] / "_manifest.json").read_text())
    settings = DecoderSettings.from_manifest(train_manifest, where=str(inputs["train"]))
    found = [
        headline_section(inputs, workdir, settings),
        examples_section(inputs, workdir, params, info),
        learning_section(inputs, workdir, metrics, info),
    ]
    readers = readers_lines(inputs, settings.read_layers, workdir)
    if readers:
        found.append(Section("readers", "Readers beside the decoder", readers))
    tables = inputs["evaluate"] / "tables.md"
    if tables.exists():
        found.append(
            Section("tables", "Evaluation tables", _demoted(tables.read_text()), collapsed=True)
        )
    if "control" in inputs and (inputs["control"] / "control.md").exists():
        control = _demoted((inputs["control"] / "control.md").read_text().strip())
        found.append(Section("control", "Steering", control))
    found.append(settings_section(inputs, train_manifest, settings))
    return found


def readers_lines(inputs: dict[str, Path], read_layers, workdir: Path) -> list[str]:
    """The readers beside the decoder (probes, lens, explanations), where the analysis ran."""
    from pipeline.analysis.summary import lens_lines, probes_table

    if not any(name in inputs for name in ("probes", "lens", "explain")):
        return []
    lines = []
    if "probes" in inputs:
        report = json.loads((inputs["probes"] / "probes.json").read_text())
        lines += ["### Probes", "", *_image(workdir, "probes_probes.png", "probes per block")]
        lines += probes_table(report, read_layers)
    if "lens" in inputs:
        report = json.loads((inputs["lens"] / "lens.json").read_text())
        lines += ["### Logit lens", "", *_image(workdir, "lens_lens.png", "logit lens per block")]
        lines += lens_lines(report)
    if "explain" in inputs:
        explain = (inputs["explain"] / "explain.md").read_text()
        lines += ["### Explanation scoring", "", *_demoted(explain, 3)]
    return lines


def run(params: ReportParams, inputs: dict[str, Path], workdir: Path, info: dict) -> None:
    metrics = _read_jsonl(inputs["train"] / "metrics.jsonl")
    plot_training(metrics, workdir / "training_curve.png", params.smoothing)
    for name in ("evaluate", "control", "probes", "lens"):
        for png in sorted(inputs[name].glob("*.png")) if name in inputs else []:
            (workdir / f"{name}_{png.name}").write_bytes(png.read_bytes())
    found = sections(params, inputs, workdir, info)
    # For `snakemake --report`, which shows a rule's HTML files but not the images they link.
    first = found[0]
    text = [line for line in first.markdown if not line.startswith("![")]
    (workdir / "headline.html").write_text(
        report_html(TITLE, [Section(first.id, first.title, text)])
    )
    (workdir / "summary.md").write_text(report_markdown(TITLE, found))
    (workdir / "summary.html").write_text(report_html(TITLE, found))
    info["plots"] = sorted(p.name for p in workdir.glob("*.png"))
    log.info("report with %d plots", len(info["plots"]))


if __name__ == "__main__":
    stage.main("report", ReportParams, run)
