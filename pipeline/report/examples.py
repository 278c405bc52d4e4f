"""Example reads: what the decoder answered for a few evaluation items, under every condition.

Built from the evaluate artifact alone: ``predictions.jsonl`` (per item and condition the
question, reference, answer and each scorer's score), ``read_dialogs.jsonl`` (the dialog each
item reads) and ``eval.json`` (which scorer names each metric). A seeded sample of items of each
kind is shown with its dialog (masked turns marked), and its answers when the decoder reads its
own activations, another item's (shuffled), with the adapter off (untrained) and with the dialog
as text (text-only), each marked hit or miss by the metric's own scorer.
"""

from __future__ import annotations

import html
import json
import random
from pathlib import Path
from typing import Any

from pipeline.report import eval_view

KINDS = {
    "recovery_heldout": "held-out persona or goal",
    "feature_extraction": "relation fact (unseen relation)",
    "subject_identification": "subject identification (unseen relation)",
    "latentqa_recovery": "LatentQA (imported evaluation split)",
}
"""The metrics examples are drawn from, and what kind of read each one is."""
ORDER = ("true", "shuffled", "untrained", "text_only")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _what_was_read(row: dict[str, Any] | None) -> str | None:
    """A donor item in a few words: its label, or the entity its sentence mentions."""
    if row is None:
        return None
    return row.get("subject") or row.get("label") or row.get("item")


def choose(
    evaluate: Path, per_metric: int, seed: int, layer: eval_view.Layer | None = None
) -> list[dict[str, Any]]:
    """The examples: ``per_metric`` items of each kind present, drawn with ``seed``, answered at
    ``layer`` (None: each metric's own read layer)."""
    report = json.loads((evaluate / "eval.json").read_text())
    dialogs = {(r["metric"], r["item"]): r for r in _jsonl(evaluate / "read_dialogs.jsonl")}
    read_at = {
        name: layer if layer is not None else eval_view.chosen_layer(report, name) for name in KINDS
    }
    rows: dict[tuple[str, str], dict[str, dict]] = {}
    for row in _jsonl(evaluate / "predictions.jsonl"):
        if row["metric"] in KINDS and eval_view.at_layer(row, read_at[row["metric"]]):
            rows.setdefault((row["metric"], row["item"]), {})[row["condition"]] = row
    rng = random.Random(seed)
    chosen = []
    for metric, kind in KINDS.items():
        result = eval_view.metric(report, metric, layer)
        items = sorted(item for (m, item) in rows if m == metric)
        if result is None or not items:
            continue
        scorer = eval_view.scorer(result)
        for item in rng.sample(items, min(per_metric, len(items))):
            by_condition = rows[(metric, item)]
            true = by_condition.get("true", {})
            answers = {}
            for condition in ORDER:
                row = by_condition.get(condition)
                if row is None:
                    continue
                score = row.get(scorer)
                answers[condition] = {
                    "answer": row.get("prediction", ""),
                    "hit": None if scorer == "similarity" or score is None else score >= 1.0,
                    "scores": {
                        s: row[s]
                        for s in ("match", "concept", "entity", "similarity", "judge")
                        if s in row
                    },
                }
                if condition == "shuffled":
                    donor = rows.get((metric, row.get("donor")), {}).get("true")
                    answers[condition]["read_from"] = _what_was_read(donor) or row.get("donor")
            dialog = dialogs.get((metric, item), {})
            chosen.append(
                {
                    "metric": metric,
                    "kind": kind,
                    "item": item,
                    "layer": read_at[metric],
                    "messages": dialog.get("messages"),
                    "n_masked_turns": dialog.get("n_masked_turns", 0),
                    "question": true.get("question"),
                    "reference": true.get("reference"),
                    "scorer": scorer,
                    "answers": answers,
                }
            )
    return chosen


def write_jsonl(examples: list[dict[str, Any]], path: Path) -> None:
    path.write_text(
        "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples), encoding="utf-8"
    )


def _mark(answer: dict[str, Any], scorer: str) -> str:
    if answer["hit"] is None:
        value = answer["scores"].get(scorer)
        return "–" if value is None else f"{scorer} {value:.2f}"
    return "✓ hit" if answer["hit"] else "✗ miss"


def _condition(condition: str, answer: dict[str, Any]) -> str:
    label = eval_view.CONDITION_LABELS[condition]
    if answer.get("read_from"):
        label += f" (read {answer['read_from']})"
    return label


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split()) or "(empty)"


def markdown_lines(examples: list[dict[str, Any]]) -> list[str]:
    """Markdown: per example its dialog, question, reference and a table of the four answers."""
    lines = []
    for n, ex in enumerate(examples, 1):
        where = "" if ex.get("layer") is None else f", read {eval_view.where_read(ex['layer'])}"
        lines += ["", f"### {n}. {ex['kind']} ({ex['item']}{where})", ""]
        for i, message in enumerate(ex["messages"] or []):
            masked = " *(masked: run, not read)*" if i < ex["n_masked_turns"] else ""
            lines.append(f"> **{message['role']}**{masked}: {_one_line(message['content'])}  ")
        if not ex["messages"]:
            lines.append("(the evaluation did not record the read dialog)")
        lines += [
            "",
            f"**Question:** {ex['question']}  ",
            f"**Reference:** {ex['reference']}",
            "",
            f"| condition | answer | {ex['scorer']} |",
            "| --- | --- | --- |",
        ]
        for condition, answer in ex["answers"].items():
            text = _one_line(answer["answer"]).replace("|", "\\|")
            lines.append(
                f"| {_condition(condition, answer)} | {text} | {_mark(answer, ex['scorer'])} |"
            )
    return lines


def html_block(examples: list[dict[str, Any]]) -> str:
    """The same examples as HTML cards (every text escaped), for the report page."""
    e = html.escape
    cards = []
    for n, ex in enumerate(examples, 1):
        turns = []
        for i, message in enumerate(ex["messages"] or []):
            masked = i < ex["n_masked_turns"]
            tag = " <span class='tag'>masked: run, not read</span>" if masked else ""
            turns.append(
                f"<div class='turn{' masked' if masked else ''}'><b>{e(message['role'])}</b>"
                f"{tag}<br>{e(message['content'])}</div>"
            )
        if not turns:
            turns.append("<div class='turn'>(the evaluation did not record the read dialog)</div>")
        answers = []
        for condition, answer in ex["answers"].items():
            mark = _mark(answer, ex["scorer"])
            css = "hit" if answer["hit"] else ("miss" if answer["hit"] is False else "score")
            answers.append(
                f"<tr class='{condition}'><td>{e(_condition(condition, answer))}</td>"
                f"<td>{e(_one_line(answer['answer']))}</td><td class='{css}'>{e(mark)}</td></tr>"
            )
        where = "" if ex.get("layer") is None else f", read {eval_view.where_read(ex['layer'])}"
        cards.append(
            f"<div class='example' id='example-{n}'><h3>{n}. {e(ex['kind'])} "
            f"<small>{e(ex['item'] + where)}</small></h3><div class='dialog'>{''.join(turns)}</div>"
            f"<p><b>Question:</b> {e(ex['question'] or '')}<br><b>Reference:</b> "
            f"{e(ex['reference'] or '')}</p><table><tr><th>condition</th><th>answer</th>"
            f"<th>{e(ex['scorer'])}</th></tr>{''.join(answers)}</table></div>"
        )
    return "\n".join(cards)
