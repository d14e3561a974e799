"""A scriptable local chat-completions endpoint (127.0.0.1, ephemeral port) for the openai
backend's tests: it replies from a per-test script of canned responses and records every request.
Retryable errors carry ``retry-after-ms: 1`` so the client's own backoff does not slow tests."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KEY_ENV = "PROMPTCL_TEST_OPENAI_KEY"
KEY = "sk-test-SECRET-0123456789"
MODEL = "paraphraser-test-7b"
FAST_RETRY = {"retry-after-ms": "1"}  # honoured by the openai client: retry after 1 ms


def completion(content: str | None) -> dict:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def paraphrase(tag: object) -> str:
    return f'Variant {tag}: reply "POS" for a positive review and "NEG" for a negative one.'


def error(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def wire_seed(seed: int, index: int) -> int:
    """The ``seed`` field the backend sends for a request."""
    return seed * 1_000_003 + index


# --- the fake endpoint ---------------------------------------------------------------------------


@dataclass
class Canned:
    status: int = 200
    body: dict | list | str | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any  # the parsed JSON body (None if it was not JSON)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        canned = self.server.chat.next(Seen(self.path, headers, body))
        if canned.delay:
            time.sleep(canned.delay)
        if isinstance(canned.body, bytes):
            payload, ctype = canned.body, "application/octet-stream"
        elif isinstance(canned.body, str):
            payload, ctype = canned.body.encode(), "text/plain"
        else:
            payload, ctype = json.dumps(canned.body).encode(), "application/json"
        headers = {"content-type": ctype, **canned.headers}
        self.send_response(canned.status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # keep stderr clean for capsys
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    chat: ChatServer

    def handle_error(self, request, client_address) -> None:  # client hung up (timeout test)
        pass


class ChatServer:
    """A scriptable ``POST {base}/chat/completions`` endpoint that records what it receives.

    Replies come from ``script`` in order; once it is empty, from ``default`` (a Canned or a
    function of the request body), else a valid paraphrase naming the request's wire seed.
    """

    def __init__(self) -> None:
        self.script: deque[Canned] = deque()
        self.default: Canned | Callable[[Any], Canned] | None = None
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.chat = self
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def reply(
        self,
        status: int = 200,
        body: dict | list | str | bytes | None = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
        delay: float = 0.0,
    ) -> None:
        for _ in range(times):
            self.script.append(Canned(status, body, dict(headers or {}), delay))

    def next(self, seen: Seen) -> Canned:
        with self._lock:
            self.requests.append(seen)
            if seen.path != "/v1/chat/completions":
                return Canned(404, error(f"no route {seen.path}", "invalid_request_error"))
            if self.script:
                return self.script.popleft()
            default = self.default
        if isinstance(default, Canned):
            return default
        if default is not None:
            return default(seen.body)
        return Canned(
            200, completion(f"<instruction>{paraphrase(seen.body['seed'])}</instruction>")
        )

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.requests)
