"""What the curate stage gets back: one JSON item per call, checked, turned into read dialogs.

Responses are parsed with ``json.loads`` (a fenced block is unwrapped) and validated against
``ITEM_SCHEMA``; nothing is ever evaluated as code. A good item becomes one read dialog per dialog
turn and kind, under a label made from the family and the model's own name for the control.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

from pipeline.curation.filters import is_refusal, normalise
from pipeline.curation.params import CurateParams

PARSE_REASONS = ("request_failed", "refusal", "empty", "truncated", "malformed_json", "schema")
"""Why a call gives no item (``request_failed``: it failed after every retry)."""

_TEXT = {"type": "string", "minLength": 1, "pattern": r"\S"}


def _pairs(a: str, b: str) -> dict[str, Any]:
    return {
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "object",
            "properties": {a: _TEXT, b: _TEXT},
            "required": [a, b],
            "additionalProperties": False,
        },
    }


ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": _TEXT,
        "control": _TEXT,
        "acknowledgement": _TEXT,
        "dialogs": _pairs("user", "assistant"),
        "qa": _pairs("question", "answer"),
    },
    "required": ["label", "control", "acknowledgement", "dialogs", "qa"],
    "additionalProperties": False,
}
# What structured-output endpoints accept everywhere (OpenAI strict mode rejects some keywords);
# the full ITEM_SCHEMA is still enforced locally on every response.
_SENDABLE = {"type", "properties", "required", "additionalProperties", "items"}


def sendable_schema(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {
            k: (
                sendable_schema(v)
                if k != "properties"
                else {n: sendable_schema(s) for n, s in v.items()}
            )
            for k, v in schema.items()
            if k in _SENDABLE
        }
    return schema


_FENCE = re.compile(r"^```(?:json)?\s*\n(.*)\n```$", re.DOTALL)
_VALIDATOR = jsonschema.Draft202012Validator(ITEM_SCHEMA)


def parse_item(response: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None, str]:
    """(item, None, '') or (None, reason, detail) for one cached response; JSON only, never code."""
    if response.get("refusal"):
        return None, "refusal", str(response["refusal"])
    content = (response.get("content") or "").strip()
    if not content:
        return None, "empty", ""
    fenced = _FENCE.match(content)
    try:
        item = json.loads(fenced.group(1) if fenced else content)
    except ValueError as exc:
        if response.get("finish_reason") == "length":
            return None, "truncated", str(exc)
        return None, "refusal" if is_refusal(content) else "malformed_json", content[:200]
    error = next(iter(sorted(_VALIDATOR.iter_errors(item), key=lambda e: list(e.path))), None)
    if error is not None:
        where = "/".join(str(p) for p in error.path) or "<root>"
        return None, "schema", f"{where}: {error.message[:200]}"
    return item, None, ""


def item_rows(item: dict[str, Any], label: str, params: CurateParams) -> list[dict[str, Any]]:
    """The read dialogs of one generated control, one per dialog turn and kind."""
    control, ack = item["control"].strip(), item["acknowledgement"].strip()
    qa = [
        {"question": p["question"].strip(), "answer": p["answer"].strip()}
        for p in item["qa"][: params.qa_per_sample]
    ]
    rows = []
    for kind in params.kinds:
        if kind == "control":
            rows.append((kind, [{"role": "user", "content": control}], 0))
            continue
        for turn in item["dialogs"][: params.dialogs_per_sample]:
            user = {"role": "user", "content": turn["user"].strip()}
            reply = {"role": "assistant", "content": turn["assistant"].strip()}
            if kind == "system":
                rows.append((kind, [{"role": "system", "content": control}, user, reply], 1))
            else:
                head = [{"role": "user", "content": control}, {"role": "assistant", "content": ack}]
                rows.append((kind, head + [user] + ([reply] if kind != "stimulus" else []), 2))
    source = f"{CurateParams.MIX_NAME}:{params.model}"
    return [
        dict(label=label, kind=k, messages=m, n_masked_turns=n, qa=qa, source=source, split="train")
        for k, m, n in rows
    ]


def make_label(family: str, raw: str, control: str, used: dict[str, str]) -> str:
    """``family-slug``; a slug already naming a different control gets -2, -3, ..."""
    slug = "-".join(normalise(raw).replace("_", " ").split()[:6]) or "item"
    base = slug if slug.startswith(f"{family}-") else f"{family}-{slug}"
    label, n = base, 1
    while used.get(label, control) != control:
        n += 1
        label = f"{base}-{n}"
    used[label] = control
    return label
