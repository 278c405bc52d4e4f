"""What the curate stage asks: versioned prompt templates, rendered into one request per sample.

A template (``data/curation/<family>s.yaml``) gives a system prompt, a user prompt with
``string.Template`` placeholders (no attribute access, no code) and the themes the samples cycle
through. Each request carries its cache key, over the model, messages, sampling, response format,
item schema, template version and sample index, so a changed template or setting asks anew.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.curation.params import FAMILY_FILES, CurateParams
from pipeline.curation.request_cache import request_key
from pipeline.curation.responses import ITEM_SCHEMA
from pipeline.data.schema import DataError

REPO_DIR = Path(__file__).resolve().parents[2]
TEMPLATE_FIELDS = {"family", "version", "system", "user", "themes"}


@dataclass(frozen=True)
class Template:
    family: str
    version: str
    system: str
    user: str
    themes: tuple[str, ...]


def resolve(path: str) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() or candidate.exists() else REPO_DIR / candidate


def load_template(path: Path, family: str) -> Template:
    """One prompt template; errors name the file and the field."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(path, None, "<file>", f"cannot read the template: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError(path, None, "<file>", "expected a mapping")
    unknown, missing = sorted(set(data) - TEMPLATE_FIELDS), sorted(TEMPLATE_FIELDS - set(data))
    if unknown:
        raise DataError(
            path, None, unknown[0], f"unknown field; expected {sorted(TEMPLATE_FIELDS)}"
        )
    if missing:
        raise DataError(path, None, missing[0], "missing")
    if data["family"] != family:
        raise DataError(path, None, "family", f"{data['family']!r} is not {family!r}")
    for name in ("system", "user"):
        if not isinstance(data[name], str) or not data[name].strip():
            raise DataError(path, None, name, "expected non-empty text")
    themes = data["themes"]
    if not isinstance(themes, list) or not themes or not all(isinstance(t, str) for t in themes):
        raise DataError(path, None, "themes", "expected a non-empty list of strings")
    if not isinstance(data["version"], int | str) or isinstance(data["version"], bool):
        raise DataError(path, None, "version", "expected an integer or a string")
    template = Template(family, str(data["version"]), data["system"], data["user"], tuple(themes))
    try:
        render(template, 0, 1, 1)
    except (KeyError, ValueError) as exc:
        raise DataError(path, None, "user", f"bad placeholder: {exc}") from exc
    return template


def render(template: Template, index: int, n_dialogs: int, n_qa: int) -> list[dict[str, str]]:
    """The chat messages of sample ``index`` (string.Template: no attribute access, no code)."""
    theme = template.themes[index % len(template.themes)]
    values = {
        "theme": theme,
        "variant": index // len(template.themes) + 1,
        "n_dialogs": n_dialogs,
        "n_qa": n_qa,
    }
    user = string.Template(template.user).substitute(values)
    return [
        {"role": "system", "content": template.system.strip()},
        {"role": "user", "content": user.strip()},
    ]


def sampling_of(params: CurateParams, index: int) -> dict[str, Any]:
    sampling: dict[str, Any] = {params.max_tokens_field: params.max_tokens}
    if params.temperature is not None:
        sampling["temperature"] = params.temperature
    if params.top_p is not None:
        sampling["top_p"] = params.top_p
    if params.seed is not None:
        sampling["seed"] = params.seed + index
    return sampling


def build_requests(params: CurateParams) -> list[dict[str, Any]]:
    directory = resolve(params.templates_dir)
    requests = []
    for family in params.families:
        template = load_template(directory / FAMILY_FILES[family], family)
        for index in range(params.samples_per_family):
            messages = render(template, index, params.dialogs_per_sample, params.qa_per_sample)
            sampling = sampling_of(params, index)
            keyed = dict(sampling, response_format=params.response_format, schema=ITEM_SCHEMA)
            version = f"{family}:{template.version}"
            requests.append(
                dict(
                    key=request_key(params.model, messages, keyed, version, index),
                    family=family,
                    model=params.model,
                    messages=messages,
                    sampling=sampling,
                    template_version=version,
                    sample_index=index,
                )
            )
    return requests
