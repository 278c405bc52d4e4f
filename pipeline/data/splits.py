"""The train / validation / eval split, disjoint by label: its one owner is the filter stage.

Data stages write their rows as ``train`` and leave the split to the filter stage, which calls
:func:`split_rows` once over every kept row. A source may only fix labels to ``eval`` (the
LatentQA import, the statement pairs held out for the probes): those stay eval, whole labels.
Curated dialogs come unsplit like the rest, so no label is drawn into eval twice.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import Any

from pipeline.data.schema import CONTROL_KINDS, SPLITS


def _rank(label: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{label}".encode()).hexdigest()


def _share(fraction: float, n: int) -> int:
    share = round(fraction * n)
    return 1 if fraction > 0 and share == 0 and n > 1 else share


def assign_splits(
    labels: set[str],
    fixed_eval: set[str],
    eval_fraction: float,
    eval_labels: list[str] | None,
    seed: int,
    validation_fraction: float = 0.0,
) -> dict[str, str]:
    """label -> split. ``fixed_eval`` labels are eval; the rest by explicit list or by hash rank,
    then a ``validation_fraction`` share of the remaining labels is validation.

    Ranking labels by a seeded hash and taking the first ``round(fraction * n)`` gives an exact
    share and a split that depends only on the label set and the seed; the eval labels are the
    same whatever the validation share.
    """
    free = sorted(labels - fixed_eval)
    ranked = sorted(free, key=lambda label: _rank(label, seed))
    if eval_labels is not None:
        chosen = set(eval_labels) & set(free)
    else:
        n_eval = _share(eval_fraction, len(free))
        if eval_fraction < 1 and n_eval == len(free) and len(free) > 1:
            n_eval -= 1
        chosen = set(ranked[:n_eval])
    rest = [label for label in ranked if label not in chosen]
    n_val = min(_share(validation_fraction, len(free)), max(len(rest) - 1, 0))
    validation = set(rest[:n_val])
    return {
        label: "eval"
        if label in fixed_eval or label in chosen
        else ("validation" if label in validation else "train")
        for label in labels
    }


@dataclass
class SplitSummary:
    """What :func:`split_rows` did, for the filter report."""

    labels: dict[str, set[str]]
    """The labels of each split (disjoint)."""
    fixed_eval: set[str]
    """Labels of dialogs under a control that their source put in eval and that stayed there."""
    changed: int
    """Dialogs under a control whose split differs from the one their source wrote."""


def split_rows(
    rows: list[dict[str, Any]],
    eval_fraction: float,
    validation_fraction: float,
    eval_labels: list[str] | None,
    seed: int,
    keep_split: bool,
) -> SplitSummary:
    """Set every row's ``split`` in place, by label, and return what was done.

    Dialogs under a control are split by label into train / validation / eval. Texts read for
    what they say (the reading curriculum) are evaluated elsewhere: a label its source put in eval
    stays there (with every row of that label, whatever its source: a relation fact held out of
    the statements is held out of the relation questions too), the others are split by label
    into train / validation, so that every kind of question has validation items to choose
    settings (a read layer) on.
    """
    texts = [row for row in rows if row["kind"] not in CONTROL_KINDS]
    text_splits = assign_splits(
        {row["label"] for row in texts},
        {row["label"] for row in texts if row["split"] == "eval"},
        0.0,
        None,
        seed,
        validation_fraction,
    )
    for row in texts:
        row["split"] = text_splits[row["label"]]
    controlled = [row for row in rows if row["kind"] in CONTROL_KINDS]
    fixed_eval = (
        {row["label"] for row in controlled if row["split"] == "eval"} if keep_split else set()
    )
    splits = assign_splits(
        {row["label"] for row in controlled},
        fixed_eval,
        eval_fraction,
        eval_labels,
        seed,
        validation_fraction,
    )
    changed = 0
    for row in controlled:
        changed += row["split"] != splits[row["label"]]
        row["split"] = splits[row["label"]]
    by_split = {s: {row["label"] for row in rows if row["split"] == s} for s in SPLITS}
    for a, b in itertools.combinations(SPLITS, 2):
        assert not by_split[a] & by_split[b], f"splits {a} and {b} share labels"
    return SplitSummary(by_split, fixed_eval, changed)
