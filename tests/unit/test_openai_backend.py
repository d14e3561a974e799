"""OpenAIClient against a real local HTTP server speaking the chat-completions protocol.

The server runs on 127.0.0.1 (ephemeral port) in a background thread, replies from a per-test
script of canned responses (then a default reply derived from the request's seed) and records
every request it receives. Retryable errors carry ``retry-after-ms: 1`` so that the ``openai``
client's own backoff does not slow the tests down.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import pytest

from promptcl.prompts.backends.openai_compatible import OpenAIClient
from promptcl.prompts.paraphrase import (
    FatalBackendError,
    ReplyCache,
    Request,
    ValidationSpec,
    build_request,
    candidates_from_replies,
    collect_replies,
    load_request_template,
)
from tests.helpers import REPO
from tests.helpers.chat_server import (
    FAST_RETRY,
    KEY,
    KEY_ENV,
    MODEL,
    Canned,
    ChatServer,
    completion,
    error,
    paraphrase,
    wire_seed,
)

ORIGINAL = 'Classify the review as "POS" if it is positive or as "NEG" if it is negative.'
LABELS = ["POS", "NEG"]
SPEC = ValidationSpec(min_chars=20, max_chars=400, min_length_ratio=0.3, max_length_ratio=3.0)
TEMPLATE = load_request_template(REPO / "resources/prompts/paraphrase_request.txt")
REQUEST_TEXT = build_request(TEMPLATE, ORIGINAL, LABELS)
SEED = 7


@pytest.fixture
def server():
    chat = ChatServer()
    chat.start()
    yield chat
    chat.stop()


@pytest.fixture
def api_key(monkeypatch) -> str:
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def make_backend(server: ChatServer, **overrides) -> OpenAIClient:
    settings = dict(
        base_url=server.base_url, model=MODEL, api_key_env=KEY_ENV, timeout=5.0, max_retries=2
    )
    return OpenAIClient(**{**settings, **overrides})


def make_requests(n: int, seed: int = SEED, start: int = 0) -> list[Request]:
    return [Request("sst2", i, REQUEST_TEXT, seed) for i in range(start, start + n)]


def cache_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.json")) if folder.exists() else []


# --- 1. success ---------------------------------------------------------------------------------


def test_replies_become_valid_candidates(server, api_key, tmp_path):
    server.reply(body=completion(f"<instruction>{paraphrase('A')}</instruction>"))
    server.reply(body=completion(f"Sure!\n<instruction>  {paraphrase('B')}\n</instruction>\nBye."))
    server.reply(body=completion(f"<instruction>{paraphrase('C')}</instruction> trailing"))
    backend = make_backend(server)

    replies = collect_replies(backend, make_requests(3), ReplyCache(tmp_path / "cache"))
    assert replies.errors == [None, None, None]
    table = candidates_from_replies("sst2", ORIGINAL, LABELS, replies, backend, SPEC)

    assert table["candidate_id"].tolist() == [0, 1, 2, 3]
    first = table.iloc[0]
    assert (first["text"], first["source"], first["model"]) == (ORIGINAL, "original", "")
    assert bool(first["valid"]) and first["reject_reason"] == "" and first["request_index"] == -1
    rest = table.iloc[1:]
    assert rest["text"].tolist() == [paraphrase("A"), paraphrase("B"), paraphrase("C")]
    assert rest["valid"].all() and (rest["reject_reason"] == "").all()
    assert (rest["source"] == "openai").all() and (rest["model"] == MODEL).all()
    assert rest["request_index"].tolist() == [0, 1, 2]
    assert server.calls == 3


def test_requests_speak_the_chat_completions_protocol(server, api_key, tmp_path):
    backend = make_backend(server, temperature=0.7, max_tokens=123)
    collect_replies(backend, make_requests(2, seed=5), ReplyCache(tmp_path))

    assert [seen.path for seen in server.requests] == ["/v1/chat/completions"] * 2
    for index, seen in enumerate(server.requests):
        assert seen.headers["authorization"] == f"Bearer {KEY}"
        assert seen.headers["content-type"].startswith("application/json")
        assert seen.body["model"] == MODEL
        assert seen.body["messages"] == [{"role": "user", "content": REQUEST_TEXT}]
        assert seen.body["temperature"] == 0.7 and seen.body["max_tokens"] == 123
        assert seen.body["seed"] == wire_seed(5, index)


def test_concurrent_requests_keep_their_own_replies(server, api_key, tmp_path):
    requests = make_requests(8)
    replies = collect_replies(
        make_backend(server), requests, ReplyCache(tmp_path), max_concurrent=4
    )
    assert replies.errors == [None] * 8
    expected = [f"<instruction>{paraphrase(wire_seed(SEED, i))}</instruction>" for i in range(8)]
    assert replies.texts == expected
    assert server.calls == 8


# --- 2./3. transient errors ---------------------------------------------------------------------


def test_rate_limit_then_success(server, api_key, tmp_path):
    server.reply(429, error("slow down", "rate_limit_error"), headers=FAST_RETRY)
    server.reply(body=completion(f"<instruction>{paraphrase('after 429')}</instruction>"))
    started = time.monotonic()
    replies = collect_replies(make_backend(server), make_requests(1), ReplyCache(tmp_path))

    assert replies.errors == [None]
    assert replies.texts == [f"<instruction>{paraphrase('after 429')}</instruction>"]
    assert server.calls == 2
    assert server.requests[0].body == server.requests[1].body  # the same request, retried
    assert time.monotonic() - started < 2


def test_server_errors_until_retries_run_out(server, api_key, tmp_path):
    max_retries = 2
    server.reply(500, error("boom", "server_error"), headers=FAST_RETRY, times=max_retries + 1)
    backend = make_backend(server, max_retries=max_retries)
    requests = make_requests(2)  # request 0 meets the 500s; request 1 then succeeds

    started = time.monotonic()
    replies = collect_replies(backend, requests, ReplyCache(tmp_path / "cache"))
    elapsed = time.monotonic() - started

    assert server.calls == (max_retries + 1) + 1
    assert elapsed < 2, f"retries took {elapsed:.2f} s: retry-after-ms was not honoured"
    assert replies.texts[0] is None and replies.texts[1] is not None
    table = candidates_from_replies("sst2", ORIGINAL, LABELS, replies, backend, SPEC)
    bad, good = table.iloc[1], table.iloc[2]
    assert not bad["valid"] and bad["reject_reason"].startswith("backend error")
    assert "InternalServerError" in bad["reject_reason"] and "500" in bad["reject_reason"]
    assert bad["text"] == "" and bad["request_index"] == 0
    assert good["valid"] and good["request_index"] == 1

    # failures are not cached: a rerun asks again for request 0 only
    assert len(cache_files(tmp_path / "cache")) == 1
    again = collect_replies(backend, requests, ReplyCache(tmp_path / "cache"))
    assert server.calls == (max_retries + 1) + 2
    assert again.errors == [None, None] and again.texts[1] == replies.texts[1]


def test_connection_refused_becomes_request_failure(api_key, tmp_path):
    with socket.socket() as sock:  # a port nobody listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = OpenAIClient(
        base_url=f"http://127.0.0.1:{port}/v1", model=MODEL, api_key_env=KEY_ENV, max_retries=0
    )
    replies = collect_replies(backend, make_requests(1), ReplyCache(tmp_path))
    assert replies.texts == [None]
    assert replies.errors[0].startswith("backend error: APIConnectionError")


def test_timeout_becomes_request_failure(server, api_key, tmp_path):
    server.reply(body=completion("<instruction>too late</instruction>"), delay=1.0)
    backend = make_backend(server, timeout=0.2, max_retries=0)
    started = time.monotonic()
    replies = collect_replies(backend, make_requests(1), ReplyCache(tmp_path))
    assert time.monotonic() - started < 0.9
    assert replies.texts == [None]
    assert replies.errors[0].startswith("backend error: APITimeoutError")


# --- 4. malformed replies -----------------------------------------------------------------------

MALFORMED = {
    "json content-type, body not JSON": (
        Canned(200, b"not json {", {"content-type": "application/json"}),
        "backend error: malformed reply",
    ),
    "html body": (
        Canned(200, b"<html>oops</html>", {"content-type": "text/html"}),
        "backend error: malformed reply",
    ),
    "json without choices": (
        Canned(200, {"id": "x", "object": "chat.completion", "created": 0, "model": MODEL}),
        "backend error: malformed reply",
    ),
    "empty choices": (
        Canned(200, {**completion("x"), "choices": []}),
        "backend error: malformed reply",
    ),
    "choices not a list": (
        Canned(200, {**completion("x"), "choices": "nope"}),
        "backend error: malformed reply",
    ),
    "null choice": (
        Canned(200, {**completion("x"), "choices": [None]}),
        "backend error: malformed reply",
    ),
    "message not an object": (
        Canned(200, {**completion("x"), "choices": [{"index": 0, "message": "hi"}]}),
        "backend error: malformed reply",
    ),
    "null content": (Canned(200, completion(None)), "backend error: malformed reply"),
    "no delimiters": (
        Canned(200, completion(f"Here is my rewrite: {paraphrase('X')}")),
        "unparsable reply",
    ),
    "unclosed delimiter": (
        Canned(200, completion(f"<instruction>{paraphrase('X')}")),
        "unparsable reply",
    ),
    "empty content": (Canned(200, completion("")), "empty reply"),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_reply_becomes_invalid_candidate(server, api_key, tmp_path, case):
    canned, reason = MALFORMED[case]
    server.script.append(canned)  # request 0 gets the malformed reply, request 1 a good one
    backend = make_backend(server)
    replies = collect_replies(backend, make_requests(2), ReplyCache(tmp_path))
    table = candidates_from_replies("sst2", ORIGINAL, LABELS, replies, backend, SPEC)

    assert not table.iloc[1]["valid"]
    assert table.iloc[1]["reject_reason"].startswith(reason), table.iloc[1]["reject_reason"]
    assert table.iloc[2]["valid"] and bool(table.iloc[0]["valid"])
    assert server.calls == 2  # a 200 is never retried


# --- 5. fatal errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_stop_the_job_at_once(server, api_key, tmp_path, status):
    server.default = Canned(status, error("Incorrect API key provided", "invalid_request_error"))
    backend = make_backend(server, max_retries=3)
    with pytest.raises(FatalBackendError) as caught:
        collect_replies(backend, make_requests(5), ReplyCache(tmp_path / "cache"))
    message = str(caught.value)
    assert KEY_ENV in message and str(status) in message
    assert KEY not in message and "SECRET" not in message
    assert server.calls == 1
    assert cache_files(tmp_path / "cache") == []


def test_refused_credentials_stop_a_concurrent_job_early(server, api_key, tmp_path):
    server.default = Canned(401, error("Incorrect API key provided", "invalid_request_error"))
    with pytest.raises(FatalBackendError, match=KEY_ENV):
        collect_replies(
            make_backend(server, max_retries=3), make_requests(40), ReplyCache(tmp_path), 4
        )
    assert server.calls < 40  # queued requests are cancelled, not all sent


def test_unknown_model_is_fatal(server, api_key, tmp_path):
    server.reply(404, error(f"The model `{MODEL}` does not exist", "invalid_request_error"))
    with pytest.raises(FatalBackendError) as caught:
        collect_replies(make_backend(server), make_requests(3), ReplyCache(tmp_path))
    message = str(caught.value)
    assert MODEL in message and "404" in message and "prompts.openai.model" in message
    assert server.calls == 1


def test_wrong_base_url_is_fatal(server, api_key, tmp_path):
    backend = make_backend(server, base_url=server.base_url.removesuffix("/v1") + "/wrong")
    with pytest.raises(FatalBackendError, match="not found"):
        collect_replies(backend, make_requests(1), ReplyCache(tmp_path))
    assert [seen.path for seen in server.requests] == ["/wrong/chat/completions"]


def test_bad_request_is_fatal(server, api_key, tmp_path):
    server.reply(400, error("max_tokens is too large", "invalid_request_error"))
    with pytest.raises(FatalBackendError, match="max_tokens is too large"):
        collect_replies(make_backend(server), make_requests(2), ReplyCache(tmp_path))
    assert server.calls == 1


# --- 6. the cache -------------------------------------------------------------------------------


def test_cached_replies_make_no_requests(server, api_key, tmp_path):
    folder = tmp_path / "cache"
    requests = make_requests(3)
    first = collect_replies(make_backend(server), requests, ReplyCache(folder))
    assert server.calls == 3 and len(cache_files(folder)) == 3

    cache = ReplyCache(folder)  # a rerun: new backend and cache objects, same settings
    again = collect_replies(make_backend(server), requests, cache)
    assert server.calls == 3
    assert again.texts == first.texts and again.errors == [None] * 3
    assert (cache.hits, cache.misses) == (3, 0)

    collect_replies(make_backend(server), make_requests(1, seed=SEED + 1), ReplyCache(folder))
    assert server.calls == 4 and server.requests[-1].body["seed"] == wire_seed(SEED + 1, 0)
    collect_replies(make_backend(server), make_requests(1, start=3), ReplyCache(folder))
    assert server.calls == 5 and server.requests[-1].body["seed"] == wire_seed(SEED, 3)
    collect_replies(make_backend(server, temperature=0.5), requests[:1], ReplyCache(folder))
    assert server.calls == 6  # generation options are part of the key
    collect_replies(make_backend(server, model="other-model"), requests[:1], ReplyCache(folder))
    assert server.calls == 7 and server.requests[-1].body["model"] == "other-model"

    # everything asked so far is now cached
    collect_replies(make_backend(server), make_requests(4), ReplyCache(folder))
    assert server.calls == 7


# --- 7. configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, ""])
def test_missing_api_key_variable_is_fatal_when_a_request_is_due(
    server, monkeypatch, tmp_path, value
):
    if value is None:
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, value)
    with pytest.raises(FatalBackendError, match=KEY_ENV):
        collect_replies(make_backend(server), make_requests(2), ReplyCache(tmp_path))
    assert server.calls == 0


def test_cached_replies_need_no_api_key(server, monkeypatch, tmp_path):
    """A rerun whose replies are all cached runs without the key (e.g. on another host)."""
    monkeypatch.setenv(KEY_ENV, KEY)
    first = collect_replies(make_backend(server), make_requests(3), ReplyCache(tmp_path))
    monkeypatch.delenv(KEY_ENV)
    again = collect_replies(make_backend(server), make_requests(3), ReplyCache(tmp_path))
    assert again.texts == first.texts and server.calls == 3


# --- 8. the key stays secret --------------------------------------------------------------------


def test_api_key_is_sent_but_never_stored_or_logged(server, api_key, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    server.reply(body=completion(f"<instruction>{paraphrase('ok')}</instruction>"))
    server.reply(429, error("slow down", "rate_limit_error"), headers=FAST_RETRY)
    server.reply(body=completion(f"<instruction>{paraphrase('retried')}</instruction>"))
    server.reply(500, error("boom", "server_error"), headers=FAST_RETRY, times=2)
    server.reply(body=completion("no delimiters here"))
    backend = make_backend(server, max_retries=1)
    replies = collect_replies(backend, make_requests(4), ReplyCache(tmp_path / "cache"))
    table = candidates_from_replies("sst2", ORIGINAL, LABELS, replies, backend, SPEC)
    assert table["valid"].tolist() == [True, True, True, False, False]

    server.default = Canned(401, error("Incorrect API key provided", "invalid_request_error"))
    with pytest.raises(FatalBackendError) as caught:
        collect_replies(make_backend(server), make_requests(1, start=9), ReplyCache(tmp_path))

    assert server.calls == 7
    assert all(seen.headers["authorization"] == f"Bearer {KEY}" for seen in server.requests)
    files = cache_files(tmp_path / "cache")
    assert len(files) == 3
    assert all(KEY.encode() not in path.read_bytes() for path in files)
    assert KEY not in table.to_csv() and KEY not in table.to_json()
    assert KEY not in str(caught.value) and KEY not in repr(backend)
    assert KEY not in json.dumps(backend.options())
    assert KEY not in " ".join(error or "" for error in replies.errors)
    assert caplog.records, "expected the client to log something at DEBUG"
    assert any("Retrying" in record.getMessage() for record in caplog.records)
    assert KEY not in caplog.text
    assert all(KEY not in record.getMessage() for record in caplog.records)
    out, err = capsys.readouterr()
    assert KEY not in out and KEY not in err
