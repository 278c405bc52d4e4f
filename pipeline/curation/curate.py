"""Stage `curate`: read dialogs written by a chat model behind any OpenAI-compatible endpoint.

For each family (persona, goal, scenario) a versioned prompt template in ``data/curation/`` asks
the model for one control with its acknowledgement, a few dialog turns under it and QA pairs, as
one JSON object (structured outputs where the endpoint has them). Responses are parsed with
``json.loads`` and validated against a JSON Schema; nothing is ever evaluated as code. Every
completed call is cached on disk (pipeline/curation/request_cache.py) before it is parsed, so a
rerun or a resumed run repeats no completed call, and a bad response stays dropped rather than
re-bought.

Output: ``dialogs.parquet`` (source ``openai:<model>``, unsplit: every row ``train``, the filter
stage splits them with the other sources), and
``curate_report.json`` / ``curate_report.md`` (calls, cache hits, retries, tokens, cost, drops).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import string
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import jsonschema
import yaml
from tqdm import tqdm

from pipeline.core import stage
from pipeline.core.errors import InputError
from pipeline.core.stage import bounded
from pipeline.curation.filters import CurationFilters, filter_generated, is_refusal, normalise
from pipeline.curation.openai_backend import ChatBackend, RequestFailed, ResponseFormat, cost_usd
from pipeline.curation.request_cache import RequestCache, request_key
from pipeline.data.schema import ControlKind, DataError, Family, write_dialogs

log = logging.getLogger("pipeline.curation.curate")

REPO_DIR = Path(__file__).resolve().parents[2]
FAMILY_FILES = {"persona": "personas.yaml", "goal": "goals.yaml", "scenario": "scenarios.yaml"}
TEMPLATE_FIELDS = {"family", "version", "system", "user", "themes"}
PARSE_REASONS = ("request_failed", "refusal", "empty", "truncated", "malformed_json", "schema")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")
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


@dataclass
class CurateParams:
    """Which endpoint writes the data, how much, and how it is filtered."""

    MIX_NAME: ClassVar[str] = "openai"
    """What ``train.mix`` calls this stage's rows (their ``source`` up to any colon)."""

    base_url: str = "https://api.openai.com/v1"
    """OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000/v1 for vLLM or llama.cpp)."""
    model: str = "gpt-4o-mini"
    """Model name sent with every request; also names the source (``openai:<model>``)."""
    api_key_env: str = "OPENAI_API_KEY"
    """NAME of the environment variable holding the key ('' for servers without auth)."""
    families: list[Family] = field(default_factory=lambda: list(FAMILY_FILES))
    """Control families to generate: persona, goal, scenario."""
    samples_per_family: int = bounded(20, minimum=1)
    """Calls (one control each) per family."""
    dialogs_per_sample: int = bounded(3, minimum=1)
    """Dialog turns requested per control (one read dialog per turn and kind)."""
    qa_per_sample: int = bounded(3, minimum=1)
    """QA pairs requested per control."""
    kinds: list[ControlKind] = field(default_factory=lambda: ["system", "stimulus_completion"])
    """Read dialog kinds built from each control: system, stimulus_completion, stimulus, control."""
    temperature: float | None = 1.0
    """Sampling temperature (null omits it, for models that reject it)."""
    top_p: float | None = None
    """Nucleus sampling mass (null omits it)."""
    max_tokens: int = bounded(1500, minimum=1)
    """Output-token limit per call."""
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    """Request field carrying the limit: max_tokens, or max_completion_tokens (newer OpenAI)."""
    seed: int | None = 0
    """Per-call seed is seed + sample index (null omits it); part of the cache key."""
    response_format: ResponseFormat = "json_schema"
    """Strictest format to ask for: json_schema, json_object or none (falls back on 400/422)."""
    concurrency: int = bounded(8, minimum=1)
    """Requests in flight at once."""
    timeout_s: float = bounded(120.0, exclusiveMinimum=0)
    """Wall-clock limit of one HTTP attempt, in seconds."""
    max_attempts: int = bounded(6, minimum=1)
    """Attempts per call (first try included) on 429, 5xx, timeouts and connection errors."""
    backoff_base_s: float = bounded(1.0, minimum=0)
    """First retry waits about this long; the wait doubles each retry (jittered)."""
    backoff_max_s: float = bounded(60.0, minimum=0)
    """Longest backoff between attempts (a longer Retry-After is still honoured)."""
    max_failed_requests: int = bounded(0, minimum=0)
    """Calls allowed to fail after all retries before the stage errors (0: rerun retries them)."""
    prices: dict[str, dict[str, float]] | None = None
    """Optional {model: {input: USD per 1M tokens, output: USD per 1M tokens}} for the report."""
    cache_dir: str = "results/cache/openai"
    """Request cache folder (relative to the working directory); outside the store on purpose."""
    templates_dir: str = "data/curation"
    """Prompt templates; relative paths start at the repository root."""
    filters: CurationFilters = field(default_factory=CurationFilters)
    """Filters applied to the generated dialogs."""

    def __post_init__(self) -> None:
        if not self.families or not self.kinds:
            raise stage.ParamsError("curate: families and kinds must each name at least one")
        if self.api_key_env and not _ENV_NAME.fullmatch(self.api_key_env):
            # Not echoed: a key pasted here by mistake must not reach the log.
            raise stage.ParamsError(
                "curate: api_key_env must be the NAME of an environment "
                "variable (letters, digits, _), not a key"
            )


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


