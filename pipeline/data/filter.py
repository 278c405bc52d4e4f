"""Stage `filter`: validate, deduplicate, length-limit and split dialog sets, with a report.

Inputs: every input whose name starts with ``data`` is a dialog set (a folder holding
``dialogs.parquet``); ``model`` is a prepared model folder whose tokenizer measures lengths.
Outputs: ``dialogs.parquet`` (all kept rows, split set), ``train.parquet``,
``validation.parquet``, ``eval.parquet``, ``filter_report.json`` and ``filter_report.md``.
Dialogs under a control are split by label (train / validation / eval); texts read for what they
say (kind ``text``, the reading curriculum) are split by label into train / validation, except those
their source put in eval. The split is this stage's alone (pipeline/data/splits.py): data
stages, curation included, write their rows as train; a source may only fix labels to eval.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.core import stage
from pipeline.core.stage import bounded
from pipeline.data.schema import (
    SPLITS,
    DataError,
    read_frame,
    validate_record,
    write_dialogs,
)
from pipeline.data.splits import split_rows

log = logging.getLogger("pipeline.data.filter")

REASONS = ("invalid", "duplicate", "too_long")
MAX_EXAMPLES = 5


@dataclass
class FilterParams:
    """How dialogs are filtered and split."""

    max_tokens: int = bounded(512, minimum=1)
    """Longest read dialog kept, in target-tokenizer tokens of the chat-template rendering."""
    eval_fraction: float = bounded(0.1, minimum=0, maximum=1)
    """Share of the labels not already fixed to eval that go to the eval split."""
    validation_fraction: float = bounded(0.1, minimum=0, maximum=1)
    """Share of them that go to the validation split, which training reports its held-out loss
    on and settings are chosen by (never the eval split)."""
    eval_labels: list[str] | None = None
    """Explicit eval labels; when given, every other label not fixed to eval is train."""
    seed: int = 0
    """Seed of the hash-based label split."""
    keep_split: bool = True
    """Keep ``eval`` where a source already assigned it (e.g. imported eval data), whole labels."""

    def __post_init__(self) -> None:
        if self.eval_fraction + self.validation_fraction > 1.0:
            raise stage.ParamsError(
                f"filter: eval_fraction {self.eval_fraction} and validation_fraction "
                f"{self.validation_fraction} must sum to at most 1"
            )


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Raw rows of a dialogs Parquet file (rows are validated, and dropped, one by one later)."""
    rows = read_frame(path).to_dicts()
    if not rows:
        raise DataError(path, None, "<file>", "no dialogs")
    return rows


def token_lengths(tokenizer, dialogs: list[list[dict[str, str]]]) -> list[int]:
    """Token count of each read dialog as the target sees it (generation prompt after a user)."""
    lengths = []
    for messages in tqdm(dialogs, desc="measuring", unit="dialog", leave=False):
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=messages[-1]["role"] == "user"
        )
        lengths.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return lengths


def _counts(rows: list[dict[str, Any]], key: str) -> dict[str, int]:
    return dict(sorted(Counter(row[key] for row in rows).items()))


