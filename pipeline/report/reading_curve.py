"""Reading metrics against training minutes, for this decoder and the ones it is compared with.

Each decoder is one point per metric and condition: its evaluation's mean (``eval.json``) at the
minutes its training took (the train manifest's ``train_seconds``). With ``report.compare_with``
naming experiments that train longer or shorter on the same data, the points trace what more
training buys; the shuffled condition beside the true one shows how much of it is reading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS = (
    "subject_identification",
    "feature_extraction",
    "recovery_heldout_concept",
    "recovery_heldout",
)
"""The reading metrics drawn: entity and fact reading on unseen relations, and held-out recovery."""
CONDITIONS = ("true", "shuffled", "text_only")


def decoder_point(name: str, train: Path, evaluate: Path) -> dict[str, Any]:
    """One decoder's training minutes and steps, and its reading metrics per condition."""
    manifest = json.loads((train / "_manifest.json").read_text())
    report = json.loads((evaluate / "eval.json").read_text())
    metrics = {}
    for metric in METRICS:
        conditions = report["metrics"].get(metric, {}).get("conditions", {})
        metrics[metric] = {c: conditions[c]["mean"] for c in CONDITIONS if c in conditions}
    info = manifest.get("info", {})
    return {
        "experiment": name,
        "steps": info.get("steps"),
        "minutes": (info.get("train_seconds") or 0.0) / 60,
        "metrics": metrics,
    }


def points(inputs: dict[str, Path], own: str = "this decoder") -> list[dict[str, Any]]:
    """This report's decoder and each compared one (inputs ``peer_<name>_train``/``_evaluate``)."""
    found = [decoder_point(own, inputs["train"], inputs["evaluate"])]
    for key in sorted(inputs):
        if key.startswith("peer_") and key.endswith("_train"):
            name = key[len("peer_") : -len("_train")]
            found.append(decoder_point(name, inputs[key], inputs[f"peer_{name}_evaluate"]))
    return sorted(found, key=lambda p: p["minutes"])


def table(found: list[dict[str, Any]]) -> list[str]:
    """Markdown: one row per decoder, true / shuffled per metric."""
    head = "| decoder | steps | training minutes | " + " | ".join(METRICS) + " |"
    lines = [head, "|---|---:|---:|" + "---|" * len(METRICS)]
    for p in found:
        cells = []
        for metric in METRICS:
            values = p["metrics"][metric]
            true, shuffled = values.get("true"), values.get("shuffled")
            if true is None:
                cells.append("–")
            else:
                cells.append(f"{true:.3f}" + ("" if shuffled is None else f" / {shuffled:.3f}"))
        lines.append(
            f"| {p['experiment']} | {p['steps']} | {p['minutes']:.1f} | " + " | ".join(cells) + " |"
        )
    return lines


def plot(found: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], METRICS, strict=True):
        for condition, style in zip(CONDITIONS, ("o-", "s--", "^:"), strict=True):
            drawn = [
                (p["minutes"], p["metrics"][metric][condition])
                for p in found
                if p["metrics"][metric].get(condition) is not None
            ]
            if drawn:
                ax.plot(*zip(*drawn, strict=True), style, label=condition)
        for p in found:
            if p["metrics"][metric].get("true") is not None:
                ax.annotate(p["experiment"], (p["minutes"], p["metrics"][metric]["true"]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")  # fmt: skip
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("training minutes")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("score (fraction of items)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
