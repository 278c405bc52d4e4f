"""Markdown summaries of the readers (``probes.json``, ``lens.json``) for the report and the
layer-choice command; torch-free."""

from __future__ import annotations

from typing import Any


def _pct(summary: dict | None) -> str:
    if not summary or summary.get("mean") is None:
        return "–"
    low, high = summary["ci95"]
    return f"{100 * summary['mean']:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"


def best(per_layer: dict[str, dict], split: str) -> tuple[int, dict] | None:
    """(block, summary) with the highest mean on ``split``; the earliest block on a tie."""
    scored = [
        (v[split]["mean"], -int(k)) for k, v in per_layer.items() if v[split]["mean"] is not None
    ]
    if not scored:
        return None
    layer = -max(scored)[1]
    return layer, per_layer[str(layer)][split]


def probes_table(report: dict[str, Any], read_layer: int | None) -> list[str]:
    """Per task and reader: best block and accuracy there, and accuracy at the decoder's block."""
    lines = []
    for name, task in report["tasks"].items():
        if "per_layer" not in task:
            lines += [f"**{name}**: skipped ({task.get('skipped', 'no items')}).", ""]
            continue
        chance = task["chance"]["eval"] if isinstance(task["chance"], dict) else task["chance"]
        at = f"block {read_layer}" if read_layer is not None else "decoder's block"
        lines += [
            f"**{name}**: {task['description']} (eval split; chance {100 * chance:.0f}%; "
            f"95% bootstrap CI).",
            "",
            f"| reader | best block (eval) | accuracy there | accuracy at {at} |",
            "| --- | --- | --- | --- |",
        ]
        for method, per_layer in task["per_layer"].items():
            top = best(per_layer, "eval")
            here = (
                per_layer.get(str(read_layer), {}).get("eval") if read_layer is not None else None
            )
            if top:
                lines.append(f"| {method} | {top[0]} | {_pct(top[1])} | {_pct(here)} |")
        for method in ("zero_shot", "decoder"):
            if method in task:
                where = f"block {task[method]['layer']}" if "layer" in task[method] else "output"
                lines.append(f"| {method} | {where} | {_pct(task[method]['eval'])} | – |")
        lines.append("")
    return lines


def lens_lines(report: dict[str, Any]) -> list[str]:
    """Per task: where the answer (and English) first reach a median rank of 10, and the end."""
    lines = [
        "| lens task | n | answer: first block with median rank ≤ 10 | answer top-1 at the last "
        "block | English: first block with median rank ≤ 10 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, task in report["tasks"].items():
        answer, english = task["answer"], task.get("english")
        first = answer["first_block_median_rank_le_10"]
        lines.append(
            f"| {name} | {task['n']} | {'–' if first is None else first} | "
            f"{100 * answer['top1'][-1]:.0f}% | "
            + ("–" if not english else str(english["first_block_median_rank_le_10"] or "–"))
            + " |"
        )
    return lines + [""]
