"""A local OpenAI-compatible chat server for tests, with fault injection (standard library only).

Serves ``POST /v1/chat/completions`` on 127.0.0.1 (an ephemeral port). Each request is identified
by a fingerprint of its messages and seed; ``faults(fingerprint_info, n)`` chooses what the n-th
call (0-based) with that fingerprint gets: ``ok``, ``429``, ``500``, ``sleep`` (answers only after
``sleep_s``, past the client's timeout), ``garbage`` (a 200 whose body is not
JSON), ``malformed``, ``truncated``, ``refusal`` (the structured
refusal field), ``refusal_text`` (an apology instead of JSON), ``reject_schema`` (400 when asked for
json_schema, like a server without structured outputs). Valid answers are items built from seeded
random words, so distinct requests give distinct (not near-duplicate) items.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORDS = (
    "amber basalt cedar dune ember fjord garnet harbor indigo juniper kelp lantern meadow nectar "
    "oyster pepper quartz raven saffron tundra umber velvet willow yarrow zephyr anchor bramble "
    "canyon delta estuary falcon glacier heron island jasper kestrel lagoon marble nettle orchard "
    "prairie quill reef sparrow thistle valley walnut yonder acorn birch cobalt drift elm fern "
    "grove hazel ivy jade kiln loom moss nook onyx pine quay rush sage tide urn vine wick"
).split()


def fingerprint(body: dict) -> str:
    key = json.dumps([body.get("messages"), body.get("seed")], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def family_of(body: dict) -> str:
    text = " ".join(m.get("content", "") for m in body.get("messages", []))
    for family in ("persona", "goal", "situation"):
        if family in text:
            return family
    return "other"


def make_item(fp: str, n_dialogs: int = 2, n_qa: int = 2) -> dict:
    rng = random.Random(fp)

    def sentence(n: int = 12) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."

    return {
        "label": f"{rng.choice(WORDS)} {rng.choice(WORDS)} {fp[:6]}",
        "control": f"You are a keeper of {fp}. " + sentence(16),
        "acknowledgement": "Understood. " + sentence(6),
        "dialogs": [{"user": sentence(), "assistant": sentence()} for _ in range(n_dialogs)],
        "qa": [{"question": sentence(6)[:-1] + "?", "answer": sentence(5)} for _ in range(n_qa)],
    }


class FakeOpenAI:
    """The server, its call log and its fault plan; use as a context manager."""

    def __init__(
        self,
        faults: Callable[[dict, int], str] | None = None,
        *,
        retry_after: str = "0.3",
        sleep_s: float = 1.5,
        delay_s: float = 0.0,
    ):
        self.faults = faults or (lambda info, n: "ok")
        self.retry_after = retry_after
        self.sleep_s = sleep_s
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.log: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "no such route"}})
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                fp = fingerprint(body)
                fmt = (body.get("response_format") or {}).get("type", "none")
                info = {
                    "fingerprint": fp,
                    "seed": body.get("seed"),
                    "family": family_of(body),
                    "format": fmt,
                }
                with fake.lock:
                    n = fake.calls[fp]
                    fake.calls[fp] += 1
                    action = fake.faults(info, n)
                    fake.log.append(
                        dict(
                            info,
                            n=n,
                            action=action,
                            time=time.monotonic(),
                            auth=self.headers.get("authorization", ""),
                        )
                    )
                # In flight from its arrival until just before its answer is written: a client
                # that gets the answer may send its next request before this thread runs again.
                with fake.lock:
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    if fake.delay_s:
                        time.sleep(fake.delay_s)
                finally:
                    with fake.lock:
                        fake.in_flight -= 1
                try:
                    self._act(action, body, fp, fmt)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout); nothing to answer

            def _act(self, action: str, body: dict, fp: str, fmt: str) -> None:
                if action == "reject_schema" and fmt == "json_schema":
                    return self._send(
                        400, {"error": {"message": "response_format json_schema is not supported"}}
                    )
                if action == "429":
                    return self._send(
                        429,
                        {"error": {"message": "rate limited"}},
                        {"Retry-After": fake.retry_after},
                    )
                if action == "garbage":
                    return self._send(200, None)
                if action == "500":
                    return self._send(500, {"error": {"message": "boom"}})
                if action == "sleep":
                    time.sleep(fake.sleep_s)
                text = json.dumps(make_item(fp))
                content, refusal, finish = text, None, "stop"
                if action == "malformed":
                    content = "{'label': 'single quotes are not JSON', " + text[1:40]
                    content = "Sure! " + content + "}"
                elif action == "truncated":
                    content, finish = text[: len(text) // 2], "length"
                elif action == "refusal":
                    content, refusal = None, "I'm sorry, but I can't help with that request."
                elif action == "refusal_text":
                    content = "I'm sorry, but I can't help with that."
                with fake.lock:
                    fake.answered[fp] += 1
                prompt = sum(len(re.findall(r"\w+", m["content"])) for m in body["messages"])
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-{fp}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": finish,
                                "message": {
                                    "role": "assistant",
                                    "content": content,
                                    "refusal": refusal,
                                },
                            }
                        ],
                        "usage": {
                            "prompt_tokens": prompt,
                            "completion_tokens": 50,
                            "total_tokens": prompt + 50,
                        },
                    },
                )

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = (
                    b"<html>proxy error</html>" if payload is None else json.dumps(payload).encode()
                )
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler
