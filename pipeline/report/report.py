"""Stage `report`: plots and a summary of one decoder, for people and for `snakemake --report`."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core import stage
from pipeline.mechanism.decoder_settings import DecoderSettings
from pipeline.report import reading_curve
from pipeline.report.html import markdown_to_html

log = logging.getLogger("pipeline.report.report")


@dataclass
class ReportParams:
    """How the report is drawn."""

    smoothing: int = 5
    """Window (in logged steps) of the moving average drawn over the training loss."""
    compare_with: list[str] = field(default_factory=list)
    """Experiments whose decoders are drawn beside this one: reading metrics against training
    minutes (experiments on the same data with other training lengths)."""
    readers: bool = False
    """Show the readers beside the decoder (probes, logit lens, explanation scoring); needs the
    experiment's ``analysis`` section and builds it with the experiment."""


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


def _summary_lines(inputs: dict[str, Path], metrics: list[dict[str, Any]]) -> list[str]:
    lines = ["# Decoder report", ""]
    train_manifest = json.loads((inputs["train"] / "_manifest.json").read_text())
    settings = DecoderSettings.from_manifest(train_manifest, where=str(inputs["train"]))
    lines += ["## Training", "", settings.describe(), "", "| setting | value |", "| --- | --- |"]
    for name, value in sorted(train_manifest["params"].items()):
        lines.append(f"| {name} | {value} |")
    held = [m for m in metrics if m.get("eval_loss") is not None]
    if held:
        lines += [
            "",
            f"Held-out answer loss (validation labels): {held[0]['eval_loss']:.3f} at the start, "
            f"{held[-1]['eval_loss']:.3f} at the end ({len(held)} evaluations).",
        ]
        if held[-1].get("eval_loss_shuffled") is not None:
            lines[-1] += (
                f" With shuffled activations at the end: {held[-1]['eval_loss_shuffled']:.3f}."
            )
    for name, title in (("evaluate", "Evaluation"), ("control", "Control")):
        for table in ("tables.md", "control.md"):
            if name in inputs and (inputs[name] / table).exists():
                lines += ["", f"## {title}", "", (inputs[name] / table).read_text().strip()]
    lines += readers_lines(inputs, settings.read_layer)
    filter_report = inputs.get("data", Path()) / "filter_report.md"
    if filter_report.exists():
        lines += ["", "## Data", "", filter_report.read_text().strip()]
    return lines


def readers_lines(inputs: dict[str, Path], read_layer: int) -> list[str]:
    """The readers beside the decoder (probes, lens, explanations), where the analysis ran."""
    from pipeline.analysis.summary import lens_lines, probes_table

    if not any(name in inputs for name in ("probes", "lens", "explain")):
        return []
    lines = ["", "## Readers beside the decoder", ""]
    if "probes" in inputs:
        report = json.loads((inputs["probes"] / "probes.json").read_text())
        lines += ["### Probes (probes.png)", "", *probes_table(report, read_layer)]
    if "lens" in inputs:
        report = json.loads((inputs["lens"] / "lens.json").read_text())
        lines += ["### Logit lens (lens.png)", "", *lens_lines(report)]
    if "explain" in inputs:
        lines += ["### Explanation scoring", "", (inputs["explain"] / "explain.md").read_text()]
    return lines


def run(params: ReportParams, inputs: dict[str, Path], workdir: Path, info: dict) -> None:
    metrics = _read_jsonl(inputs["train"] / "metrics.jsonl")
    plot_training(metrics, workdir / "training_curve.png", params.smoothing)
    for name in ("evaluate", "control", "probes", "lens"):
        for png in sorted(inputs[name].glob("*.png")) if name in inputs else []:
            (workdir / f"{name}_{png.name}").write_bytes(png.read_bytes())
    lines = _summary_lines(inputs, metrics)
    if (inputs["evaluate"] / "eval.json").exists():
        found = reading_curve.points(inputs)
        reading_curve.plot(found, workdir / "reading_vs_minutes.png")
        lines += ["", "## Reading against training minutes", "", "true / shuffled:", ""]
        lines += reading_curve.table(found)
        info["reading"] = found
    summary = "\n".join(lines) + "\n"
    (workdir / "summary.md").write_text(summary)
    (workdir / "summary.html").write_text(markdown_to_html(summary, "Decoder report"))
    info["plots"] = sorted(p.name for p in workdir.glob("*.png"))
    log.info("report with %d plots", len(info["plots"]))


if __name__ == "__main__":
    stage.main("report", ReportParams, run)
