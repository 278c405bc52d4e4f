"""Filters for generated dialogs: schema, exact and near duplicates, refusals, length.

Near duplicates: texts are normalised (lowercase, punctuation dropped, whitespace collapsed) and
cut into word n-gram shingles (``shingle_size`` words; a text shorter than that is one shingle).
Two texts are near duplicates when the Jaccard similarity of their shingle sets reaches
``near_duplicate_threshold``. Candidates are found through an inverted index from shingle to
earlier kept texts, then compared exactly, so the result is exact Jaccard (no MinHash error) at
close to linear cost on real data, where most texts share few shingles. The earlier text wins.

Two passes use it: controls (the first turn of a row, which is the control in every kind), so
that two labels describing nearly the same persona or goal collapse to the first; and whole
dialogs, which catches rephrased copies of one stimulus under one control. Exact duplicates
(equal content hash) and schema checks reuse pipeline/data/schema.py. Kept rows stay unsplit
(``train``, as written): the filter stage alone splits them (pipeline/data/splits.py), with every
other source, so a curated label is never drawn into eval twice.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.core.stage import bounded
from pipeline.data.filter import MAX_EXAMPLES
from pipeline.data.schema import DataError, validate_record

REASONS = (
    "invalid",
    "duplicate",
    "refusal",
    "too_short",
    "too_long",
    "near_duplicate_control",
    "near_duplicate",
)

# Phrases with which chat models decline or break character. Matched case-insensitively on text
# whose curly apostrophes were straightened.
REFUSAL_PATTERNS = [
    r"\bas an ai\b",
    r"\bas a (?:large )?language model\b",
    r"\bi(?:'m| am) (?:sorry|afraid),? but i (?:can't|cannot|won't|am unable|am not able)",
    r"\bi (?:can't|cannot|won't|am unable to|am not able to) "
    r"(?:help|assist|comply|fulfil|fulfill|provide|create|generate|write) "
    r"(?:you )?(?:with )?(?:that|this|such|your request)",
    r"\bi(?:'m| am) not (?:able|allowed|permitted) to (?:help|assist|comply|do that)",
    r"\bi must (?:decline|refuse)\b",
    r"\bagainst (?:my|openai's) (?:guidelines|policies|content policy)\b",
]
_REFUSAL = re.compile("|".join(f"(?:{p})" for p in REFUSAL_PATTERNS), re.IGNORECASE)
_PUNCT = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")


@dataclass
class CurationFilters:
    """Filters applied to generated dialogs before they are written."""

    min_chars: int = bounded(2, minimum=0)
    """Shortest message content or QA text kept, in characters (after stripping)."""
    max_chars: int = bounded(6000, minimum=1)
    """Longest dialog kept, in characters over all its messages (tokens are the filter stage's)."""
    near_duplicate_threshold: float = bounded(0.8, exclusiveMinimum=0, maximum=1)
    """Jaccard similarity of word-shingle sets at or above which a later text is a duplicate."""
    shingle_size: int = bounded(3, minimum=1)
    """Words per shingle for near-duplicate detection."""


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.search(text.replace("\u2019", "'")))


def normalise(text: str) -> str:
    return _SPACE.sub(" ", _PUNCT.sub(" ", text.lower())).strip()


def shingles(text: str, size: int) -> frozenset[str]:
    words = normalise(text).split()
    if len(words) <= size:
        return frozenset([" ".join(words)])
    return frozenset(" ".join(words[i : i + size]) for i in range(len(words) - size + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def near_duplicates(texts: list[str], threshold: float, size: int) -> list[int | None]:
    """For each text, the index of an earlier kept text it nearly duplicates, else None."""
    index: dict[str, list[int]] = defaultdict(list)
    sets: dict[int, frozenset[str]] = {}
    result: list[int | None] = []
    for i, text in enumerate(texts):
        mine = shingles(text, size)
        shared = Counter(j for s in mine for j in index[s])
        match = None
        for j, overlap in shared.most_common():
            # Jaccard <= overlap / max(|a|, |b|) <= overlap / |a|; candidates come by falling
            # overlap, so once that bound is under the threshold no later one can reach it.
            if overlap / len(mine) < threshold:
                break
            if jaccard(mine, sets[j]) >= threshold:
                match = j
                break
        result.append(match)
        if match is None:
            sets[i] = mine
            for s in mine:
                index[s].append(i)
    return result


def _texts(row: dict[str, Any]) -> list[str]:
    return [m["content"] for m in row["messages"]] + [
        t for p in row["qa"] for t in (p["question"], p["answer"])
    ]


def filter_generated(
    rows: list[dict[str, Any]], filters: CurationFilters, file: str = "<generated>"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Kept rows (unsplit: the filter stage splits them) and a report of drops by reason."""
    dropped: dict[str, int] = Counter()
    examples: dict[str, list[str]] = defaultdict(list)

    def drop(reason: str, what: str) -> None:
        dropped[reason] += 1
        if len(examples[reason]) < MAX_EXAMPLES:
            examples[reason].append(what[:300])

    valid, seen = [], set()
    for index, row in enumerate(rows):
        try:
            row = validate_record(row, file, index)
        except DataError as exc:
            drop("invalid", str(exc))
            continue
        if row["id"] in seen:
            drop("duplicate", row["id"])
            continue
        seen.add(row["id"])
        texts = _texts(row)
        refused = next((t for t in texts if is_refusal(t)), None)
        if refused is not None:
            drop("refusal", f"{row['label']}: {refused}")
        elif min(len(t.strip()) for t in texts) < filters.min_chars:
            drop("too_short", f"{row['label']}: a text under {filters.min_chars} characters")
        elif sum(len(m["content"]) for m in row["messages"]) > filters.max_chars:
            drop("too_long", f"{row['label']}: over {filters.max_chars} characters")
        else:
            valid.append(row)

    labels = list(dict.fromkeys(row["label"] for row in valid))
    control = {}
    for row in valid:
        control.setdefault(row["label"], row["messages"][0]["content"])
    twins = near_duplicates(
        [control[label] for label in labels],
        filters.near_duplicate_threshold,
        filters.shingle_size,
    )
    copied = {label: labels[j] for label, j in zip(labels, twins, strict=True) if j is not None}
    distinct = []
    for row in valid:
        if row["label"] in copied:
            drop("near_duplicate_control", f"{row['label']} ~ {copied[row['label']]}")
        else:
            distinct.append(row)

    whole = ["\n".join(f"{m['role']}: {m['content']}" for m in row["messages"]) for row in distinct]
    twins = near_duplicates(whole, filters.near_duplicate_threshold, filters.shingle_size)
    kept = []
    for row, twin in zip(distinct, twins, strict=True):
        if twin is None:
            kept.append(row)
        else:
            drop("near_duplicate", f"{row['id']} ~ {distinct[twin]['id']}")

    report = {
        "filters": asdict(filters),
        "read": len(rows),
        "kept": len(kept),
        "dropped": {reason: dropped[reason] for reason in REASONS},
        "kept_by_kind": dict(sorted(Counter(r["kind"] for r in kept).items())),
        "labels": len({r["label"] for r in kept}),
        "examples": dict(examples),
    }
    assert report["read"] == report["kept"] + sum(report["dropped"].values())
    return kept, report
