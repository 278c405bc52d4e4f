"""LatentQA training data must not contain the evaluation split: checked when the workflow starts.

A row of the published format is one item of a kind file (``control.json``, ``stimulus.json``,
...); two rows are the same when their dialog fields (the texts the read dialog is built from) are
equal, whatever their labels. Files are read with the importer's own checks, so a malformed file
is reported here with its name as well.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.errors import InputError
from pipeline.core.store import canonical_json
from pipeline.data.import_latentqa import FIELDS, load_json


class DataLeak(InputError):
    """Training rows that are also in the evaluation split."""


def _rows(path: Path, kind: str) -> dict[str, int]:
    """Dialog-field fingerprint -> index of the first item with it."""
    data = load_json(path)
    rows: dict[str, int] = {}
    for index, item in enumerate(data if isinstance(data, list) else []):
        if isinstance(item, dict):
            rows.setdefault(canonical_json({f: item.get(f) for f in FIELDS[kind]}), index)
    return rows


def check_disjoint(train_dir: str | Path, eval_dir: str | Path) -> None:
    """Raise :class:`InputError` when any training row also appears in the evaluation split."""
    train_dir, eval_dir = Path(train_dir), Path(eval_dir)
    for kind in FIELDS:
        train_file, eval_file = train_dir / f"{kind}.json", eval_dir / f"{kind}.json"
        if not (train_file.exists() and eval_file.exists()):
            continue
        held_out = _rows(eval_file, kind)
        shared = [
            (i, held_out[key]) for key, i in _rows(train_file, kind).items() if key in held_out
        ]
        if shared:
            first, other = shared[0]
            raise DataLeak(
                f"{train_file}: {len(shared)} rows also appear in the evaluation split "
                f"{eval_file} (e.g. record {first} = record {other} there); the evaluation split "
                "must never be trained on: remove them from the training data"
            )
