"""The LatentQA rows an evaluation scores, refused where training shares any of them."""

from __future__ import annotations

from pathlib import Path

from pipeline.data.schema import read_dialogs
from pipeline.evaluation.items import dialog_key


def latentqa_rows_to_score(inputs: dict[str, Path], rows: list[dict], source: str) -> list[dict]:
    """The LatentQA rows an evaluation scores: the imported evaluation split (``latentqa``
    input) if given, else the filtered data's rows of ``source``; eval split only, leak-checked."""
    if "latentqa" in inputs:
        latentqa_rows = read_dialogs(inputs["latentqa"] / "dialogs.parquet")
    else:
        latentqa_rows = [r for r in rows if r["source"] == source]
    return latentqa_eval_rows(rows, latentqa_rows)


def latentqa_eval_rows(rows, latentqa_rows) -> list[dict]:
    """The imported LatentQA rows of the eval split, refused if training data shares any of them.

    A shared dialog, or a shared (question, answer) pair, would let the decoder answer from
    memory; the run stops rather than report such a figure.
    """
    train = [r for r in rows if r["split"] == "train"]
    train_dialogs = {dialog_key(r["messages"], r["n_masked_turns"]) for r in train}
    train_pairs = {(qa["question"], qa["answer"]) for r in train for qa in r["qa"]}
    chosen = [r for r in latentqa_rows if r["split"] == "eval"]
    for row in chosen:
        shared = dialog_key(row["messages"], row["n_masked_turns"]) in train_dialogs
        pairs = [(q["question"], q["answer"]) for q in row["qa"]]
        pair = next((p for p in pairs if p in train_pairs), None)
        if shared or pair:
            what = "its dialog" if shared else f"the QA pair {pair!r}"
            raise SystemExit(
                f"evaluate: LatentQA eval row {row['id']} ({row['label']}): {what} also "
                "appears in the training data; evaluating on it would measure memory"
            )
    return chosen
