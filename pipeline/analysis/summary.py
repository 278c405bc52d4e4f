"""Markdown summaries of the readers (``probes.json``, ``lens.json``) for the report and the
layer-choice command; torch-free."""

from __future__ import annotations

from collections.abc import Sequence
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


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _decoder_row(
    name: str,
    where: str,
    summary: dict,
    by_layer: dict | None,
    layer: int | None,
    read_layers: Sequence[int],
) -> str:
    """A decoder reader's row: ``summary`` at ``where``, then its figure at each read layer
    (without per-layer figures, the one layer read, if any, holds ``summary`` itself)."""
    by_layer = by_layer or ({str(layer): summary} if layer is not None else {})
    here = [_pct(by_layer.get(str(read))) for read in read_layers]
    return _row([name, where, _pct(summary), *here])


def probes_table(report: dict[str, Any], read_layers: Sequence[int] = ()) -> list[str]:
    """Per task and reader: best block and accuracy there, and accuracy at each block the decoder
    reads, where the decoder's own row gives its accuracy reading that block."""
    lines = []
    for name, task in report["tasks"].items():
        if "per_layer" not in task:
            lines += [f"**{name}**: skipped ({task.get('skipped', 'no items')}).", ""]
            continue
        chance = task["chance"]["eval"] if isinstance(task["chance"], dict) else task["chance"]
        at = [f"accuracy at block {layer}" for layer in read_layers]
        lines += [
            f"**{name}**: {task['description']} (eval split; chance {100 * chance:.0f}%; "
            f"95% bootstrap CI).",
            "",
            _row(["reader", "best block (eval)", "accuracy there", *at]),
            _row(["---"] * (3 + len(at))),
        ]
        for method, per_layer in task["per_layer"].items():
            top = best(per_layer, "eval")
            if top:
                here = [_pct(per_layer.get(str(layer), {}).get("eval")) for layer in read_layers]
                lines.append(_row([method, str(top[0]), _pct(top[1]), *here]))
        if "zero_shot" in task:
            lines.append(
                _row(["zero_shot", "output", _pct(task["zero_shot"]["eval"])] + ["–"] * len(at))
            )
        if "decoder" in task:
            decoder = task["decoder"]
            where = f"block {decoder['layer']}" if "layer" in decoder else "every read block"
            lines.append(
                _decoder_row("decoder", f"{where} (chosen on validation)", decoder["eval"],
                             task.get("decoder_by_layer"), decoder.get("layer"), read_layers)
            )  # fmt: skip
            if "answer_state" in decoder:
                lines.append(
                    _decoder_row("probe of the decoder's answer state", where,
                                 decoder["answer_state"]["eval"], task.get("answer_state_by_layer"),
                                 decoder.get("layer"), read_layers)
                )  # fmt: skip
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
