"""An async chat-completions client for any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp).

Built on the official ``openai`` package with its own retries switched off, so that retrying is
ours and bounded: exponential backoff with jitter on 429, 5xx, timeouts and connection errors,
honouring ``Retry-After``; at most ``max_attempts`` attempts, each under a hard wall-clock timeout.
The API key is read from the environment variable *named* in the configuration; the key itself is
never stored in params, cache entries, reports or logs.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

log = logging.getLogger("pipeline.curation.openai_backend")

# Formats the endpoint is asked for, strictest first; a 400/422 on one falls back to the next.
ResponseFormat = Literal["json_schema", "json_object", "none"]
RESPONSE_FORMATS = get_args(ResponseFormat)
RETRYABLE_STATUS = {408, 409, 429}
NO_KEY = "no-key"
# A Retry-After beyond this (a misconfigured proxy asking for a day) is not waited out in full.
MAX_RETRY_AFTER_S = 600.0


class RequestFailed(RuntimeError):
    """A request that did not complete: retries exhausted or a non-retryable error."""

    def __init__(self, message: str, attempts: int, status: int | None = None):
        super().__init__(message)
        self.attempts = attempts
        self.status = status


@dataclass
class Completion:
    """What one completed chat call returned (everything the cache and the report need)."""

    content: str | None
    """The message text (None when the model refused through the ``refusal`` field)."""
    refusal: str | None
    """The endpoint's structured refusal message, if any."""
    finish_reason: str | None
    """``stop``, ``length`` (truncated), ``content_filter``, ..."""
    prompt_tokens: int
    """Input tokens, as reported by the endpoint (0 when it reports none)."""
    completion_tokens: int
    """Output tokens, as reported by the endpoint."""
    model: str
    """The model name the endpoint reports."""
    response_format: str
    """The format actually requested: json_schema, json_object or none."""
    attempts: int = 1
    """HTTP attempts this completion took."""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Completion:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class Stats:
    """Counters over the calls actually sent."""

    calls: int = 0
    """HTTP attempts sent."""
    retries: int = 0
    """Attempts that were retries."""
    by_error: dict[str, int] = field(default_factory=dict)
    """Failed attempts by cause (status code, timeout, connection)."""
    format_fallbacks: int = 0
    """Times the endpoint rejected a response format and a simpler one was used."""


def api_key_from_env(api_key_env: str) -> str:
    """The key held in the environment variable ``api_key_env``; '' means a server without auth."""
    if not api_key_env:
        return NO_KEY
    key = os.environ.get(api_key_env)
    if not key:
        raise RuntimeError(
            f"the environment variable {api_key_env} (api_key_env) is not set; export it, or set "
            "api_key_env to '' for a local server that needs no key"
        )
    return key


def parse_retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date), else None."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / divisor)
        except ValueError:
            pass
        if name == "retry-after":
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                continue
            return max(0.0, when.timestamp() - time.time())
    return None


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Equal-jitter exponential backoff for the ``attempt``-th retry (1-based)."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def cost_usd(
    model: str, prompt_tokens: int, completion_tokens: int, prices: dict[str, Any] | None
) -> float | None:
    """USD from a table ``{model: {"input": $/1M tokens, "output": $/1M tokens}}``, else None."""
    if not prices or model not in prices:
        return None
    price = prices[model]
    return (prompt_tokens * price["input"] + completion_tokens * price["output"]) / 1e6


def response_format_arg(mode: str, schema: dict[str, Any] | None, name: str) -> dict | None:
    if mode == "json_schema" and schema is not None:
        return {
            "type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": True},
        }
    if mode in ("json_schema", "json_object"):
        return {"type": "json_object"}
    return None


