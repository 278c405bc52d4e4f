"""How the decoder learned: its reading curve against optimizer steps (``curve.json`` of the
reading_curve stage), as a figure, a table and what it cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.report import eval_view
from pipeline.report.headline import BINARY, READING, format_gap

STYLES = {"true": ("o-", "C0"), "shuffled": ("s--", "C7"), "text_only": ("^:", "C2")}


def shown(curve: dict[str, Any]) -> list[str]:
    """The curve's reading metrics, in the headline's order, each followed by its other read
    layers (``<metric>@<layer>``, from ``reading_curve.layers: all``)."""
    names = []
    for name in READING:
        if name in curve["metrics"]:
            names.append(name)
            names += sorted(
                k for k in curve["metrics"] if k.partition("@")[0] == name and k != name
            )
    return names


def label(curve: dict[str, Any], name: str) -> str:
    """A metric's name with its item count, and where it was read for a decoder of several
    read layers (the layer the evaluation reported it at)."""
    metric = curve["metrics"][name]
    where = ""
    if len(curve.get("layers", [])) > 1 and metric.get("layer") is not None:
        where = f", {eval_view.where_read(metric['layer'])}"
    return f"{name.partition('@')[0]} (n={metric['n']}{where})"


def plot(curve: dict[str, Any], path: Path) -> None:
    """One panel per reading metric: the mean of each condition at every step, 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = shown(curve)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        metric = curve["metrics"][name]
        for condition in curve["conditions"]:
            style, color = STYLES.get(condition, ("x-", "C3"))
            points = [
                (p["step"], p["conditions"][condition])
                for p in metric["points"]
                if p["conditions"].get(condition, {}).get("mean") is not None
            ]
            if not points:
                continue
            steps = [s for s, _ in points]
            means = [v["mean"] for _, v in points]
            ax.plot(steps, means, style, color=color, label=condition)
            ax.fill_between(
                steps,
                [v["ci95"][0] for _, v in points],
                [v["ci95"][1] for _, v in points],
                color=color,
                alpha=0.12,
            )
        ax.set_title(label(curve, name), fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.set_xticks(curve["steps"])
        ax.grid(alpha=0.3)
        if metric["kind"] in BINARY:
            ax.set_ylim(-0.02, 1.02)
            ax.set_ylabel("fraction of items", fontsize=8)
        elif metric["kind"] == "loglik":
            ax.set_ylabel("log-likelihood per token (nats)", fontsize=8)
        else:
            ax.set_ylabel(metric["kind"], fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table_lines(curve: dict[str, Any]) -> list[str]:
    """Markdown: the grounding gap of each reading metric at every step."""
    steps = curve["steps"]
    lines = [
        "| metric (gap over shuffled) | " + " | ".join(f"step {s}" for s in steps) + " |",
        "| --- |" + " --- |" * len(steps),
    ]
    for name in shown(curve):
        metric = curve["metrics"][name]
        cells = [
            format_gap(p["grounding_gap"], metric["kind"]) if "grounding_gap" in p else "–"
            for p in metric["points"]
        ]
        lines.append(f"| {label(curve, name)} | " + " | ".join(cells) + " |")
    return lines


def cost_line(curve: dict[str, Any]) -> str:
    """What the curve is made of: items, steps and conditions (its seconds stay in curve.json, so
    that the report of a rerun is the same file)."""
    items = max((m["n"] for m in curve["metrics"].values()), default=0)
    steps = ", ".join(map(str, curve["steps"]))
    return (
        f"Scored on the same {items} evaluation items per metric (at most) at "
        f"{len(curve['steps'])} steps ({steps}) under {', '.join(curve['conditions'])}; the "
        "stage's seconds are in `curve.json`. Step 0 is the base model: a LoRA adapter starts as "
        "the identity."
    )
