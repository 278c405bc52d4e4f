"""The evaluation's readable outputs: Markdown tables and bar charts of the report (``eval.json``).

Both read only the report dict, whose ``conditions`` maps each condition to its description, so
they can redraw the figures of a finished evaluation.
"""

from __future__ import annotations

from pathlib import Path

UNITS = {
    "loglik": "log-likelihood per answer token (nats)",
    "match": "fraction of items matched",
    "similarity": "similarity to the reference",
}


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ci(summary: dict) -> str:
    low, high = summary["ci95"]
    return "–" if low is None else f"[{low:.3f}, {high:.3f}]"


def write_tables(report: dict, path: Path) -> None:
    """Readable Markdown: a summary of every metric, then one table per metric."""
    conds = list(report["conditions"])
    decoder = report["decoder"]
    layers = decoder.get("read_layers") or [decoder["read_layer"]]
    write = decoder.get("write_layer")
    lines = [
        "# Decoder evaluation",
        "",
        f"Decoder: read layers {', '.join(map(str, layers))}, write "
        + ("at the layer read" if write is None else f"layer {write}")
        + f", positions {decoder['positions']}.",
        "",
        "Conditions: " + "; ".join(f"**{c}**: {d}" for c, d in report["conditions"].items()) + ".",
        "Grounding gap: true minus shuffled, paired per item (mean and 95% bootstrap CI).",
        "Each metric is shown at its read layer, chosen on the validation split (`layer`); "
        "every layer's figures follow in the table by layer.",
        "",
        "| metric | n | layer | " + " | ".join(conds) + " | grounding gap | gap 95% CI |",
        "|---|---|---|" + "---|" * (len(conds) + 2),
    ]
    for name, r in report["metrics"].items():
        if "conditions" not in r:
            lines.append(f"| {name} | 0 | – | " + " | ".join("–" for _ in conds) + " | – | – |")
            continue
        lines.append(
            f"| {name} | {r['n']} | {r.get('layer', '–')} | "
            + " | ".join(_fmt(r["conditions"][c]["mean"]) for c in conds)
            + f" | {_fmt(r['grounding_gap']['mean'])} | {_ci(r['grounding_gap'])} |"
        )
    scored = {k for r in report["metrics"].values() for k in r.get("by_layer", {})}
    keys = [k for k in ("all", *map(str, report.get("layers", []))) if k in scored]
    if len(keys) > 1:
        lines += ["", *layer_table(report, keys)]
    for name, r in report["metrics"].items():
        lines += ["", f"## {name}", "", r["description"] + "."]
        if "scorer" in r:
            lines.append(f"Scorer: {r['scorer']['name']} ({r['scorer']['kind']}).")
        lines += [f"Note: {note}." for note in r.get("notes", [])]
        if "conditions" not in r:
            lines.append(f"Skipped: {r['skipped']}.")
            continue
        ppl = any("perplexity" in v for v in r["conditions"].values())
        lines += [
            "",
            "| condition | mean | 95% CI | std | n |" + (" perplexity |" if ppl else ""),
            "|---|---|---|---|---|" + ("---|" if ppl else ""),
        ]
        rows = [(c, r["conditions"][c]) for c in conds]
        rows += [
            ("grounding gap (true − shuffled)", r["grounding_gap"]),
            ("text-only gap (true − text_only)", r["text_only_gap"]),
        ]
        for label, v in rows:
            lines.append(
                f"| {label} | {_fmt(v['mean'])} | {_ci(v)} | {_fmt(v['std'])} | "
                f"{v['n']} |" + (f" {_fmt(v.get('perplexity'), 2)} |" if ppl else "")
            )
        for part in ("relation", "task"):
            if r.get(f"by_{part}"):
                lines += ["", f"| {part} | " + " | ".join(conds) + " |"]
                lines.append("|---|" + "---|" * len(conds))
                for name, scores in r[f"by_{part}"].items():
                    lines.append(f"| {name} | " + " | ".join(_fmt(scores[c]) for c in conds) + " |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def layer_table(report: dict, keys: list[str]) -> list[str]:
    """Metric x read layer: true / shuffled / untrained and the grounding gap at each layer key
    (text only reads no layer: it is in the table above)."""
    head = " | ".join(
        f"{'all blocks' if k == 'all' else f'block {k}'}: true / shuffled / untrained (gap)"
        for k in keys
    )
    lines = [
        "## By read layer",
        "",
        "`*`: the layer the metric is reported at (chosen on the validation split). For a decoder "
        "reading every layer at once, `block L` gives only that layer's group the item's own "
        "activations (the others its donor's). `–`: not scored there (`evaluate.layers: all` "
        "scores every metric at every layer).",
        "",
        f"| metric | {head} |",
        "|---|" + "---|" * len(keys),
    ]
    for name, r in report["metrics"].items():
        by_layer = r.get("by_layer")
        if not by_layer:
            continue
        cells = []
        for key in keys:
            at = by_layer.get(key)
            if at is None:
                cells.append("–")
                continue
            c = at["conditions"]
            mark = "*" if str(r.get("layer")) == key else ""
            cells.append(
                f"{_fmt(c['true']['mean'])} / {_fmt(c['shuffled']['mean'])} / "
                f"{_fmt(c['untrained']['mean'])} ({_fmt(at['grounding_gap']['mean'])} "
                f"{_ci(at['grounding_gap'])}){mark}"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def write_plots(report: dict, folder: Path) -> None:
    """One bar chart per metric (conditions, 95% CI error bars) and an overview of them all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = {n: r for n, r in report["metrics"].items() if "conditions" in r}
    if not shown:
        return

    conds = list(report["conditions"])

    def draw(ax, name, r):
        means = [r["conditions"][c]["mean"] or 0.0 for c in conds]
        low = [
            m - (r["conditions"][c]["ci95"][0] if r["conditions"][c]["ci95"][0] is not None else m)
            for m, c in zip(means, conds, strict=True)
        ]
        high = [
            (r["conditions"][c]["ci95"][1] if r["conditions"][c]["ci95"][1] is not None else m) - m
            for m, c in zip(means, conds, strict=True)
        ]
        ax.bar(
            conds,
            means,
            yerr=[low, high],
            capsize=4,
            color=["#2b6cb0", "#a0aec0", "#dd6b20", "#38a169"],
        )
        gap = r["grounding_gap"]
        ax.set_title(f"{name} (n={r['n']})\ngap {_fmt(gap['mean'])} {_ci(gap)}", fontsize=9)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_ylabel(UNITS.get(r.get("kind", ""), "score"), fontsize=8)
        if r.get("kind") == "match":
            ax.set_ylim(0, 1)
        ax.tick_params(axis="x", labelsize=8)

    for name, r in shown.items():
        fig, ax = plt.subplots(figsize=(5, 3.5))
        draw(ax, name, r)
        fig.tight_layout()
        fig.savefig(folder / f"plot_{name}.png", dpi=100)
        plt.close(fig)
    cols = min(3, len(shown))
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, (name, r) in zip(axes.flat, shown.items(), strict=False):
        draw(ax, name, r)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(folder / "plot_overview.png", dpi=100)
    plt.close(fig)
