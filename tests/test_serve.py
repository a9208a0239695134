"""The OpenAI-compatible endpoint and the chat page, on a tiny model served from a thread."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from test_chat_session import visible_tiny
from typer.testing import CliRunner

from tunesmith.chat.crisis import CrisisLayer, CrisisResources
from tunesmith.chat.server import ChatBackend, ChatServer, RequestError, ServeError, parse_request, start_in_thread

CRISIS = "I have decided to end my life tonight."


@pytest.fixture(scope="module")
def server(tiny_model_dir, tokenizer):
    backend = ChatBackend(
        visible_tiny(tiny_model_dir), tokenizer, crisis=CrisisLayer(), model_name="tiny-test", max_new_tokens=8
    )
    srv, thread = start_in_thread(backend, "127.0.0.1", 0)
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def request(server, path, body=None, headers=None, method=None):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    h = {"Content-Type": "application/json"} if body is not None else {}
    req = urllib.request.Request(server.url + path, data=data, headers=h | (headers or {}), method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def chat(server, content, **extra):
    return request(
        server,
        "/v1/chat/completions",
        {"model": "tiny-test", "messages": [{"role": "user", "content": content}], **extra},
    )


def sse_events(raw: bytes) -> list:
    text = raw.decode()
    assert text.endswith("\n\n")
    events = []
    for block in text.strip("\n").split("\n\n"):
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_models_endpoint(server):
    status, headers, body = request(server, "/v1/models")
    assert status == 200 and headers["Content-Type"] == "application/json"
    obj = json.loads(body)
    assert obj["object"] == "list"
    assert obj["data"][0]["id"] == "tiny-test" and obj["data"][0]["object"] == "model"
    assert isinstance(obj["data"][0]["created"], int) and obj["data"][0]["owned_by"]


def test_chat_completion_schema(server):
    status, _, body = chat(server, "Hello there!", max_tokens=5)
    assert status == 200
    obj = json.loads(body)
    assert obj["id"].startswith("chatcmpl-") and obj["object"] == "chat.completion"
    assert obj["model"] == "tiny-test" and isinstance(obj["created"], int)
    (choice,) = obj["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    u = obj["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and 0 < u["completion_tokens"] <= 5
    assert obj["tunesmith"]["crisis"]["flagged"] is False


def test_crisis_completion_opens_with_resources_for_the_locale(server):
    status, _, body = chat(server, CRISIS, locale="en_US")
    obj = json.loads(body)
    content = obj["choices"][0]["message"]["content"]
    meta = obj["tunesmith"]["crisis"]
    assert status == 200 and meta["flagged"] and meta["category"] == "self_harm" and meta["reason"]
    assert content.startswith(meta["banner"]) and "988" in meta["banner"]
    assert len(content) > len(meta["banner"]) + 2  # the model's reply follows


def test_streaming_matches_the_openai_chunk_format(server):
    status, headers, raw = chat(server, CRISIS, stream=True, locale="en_GB", stream_options={"include_usage": True})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    first = chunks[0]
    assert first["choices"][0]["delta"]["role"] == "assistant"
    banner = first["tunesmith"]["crisis"]["banner"]
    assert "Samaritans" in banner  # metadata arrives before the first token
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
    final = chunks[-2]
    assert final["choices"][0]["delta"] == {} and final["choices"][0]["finish_reason"] in ("stop", "length")
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]]
    streamed = "".join(pieces)
    assert [p for p in pieces if p][0].startswith(banner)  # resources are the first content
    assert len([p for p in pieces if p]) > 2
    # greedy decoding: the stream says exactly what the non-streaming answer says
    _, _, body = chat(server, CRISIS, locale="en_GB")
    assert streamed == json.loads(body)["choices"][0]["message"]["content"]


def test_history_and_system_messages_are_accepted(server):
    banner = CrisisResources.load().banner("self_harm")
    status, _, body = request(
        server,
        "/v1/chat/completions",
        {
            "messages": [
                {"role": "system", "content": "You are kind."},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": banner + "\n\nI'm here."},
                {"role": "user", "content": "thanks"},
            ],
            "max_tokens": 2,
        },
    )
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"]


def test_an_earlier_crisis_in_the_sent_history_keeps_the_session_flagged(server):
    # OpenAI clients are stateless: the server re-reads the history each request. The crisis is
    # further back than the turns check_conversation reads together (CONTEXT_TURNS), so the last
    # message is judged without it and only the session flag carries it (right after it, the
    # joined turns flag the next message too: risk carries across turns)
    status, _, body = request(
        server,
        "/v1/chat/completions",
        {
            "messages": [
                {"role": "user", "content": CRISIS},
                {"role": "assistant", "content": "I'm here."},
                {"role": "user", "content": "thanks"},
                {"role": "assistant", "content": "Of course."},
                {"role": "user", "content": "ok"},
                {"role": "assistant", "content": "Take your time."},
                {"role": "user", "content": "can you recommend a film?"},
            ],
            "max_tokens": 2,
            "locale": "en_GB",
        },
    )
    meta = json.loads(body)["tunesmith"]["crisis"]
    assert status == 200 and not meta["flagged"] and meta["banner"] is None
    assert meta["session_flagged"] and "Samaritans" in meta["session_banner"]
    _, _, body = request(
        server,
        "/v1/chat/completions",
        {
            "messages": [
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi"},
                {"role": "user", "content": "can you recommend a film?"},
            ],
            "max_tokens": 2,
        },
    )
    assert not json.loads(body)["tunesmith"]["crisis"]["session_flagged"]


def test_assistant_history_loses_the_banner():
    banner = CrisisResources.load().banner("self_harm")
    backend = ChatBackend.__new__(ChatBackend)  # parse_request needs only crisis and defaults
    backend.crisis, backend.locale, backend.max_new_tokens = CrisisLayer(), "international", 8
    backend.auto_locale = False
    req = parse_request(
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": banner + "\n\nI'm here."},
                {"role": "user", "content": "b"},
            ],
            "max_tokens": 100,
        },
        backend,
    )
    assert req.history[1]["content"] == "I'm here."
    assert req.max_new_tokens == 8  # the server's limit is a ceiling


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        (b"{not json", 400, "invalid JSON"),
        ({"messages": []}, 400, "non-empty"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "last non-system message"),
        ({"messages": [{"role": "tool", "content": "x"}]}, 400, "not supported"),
        ({"messages": [{"role": "user", "content": "hi"}], "locale": "xx_XX"}, 400, "unknown locale"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}, 400, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n=1"),
    ],
)
def test_invalid_requests_get_openai_errors(server, body, status, fragment):
    code, _, raw = request(server, "/v1/chat/completions", body)
    err = json.loads(raw)["error"]
    assert code == status and fragment in err["message"] and err["type"] == "invalid_request_error"


def test_transport_guards(server):
    code, _, _ = request(server, "/v1/chat/completions", b'{"messages": []}', headers={"Content-Type": "text/plain"})
    assert code == 415  # a cross-site form cannot POST JSON without a (never granted) preflight
    code, _, _ = request(server, "/v1/models", headers={"Host": "evil.example:80"})
    assert code == 403  # DNS rebinding
    code, _, _ = request(server, "/nope")
    assert code == 404


def test_chat_page(server):
    status, headers, body = request(server, "/")
    html = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    cfg = json.loads(html.split('<script id="cfg" type="application/json">')[1].split("</script>")[0])
    assert cfg["model"] == "tiny-test" and cfg["locale"] == ""  # no --locale: the message language picks the resources
    assert ["en_US", "United States"] in cfg["locales"]
    assert "<link" not in html and 'src="http' not in html  # self-contained


def test_non_loopback_host_needs_explicit_flag(tiny_model_dir):
    backend = ChatBackend.__new__(ChatBackend)
    with pytest.raises(ServeError, match="--allow-remote"):
        ChatServer(backend, "0.0.0.0", 0)
    from tunesmith.cli import app

    res = CliRunner().invoke(app, ["serve", str(tiny_model_dir), "--host", "0.0.0.0"])
    assert isinstance(res.exception, ServeError)


def test_request_error_shape():
    e = RequestError("bad", 400, "messages")
    assert e.body() == {"error": {"message": "bad", "type": "invalid_request_error", "param": "messages", "code": None}}