def filter_dialogs(
    sources: dict[str, list[dict[str, Any]]], files: dict[str, Path], tokenizer, params
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Kept rows (split set) and the report, from the raw rows of each named input."""
    dropped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    examples: dict[str, list[str]] = defaultdict(list)
    valid = []
    for name in sorted(sources):
        for index, row in enumerate(sources[name]):
            try:
                valid.append(validate_record(row, files[name], index))
            except DataError as exc:
                source = row.get("source") if isinstance(row.get("source"), str) else "<unknown>"
                dropped["invalid"].append({"source": source, "input": name})
                if len(examples["invalid"]) < MAX_EXAMPLES:
                    examples["invalid"].append(str(exc))

    unique, seen = [], set()
    for row in valid:
        if row["id"] in seen:
            dropped["duplicate"].append(row)
        else:
            seen.add(row["id"])
            unique.append(row)

    lengths = token_lengths(tokenizer, [row["messages"] for row in unique])
    kept, kept_lengths = [], []
    for row, length in zip(unique, lengths, strict=True):
        if length > params.max_tokens:
            dropped["too_long"].append(row)
            if len(examples["too_long"]) < MAX_EXAMPLES:
                examples["too_long"].append(f"{row['id']} ({row['source']}): {length} tokens")
        else:
            kept.append(row)
            kept_lengths.append(length)

    split = split_rows(
        kept,
        params.eval_fraction,
        params.validation_fraction,
        params.eval_labels,
        params.seed,
        params.keep_split,
    )
    by_split = split.labels

    read = sum(len(rows) for rows in sources.values())
    report = {
        "params": asdict(params),
        "inputs": {name: len(sources[name]) for name in sorted(sources)},
        "read": read,
        "kept": len(kept),
        "dropped": {reason: len(dropped[reason]) for reason in REASONS},
        "dropped_by_source": {
            reason: _counts(dropped[reason], "source") for reason in REASONS if dropped[reason]
        },
        "kept_by_source": _counts(kept, "source"),
        "kept_by_kind": _counts(kept, "kind"),
        "kept_by_split": _counts(kept, "split"),
        "kept_by_source_kind_split": {
            f"{s}/{k}/{p}": n
            for (s, k, p), n in sorted(
                Counter((r["source"], r["kind"], r["split"]) for r in kept).items()
            )
        },
        "labels": {**{s: len(by_split[s]) for s in SPLITS}, "fixed_eval": len(split.fixed_eval)},
        "eval_labels_not_found": sorted(set(params.eval_labels or []) - by_split["eval"]),
        "split_changed": split.changed,
        "tokens": {
            "max": max(kept_lengths, default=0),
            "mean": round(sum(kept_lengths) / len(kept_lengths), 1) if kept else 0.0,
        },
        "examples": dict(examples),
    }
    assert read == len(kept) + sum(report["dropped"].values())
    return kept, report


def report_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Filter report",
        "",
        f"Read {report['read']} dialogs, kept {report['kept']} "
        f"(max {report['tokens']['max']} tokens, mean {report['tokens']['mean']}).",
        "",
        "| dropped because | rows |",
        "| --- | --- |",
    ]
    lines += [f"| {reason} | {n} |" for reason, n in report["dropped"].items()]
    lines += ["", "| source / kind / split | kept |", "| --- | --- |"]
    lines += [f"| {key} | {n} |" for key, n in report["kept_by_source_kind_split"].items()]
    lines += [
        "",
        f"Labels (disjoint): {report['labels']['train']} train, "
        f"{report['labels']['validation']} validation, {report['labels']['eval']} eval; "
        f"{report['labels']['fixed_eval']} fixed to eval by their source.",
        "",
    ]
    for reason, items in report["examples"].items():
        lines += [f"Examples ({reason}):", *[f"- {item}" for item in items], ""]
    return "\n".join(lines)


def run(params: FilterParams, inputs: dict[str, Path], workdir: Path, info: dict) -> None:
    names = sorted(name for name in inputs if name.startswith("data"))
    if not names or "model" not in inputs:
        raise SystemExit("filter: needs --input model=DIR and at least one --input data...=DIR")
    files = {name: Path(inputs[name]) / "dialogs.parquet" for name in names}
    sources = {name: read_rows(files[name]) for name in names}
    from pipeline.mechanism.modeling import load_tokenizer  # torch: not at workflow parse time

    tokenizer = load_tokenizer(inputs["model"])
    kept, report = filter_dialogs(sources, files, tokenizer, params)
    write_dialogs(kept, workdir / "dialogs.parquet")
    for split in SPLITS:
        write_dialogs([row for row in kept if row["split"] == split], workdir / f"{split}.parquet")
    (workdir / "filter_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (workdir / "filter_report.md").write_text(report_markdown(report))
    info.update(
        {key: report[key] for key in ("read", "kept", "dropped", "kept_by_split", "labels")}
    )
    log.info("kept %d of %d dialogs; dropped %s", report["kept"], report["read"], report["dropped"])


if __name__ == "__main__":
    stage.main("filter", FilterParams, run)
