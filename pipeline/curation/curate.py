"""Stage `curate`: read dialogs written by a chat model behind any OpenAI-compatible endpoint.

For each family (persona, goal, scenario) a versioned prompt template in ``data/curation/`` asks
the model for one control with its acknowledgement, a few dialog turns under it and QA pairs, as
one JSON object (structured outputs where the endpoint has them). This module sends the calls and
writes the result; the requests are built in pipeline/curation/prompts.py, and responses are
parsed with ``json.loads`` and validated against a JSON Schema in pipeline/curation/responses.py
(nothing is ever evaluated as code). Every completed call is cached on disk
(pipeline/curation/request_cache.py) before it is parsed, so a rerun or a resumed run repeats no
completed call, and a bad response stays dropped rather than re-bought.

Output: ``dialogs.parquet`` (source ``openai:<model>``, unsplit: every row ``train``, the filter
stage splits them with the other sources), and
``curate_report.json`` / ``curate_report.md`` (calls, cache hits, retries, tokens, cost, drops).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.core import stage
from pipeline.core.errors import InputError
from pipeline.curation.filters import filter_generated
from pipeline.curation.openai_backend import ChatBackend, RequestFailed, cost_usd
from pipeline.curation.params import CurateParams
from pipeline.curation.prompts import build_requests
from pipeline.curation.request_cache import RequestCache
from pipeline.curation.responses import (
    ITEM_SCHEMA,
    PARSE_REASONS,
    item_rows,
    make_label,
    parse_item,
    sendable_schema,
)
from pipeline.data.schema import write_dialogs

log = logging.getLogger("pipeline.curation.curate")


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
