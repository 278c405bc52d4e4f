"""Per-block plots of the readers: probe accuracy (``probes.json``) and logit-lens curves
(``lens.json``). Both draw from the report dicts alone, so a finished analysis can be redrawn."""

from __future__ import annotations

from pathlib import Path

COLORS = {"logistic": "C0", "ccs": "C1", "random": "C7", "zero_shot": "C2", "decoder": "C3"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_probes(report: dict, path: Path, split: str = "eval") -> None:
    """One panel per task: accuracy per block with 95% CI bands; single readers as lines."""
    plt = _pyplot()
    tasks = {n: t for n, t in report["tasks"].items() if "per_layer" in t}
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 3.8), squeeze=False)
    for ax, (name, task) in zip(axes[0], tasks.items(), strict=True):
        for method, per_layer in task["per_layer"].items():
            layers = sorted(int(k) for k in per_layer)
            stats = [per_layer[str(k)][split] for k in layers]
            means = [s["mean"] for s in stats]
            ax.plot(layers, means, "o-", ms=3, color=COLORS.get(method), label=method)
            ax.fill_between(
                layers,
                [s["ci95"][0] for s in stats],
                [s["ci95"][1] for s in stats],
                color=COLORS.get(method),
                alpha=0.15,
            )
        for method in ("zero_shot", "decoder"):
            if method in task:
                value = task[method][split]["mean"]
                ax.axhline(value, color=COLORS[method], linestyle="--", label=f"{method}")
                if "layer" in task[method]:
                    ax.plot([task[method]["layer"]], [value], "*", ms=12, color=COLORS[method])
        chance = task["chance"]
        chance = chance[split] if isinstance(chance, dict) else chance
        ax.axhline(chance, color="black", linewidth=0.8, linestyle=":", label="chance")
        ax.set_title(f"{name} ({split} split)", fontsize=10)
        ax.set_xlabel("block")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lens(report: dict, path: Path) -> None:
    """Per task: median rank (log scale) and probability per block, interquartile bands."""
    plt = _pyplot()
    tasks = report["tasks"]
    if not tasks:
        return
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.5 * len(tasks), 6.5), squeeze=False)
    for col, (name, task) in enumerate(tasks.items()):
        for key, color in (("answer", "C0"), ("english", "C1")):
            if key not in task:
                continue
            curve = task[key]
            blocks = list(range(len(curve["rank_median"])))
            for row, metric in enumerate(("rank", "prob")):
                ax = axes[row][col]
                ax.plot(blocks, curve[f"{metric}_median"], color=color, label=key)
                ax.fill_between(
                    blocks, curve[f"{metric}_q25"], curve[f"{metric}_q75"], color=color, alpha=0.2
                )
        axes[0][col].set_yscale("log")
        axes[0][col].invert_yaxis()
        axes[0][col].set_title(f"{name} (n={task['n']})", fontsize=9)
        axes[0][col].set_ylabel("rank (median, IQR)")
        axes[1][col].set_ylabel("probability (median, IQR)")
        axes[1][col].set_xlabel("block")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