def sampling_of(params: CurateParams, index: int) -> dict[str, Any]:
    sampling: dict[str, Any] = {params.max_tokens_field: params.max_tokens}
    if params.temperature is not None:
        sampling["temperature"] = params.temperature
    if params.top_p is not None:
        sampling["top_p"] = params.top_p
    if params.seed is not None:
        sampling["seed"] = params.seed + index
    return sampling


async def fetch(requests: list[dict[str, Any]], backend: ChatBackend, cache: RequestCache):
    """Send every request; each result is cached the moment it completes. Returns failures."""
    failures: dict[str, str] = {}
    schema = sendable_schema(ITEM_SCHEMA)

    async def one(request):
        try:
            done = await backend.complete(request["messages"], request["sampling"], schema, "item")
        except RequestFailed as exc:
            return request["key"], exc
        cache.put(
            request["key"],
            {
                k: request[k]
                for k in ("model", "messages", "sampling", "template_version", "sample_index")
            },
            done.to_json(),
        )
        return request["key"], None

    tasks = [asyncio.ensure_future(one(r)) for r in requests]
    try:
        with tqdm(total=len(tasks), desc="curate", unit="call", dynamic_ncols=True) as bar:
            for next_done in asyncio.as_completed(tasks):
                key, error = await next_done
                if error is not None:
                    failures[key] = str(error)
                bar.update(1)
                bar.set_postfix(retries=backend.stats.retries, failed=len(failures))
    finally:
        for task in tasks:
            task.cancel()
        await backend.aclose()
    return failures


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