class ChatBackend:
    """Bounded-concurrency, retrying chat completions against one endpoint and model."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str,
        *,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        max_attempts: int = 6,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        response_format: str = "json_schema",
        seed: int = 0,
    ):
        from openai import AsyncOpenAI

        if response_format not in RESPONSE_FORMATS:
            raise ValueError(f"response_format must be one of {RESPONSE_FORMATS}")
        if concurrency < 1 or max_attempts < 1 or timeout_s <= 0:
            raise ValueError("concurrency and max_attempts must be >= 1, timeout_s > 0")
        self.model = model
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.format = response_format
        self.stats = Stats()
        self._rng = random.Random(seed)
        self._semaphore = asyncio.Semaphore(concurrency)
        # max_retries=0: the SDK's own retries would be unbounded by our counters.
        self._client = AsyncOpenAI(
            api_key=api_key_from_env(api_key_env),
            base_url=base_url,
            timeout=timeout_s,
            max_retries=0,
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> ChatBackend:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    def _count(self, cause: str) -> None:
        self.stats.by_error[cause] = self.stats.by_error.get(cause, 0) + 1

    async def _send(self, fmt, messages, sampling, schema, schema_name):
        kwargs = dict(model=self.model, messages=messages, **sampling)
        response_format = response_format_arg(fmt, schema, schema_name)
        if response_format is not None:
            kwargs["response_format"] = response_format
        self.stats.calls += 1
        # The SDK's timeout is per socket operation; wait_for bounds the whole request.
        response = await asyncio.wait_for(
            self._client.chat.completions.create(**kwargs), self.timeout_s + 1.0
        )
        return response

    async def complete(
        self,
        messages: list[dict[str, str]],
        sampling: dict[str, Any],
        schema: dict[str, Any] | None = None,
        schema_name: str = "response",
    ) -> Completion:
        """One chat completion, retried as configured; RequestFailed when it cannot finish."""
        import openai

        attempt = 0
        async with self._semaphore:
            while True:
                attempt += 1
                retry_after = None
                fmt = self.format
                try:
                    response = await self._send(fmt, messages, sampling, schema, schema_name)
                except openai.APIStatusError as exc:
                    status = exc.status_code
                    self._count(str(status))
                    if status in (400, 422) and fmt != "none":
                        # An endpoint without structured outputs: use the next simpler format
                        # for this and every later request (once, however many fail together).
                        if self.format == fmt:
                            log.warning(
                                "endpoint rejected response_format=%s (HTTP %s); falling back",
                                fmt,
                                status,
                            )
                            self.format = RESPONSE_FORMATS[RESPONSE_FORMATS.index(fmt) + 1]
                            self.stats.format_fallbacks += 1
                        attempt -= 1
                        continue
                    if status not in RETRYABLE_STATUS and status < 500:
                        raise RequestFailed(
                            f"HTTP {status}: {exc.message}", attempt, status
                        ) from None
                    retry_after = parse_retry_after(exc.response.headers)
                    cause = f"HTTP {status}"
                except (openai.APITimeoutError, asyncio.TimeoutError):
                    self._count("timeout")
                    cause, status = "timeout", None
                except openai.APIConnectionError as exc:
                    self._count("connection")
                    cause, status = f"connection error ({exc})", None
                except (openai.APIError, ValueError) as exc:
                    # A 200 whose body is not a chat completion (a proxy's error page, say).
                    self._count("bad_response")
                    cause, status = f"unreadable response ({type(exc).__name__}: {exc})", None
                else:
                    return _completion(response, fmt, attempt)
                if attempt >= self.max_attempts:
                    raise RequestFailed(
                        f"gave up after {attempt} attempts; last: {cause}", attempt, status
                    )
                delay = backoff_delay(attempt, self.backoff_base_s, self.backoff_max_s, self._rng)
                if retry_after is not None:
                    delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
                self.stats.retries += 1
                log.debug("%s; retrying in %.2fs (attempt %d)", cause, delay, attempt + 1)
                await asyncio.sleep(delay)


def _completion(response, fmt: str, attempts: int) -> Completion:
    if not response.choices:
        raise RequestFailed("the endpoint returned no choices", attempts)
    choice = response.choices[0]
    message = choice.message
    usage = response.usage
    return Completion(
        content=message.content,
        refusal=getattr(message, "refusal", None),
        finish_reason=choice.finish_reason,
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        model=response.model or "",
        response_format=fmt,
        attempts=attempts,
    )
