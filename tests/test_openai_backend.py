"""The OpenAI-compatible backend against a real local HTTP server with injected faults."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from openai_server import FakeOpenAI

from pipeline.curation.openai_backend import (
    ChatBackend,
    RequestFailed,
    api_key_from_env,
    backoff_delay,
    cost_usd,
    parse_retry_after,
)

MESSAGES = [{"role": "user", "content": "Write one persona item."}]


def backend(server: FakeOpenAI, **kw) -> ChatBackend:
    options = dict(timeout_s=2.0, max_attempts=4, backoff_base_s=0.01, backoff_max_s=0.05)
    options.update(kw)
    return ChatBackend(server.base_url, "fake-model", "", **options)


def complete(client: ChatBackend, seed: int = 0, schema: dict | None = None):
    async def go():
        try:
            return await client.complete(MESSAGES, {"seed": seed, "max_tokens": 50}, schema)
        finally:
            await client.aclose()

    return asyncio.run(asyncio.wait_for(go(), 20))


def plan(*actions: str):
    return lambda info, n: actions[min(n, len(actions) - 1)]


def test_429_honours_retry_after():
    with FakeOpenAI(plan("429", "ok"), retry_after="0.4") as server:
        client = backend(server)
        done = complete(client)
    assert done.attempts == 2 and done.finish_reason == "stop"
    first, second = server.log
    # Backoff alone would wait at most 0.01 s; the gap shows the header was obeyed.
    assert second["time"] - first["time"] >= 0.38
    assert client.stats.by_error == {"429": 1} and client.stats.retries == 1


def test_500_then_success():
    with FakeOpenAI(plan("500", "500", "ok")) as server:
        client = backend(server)
        done = complete(client)
    assert done.attempts == 3 and server.calls.total() == 3
    assert client.stats.by_error == {"500": 2}
    assert done.prompt_tokens > 0 and done.completion_tokens == 50


def test_timeout_is_retried_and_bounded_in_time():
    with FakeOpenAI(plan("sleep", "ok"), sleep_s=1.5) as server:
        client = backend(server, timeout_s=0.3)
        start = time.monotonic()
        done = complete(client)
        elapsed = time.monotonic() - start
    assert done.attempts == 2 and client.stats.by_error == {"timeout": 1}
    assert elapsed < 1.4  # did not wait for the slow answer


def test_unreadable_body_is_retried():
    with FakeOpenAI(plan("garbage", "ok")) as server:
        client = backend(server)
        done = complete(client)
    assert done.attempts == 2 and client.stats.by_error == {"bad_response": 1}


def test_retries_are_bounded():
    with FakeOpenAI(plan("500")) as server:
        client = backend(server, max_attempts=3)
        with pytest.raises(RequestFailed, match="after 3 attempts") as info:
            complete(client)
    assert info.value.attempts == 3 and info.value.status == 500
    assert server.calls.total() == 3


def test_client_errors_are_not_retried():
    with FakeOpenAI() as server:
        client = ChatBackend(
            server.base_url.replace("/v1", "/nope"),
            "m",
            "",
            max_attempts=5,
            backoff_base_s=0.01,
            response_format="none",
        )
        with pytest.raises(RequestFailed, match="HTTP 404") as info:
            complete(client)
    assert info.value.attempts == 1 and client.stats.calls == 1


def test_structured_output_falls_back_to_json_object():
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    with FakeOpenAI(plan("reject_schema", "ok")) as server:
        client = backend(server)
        done = complete(client, schema=schema)
    assert [entry["format"] for entry in server.log] == ["json_schema", "json_object"]
    assert done.response_format == "json_object" and client.stats.format_fallbacks == 1
    assert client.format == "json_object"  # later requests skip the rejected format


def test_refusal_field_is_reported():
    with FakeOpenAI(plan("refusal")) as server:
        done = complete(backend(server))
    assert done.content is None and "sorry" in done.refusal


def test_concurrency_is_bounded():
    async def go(client):
        try:
            return await asyncio.gather(*(client.complete(MESSAGES, {"seed": i}) for i in range(6)))
        finally:
            await client.aclose()

    with FakeOpenAI(delay_s=0.15) as server:
        results = asyncio.run(asyncio.wait_for(go(backend(server, concurrency=2)), 20))
    assert len(results) == 6 and server.calls.total() == 6
    assert server.max_in_flight == 2


def test_api_key_comes_from_the_named_variable(monkeypatch):
    monkeypatch.setenv("CURATE_TEST_KEY", "sk-test-not-a-real-key")
    with FakeOpenAI() as server:
        complete(ChatBackend(server.base_url, "m", "CURATE_TEST_KEY", backoff_base_s=0.01))
    assert server.log[0]["auth"] == "Bearer sk-test-not-a-real-key"
    monkeypatch.delenv("CURATE_TEST_KEY")
    with pytest.raises(RuntimeError, match="CURATE_TEST_KEY"):
        api_key_from_env("CURATE_TEST_KEY")
    assert api_key_from_env("") == "no-key"


def test_retry_after_parsing():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({}) is None and parse_retry_after(None) is None
    assert parse_retry_after({"retry-after": "soon"}) is None
    later = datetime.now(timezone.utc) + timedelta(seconds=30)
    assert 25 < parse_retry_after({"retry-after": format_datetime(later, usegmt=True)}) <= 30


def test_backoff_grows_with_jitter_and_cap():
    rng = random.Random(0)
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (8, 10.0)):
        delays = [backoff_delay(attempt, 1.0, 10.0, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


def test_cost_from_price_table():
    prices = {"gpt-x": {"input": 0.5, "output": 2.0}}
    assert cost_usd("gpt-x", 2_000_000, 1_000_000, prices) == pytest.approx(3.0)
    assert cost_usd("other", 10, 10, prices) is None and cost_usd("gpt-x", 1, 1, None) is None