def run(params: CurateParams, inputs: dict[str, Path], workdir: Path, info: dict) -> None:
    for noisy in ("httpx", "httpx2", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    requests = build_requests(params)
    cache = RequestCache(params.cache_dir)
    pending = [r for r in requests if cache.get(r["key"]) is None]
    log.info(
        "%d calls: %d cached, %d to send", len(requests), len(requests) - len(pending), len(pending)
    )
    failures: dict[str, str] = {}
    stats: dict[str, Any] = {}
    if pending:
        backend = ChatBackend(
            params.base_url,
            params.model,
            params.api_key_env,
            concurrency=params.concurrency,
            timeout_s=params.timeout_s,
            max_attempts=params.max_attempts,
            backoff_base_s=params.backoff_base_s,
            backoff_max_s=params.backoff_max_s,
            response_format=params.response_format,
            seed=params.seed or 0,
        )
        failures = asyncio.run(fetch(pending, backend, cache))
        stats = asdict(backend.stats)
    if len(failures) > params.max_failed_requests:
        example = next(iter(failures.values()))
        raise RuntimeError(
            f"curate: {len(failures)} of {len(pending)} calls failed after retries "
            f"(e.g. {example}); completed calls are cached, rerun to retry the rest"
        )

    fresh = {r["key"] for r in pending} - set(failures)
    drops: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    tokens = {"fresh": [0, 0], "cached": [0, 0]}
    used: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    for request in requests:
        entry = cache.get(request["key"])
        if entry is None:
            drops["request_failed"] += 1
            continue
        response = entry["response"]
        bucket = tokens["fresh" if request["key"] in fresh else "cached"]
        bucket[0] += response.get("prompt_tokens", 0)
        bucket[1] += response.get("completion_tokens", 0)
        item, reason, detail = parse_item(response)
        if item is None:
            drops[reason] += 1
            examples.setdefault(reason, [])
            if len(examples[reason]) < 5:
                examples[reason].append(f"{request['family']}#{request['sample_index']}: {detail}")
            continue
        label = make_label(request["family"], item["label"], item["control"].strip(), used)
        rows.extend(item_rows(item, label, params))

    if not rows:
        first = next((r for r in requests if cache.get(r["key"]) is not None), None)
        where = f"e.g. {cache.path(first['key'])}" if first else f"in {params.cache_dir}"
        raise InputError(
            f"no usable dialog in {len(requests)} responses (dropped: "
            f"{dict(sorted(drops.items()))}; {where}: {next(iter(examples.values()), [''])[0]})"
        )
    kept, filter_report = filter_generated(rows, params.filters, "<generated>")
    written = write_dialogs(kept, workdir / "dialogs.parquet")
    cost = {k: cost_usd(params.model, *v, params.prices) for k, v in tokens.items()}
    report = {
        "model": params.model,
        "source": f"{CurateParams.MIX_NAME}:{params.model}",
        "requests": len(requests),
        "cached_before_run": len(requests) - len(pending),
        "sent": len(pending),
        "failed": len(failures),
        "backend": stats,
        "responses_dropped": {reason: drops[reason] for reason in PARSE_REASONS},
        "response_examples": examples,
        "tokens": {k: {"prompt": v[0], "completion": v[1]} for k, v in tokens.items()},
        "cost_usd": cost,
        "rows_generated": len(rows),
        "filters": filter_report,
        "rows_written": len(written),
    }
    (workdir / "curate_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (workdir / "curate_report.md").write_text(report_markdown(report))
    info.update(
        {
            k: report[k]
            for k in (
                "requests",
                "cached_before_run",
                "sent",
                "failed",
                "rows_written",
                "tokens",
                "cost_usd",
            )
        }
    )
    log.info(
        "wrote %d dialogs from %d calls (%d sent now); responses dropped %s; rows dropped %s",
        len(written),
        len(requests),
        len(pending),
        dict(drops),
        filter_report["dropped"],
    )


def report_markdown(report: dict[str, Any]) -> str:
    t = report["tokens"]
    lines = [
        f"# Curation report ({report['source']})",
        "",
        f"{report['requests']} calls: {report['cached_before_run']} from the cache, "
        f"{report['sent']} sent, {report['failed']} failed.",
        f"Tokens sent now: {t['fresh']['prompt']} in / {t['fresh']['completion']} out; "
        f"from the cache: {t['cached']['prompt']} in / {t['cached']['completion']} out.",
        f"Cost (USD, from the price table): {report['cost_usd']}.",
        "",
        "| response dropped because | calls |",
        "| --- | --- |",
        *[f"| {r} | {n} |" for r, n in report["responses_dropped"].items()],
        "",
        "| dialog dropped because | rows |",
        "| --- | --- |",
        *[f"| {r} | {n} |" for r, n in report["filters"]["dropped"].items()],
        "",
        f"Wrote {report['rows_written']} of {report['rows_generated']} dialogs; "
        f"{report['filters']['labels']} labels (the filter stage splits them).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    stage.main("curate", CurateParams, run)
