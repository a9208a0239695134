"""Local HTTP server: the chat page and an OpenAI-compatible API, on the standard library only.

Routes:
  GET  /                     the chat page (one self-contained HTML file)
  GET  /v1/models            the served model, OpenAI list format
  POST /v1/chat/completions  OpenAI chat completions; `stream: true` answers with SSE chunks
  GET  /healthz              "ok"

Every completion goes through `ChatSession.respond`, so the crisis layer screens the last user
message and, when it flags, the resources open the reply (also for plain OpenAI clients, as the
first content). Extra data travels in a non-standard `tunesmith` field (crisis verdict, banner,
emotion/strategy predictions) that OpenAI clients ignore. Extension request fields: `locale`
(without it, and without `--locale`, the resources follow the message's language). The history a
client sends is re-screened, so a crisis earlier in the conversation keeps `session_flagged` and
`session_banner` set on every later reply.

One model serves all requests, so generation is serialised by a lock; `ThreadingHTTPServer` keeps
the page and /v1/models responsive meanwhile.

Security for a local tool: binds 127.0.0.1 by default; on a loopback address, requests whose Host
header is not a loopback name are refused (DNS-rebinding protection), and POSTs must be
`application/json` (a cross-site form cannot send that without a CORS preflight, which is never
granted). There is no authentication: exposing it beyond this machine needs `--allow-remote`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tunesmith.chat.crisis import CrisisLayer, strip_banner
from tunesmith.chat.session import ChatError, ChatSession
from tunesmith.chat.webpage import PAGE
from tunesmith.errors import TunesmithError

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # 1 MiB of JSON is far more than any chat request
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


class ServeError(TunesmithError):
    pass


class RequestError(Exception):
    """An invalid API request: answered with an OpenAI-style error object."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.kind = status, param, kind

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": None}}


def is_loopback(host: str) -> bool:
    h = host.strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


class ChatBackend:
    """The loaded model and the defaults every request starts from."""

    def __init__(
        self,
        model,
        tokenizer,
        heads=None,
        crisis: CrisisLayer | None = None,
        model_name: str = "tunesmith",
        max_new_tokens: int = 256,
        system_prompt: str | None = None,
        locale: str | None = None,
        temperature: float = 0.0,
    ):
        self.model, self.tokenizer, self.heads = model, tokenizer, heads
        self.crisis = crisis or CrisisLayer()
        self.model_name = model_name
        self.max_new_tokens = max_new_tokens
        self.system_prompt = system_prompt
        self.locale = self.crisis.resources.resolve(locale).code
        self.auto_locale = not locale  # no --locale: resources follow each message's language
        self.temperature = temperature
        self.lock = threading.Lock()
        self.created = int(time.time())

    def session(self, history: list[dict], system_prompt: str | None) -> ChatSession:
        return ChatSession(
            self.model,
            self.tokenizer,
            self.heads,
            self.crisis,
            self.max_new_tokens,
            system_prompt if system_prompt is not None else self.system_prompt,
            None if self.auto_locale else self.locale,
            history,
            temperature=self.temperature,
        )

    def page(self) -> bytes:
        cfg = {
            "model": self.model_name,
            "locale": "" if self.auto_locale else self.locale,
            "heads": self.heads is not None,
            "locales": [[c, r.name] for c, r in self.crisis.resources.locales.items()],
        }
        # "</" must not appear inside the <script> element that carries the JSON
        return PAGE.replace("__CONFIG__", json.dumps(cfg).replace("</", "<\\/")).encode("utf-8")


@dataclass
class ChatRequest:
    history: list[dict]
    user_text: str
    system_prompt: str | None
    stream: bool
    include_usage: bool
    max_new_tokens: int
    temperature: float | None
    top_p: float | None
    locale: str | None  # None: follow the message's language


def _content(value: Any, where: str) -> str:
    """OpenAI content: a string or a list of parts ({type: text, text})."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(f"{where}: only text content parts are supported", param=where)
            texts.append(part["text"])
        return "".join(texts)
    if value is None:
        return ""
    raise RequestError(f"{where}: content must be a string or a list of text parts", param=where)


def _number(body: dict, key: str, lo: float, hi: float) -> float | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise RequestError(f"{key} must be a number in [{lo}, {hi}]", param=key)
    return float(v)


def parse_request(body: Any, backend: ChatBackend) -> ChatRequest:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", param="messages")
    system_parts: list[str] = []
    convo: list[dict] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RequestError(f"{where} must be an object", param=where)
        role = m.get("role")
        text = _content(m.get("content"), f"{where}.content")
        if role in ("system", "developer"):
            system_parts.append(text)
        elif role in ("user", "assistant"):
            # a reply sent back as history may start with our banner: keep the model's words only
            convo.append({"role": role, "content": strip_banner(text) if role == "assistant" else text})
        else:
            raise RequestError(
                f"{where}.role {role!r} is not supported (system, developer, user, assistant)", param=f"{where}.role"
            )
    if not convo or convo[-1]["role"] != "user":
        raise RequestError("the last non-system message must be from the user", param="messages")
    if not convo[-1]["content"].strip():
        raise RequestError("the last user message is empty", param="messages")
    if body.get("n") not in (None, 1):
        raise RequestError("only n=1 is supported", param="n")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise RequestError("max_tokens must be a positive integer", param="max_tokens")
    # the server's --max-new-tokens is a ceiling: one request must not hold the model for long
    max_new = min(limit or backend.max_new_tokens, backend.max_new_tokens)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("stream must be a boolean", param="stream")
    opts = body.get("stream_options") or {}
    locale = body.get("locale") or (None if backend.auto_locale else backend.locale)
    if locale is not None:
        try:
            locale = backend.crisis.resources.resolve(str(locale)).code
        except TunesmithError as e:
            raise RequestError(str(e), param="locale") from None
    return ChatRequest(
        history=convo[:-1],
        user_text=convo[-1]["content"],
        system_prompt="\n\n".join(system_parts) if system_parts else None,
        stream=stream,
        include_usage=bool(isinstance(opts, dict) and opts.get("include_usage")),
        max_new_tokens=max_new,
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_number(body, "top_p", 0.0, 1.0),
        locale=locale,
    )


class Handler(BaseHTTPRequestHandler):
    server_version = "tunesmith"
    server: ChatServer  # type: ignore[assignment]

    # ------------------------------------------------------------------ plumbing

    def log_message(self, fmt: str, *args) -> None:  # route access logs to logging, not stderr
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), "application/json")

    def _error(self, e: RequestError) -> None:
        self._json(e.status, e.body())

    def _host_ok(self) -> bool:
        if self.server.allow_remote:
            return True
        host = (self.headers.get("Host") or "").strip()
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
        return name.lower() in LOOPBACK_NAMES

    # ------------------------------------------------------------------ routes

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        if not self._host_ok():
            return self._error(RequestError("host not allowed", 403, kind="forbidden"))
        path = self.path.split("?", 1)[0]
        b = self.server.backend
        if path in ("/", "/index.html"):
            csp = (
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                "connect-src 'self'; img-src 'self' data:"
            )
            return self._send(200, b.page(), "text/html; charset=utf-8", {"Content-Security-Policy": csp})
        if path == "/v1/models":
            return self._json(
                200,
                {
                    "object": "list",
                    "data": [{"id": b.model_name, "object": "model", "created": b.created, "owned_by": "tunesmith"}],
                },
            )
        if path == "/healthz":
            return self._send(200, b"ok", "text/plain")
        return self._error(RequestError(f"no route for GET {path}", 404, kind="not_found"))

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_ok():
            return self._error(RequestError("host not allowed", 403, kind="forbidden"))
        path = self.path.split("?", 1)[0]
        if path != "/v1/chat/completions":
            return self._error(RequestError(f"no route for POST {path}", 404, kind="not_found"))
        if (self.headers.get("Content-Type") or "").split(";")[0].strip().lower() != "application/json":
            return self._error(RequestError("Content-Type must be application/json", 415))
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            return self._error(RequestError("request body missing or too large", 413))
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return self._error(RequestError(f"invalid JSON: {e}"))
        try:
            req = parse_request(body, self.server.backend)
        except RequestError as e:
            return self._error(e)
        self._complete(req)

    # ------------------------------------------------------------------ completions

    def _complete(self, req: ChatRequest) -> None:
        b = self.server.backend
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        with b.lock:  # one generation at a time on the shared model
            try:
                session = b.session(req.history, req.system_prompt)
                reply = session.respond(
                    req.user_text,
                    locale=req.locale,
                    max_new_tokens=req.max_new_tokens,
                    temperature=req.temperature,
                    top_p=req.top_p,
                )
            except ChatError as e:
                return self._error(RequestError(str(e)))
            if not req.stream:
                try:
                    reply.consume()
                except Exception:  # a bug, not bad input: log it, answer 500 in the API's format
                    log.exception("generation failed")
                    return self._error(RequestError("generation failed; see the server log", 500, kind="server_error"))
                return self._json(
                    200,
                    {
                        "id": cid,
                        "object": "chat.completion",
                        "created": created,
                        "model": b.model_name,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": reply.text},
                                "logprobs": None,
                                "finish_reason": _finish(reply.finish_reason),
                            }
                        ],
                        "usage": _usage(reply),
                        "tunesmith": reply.metadata(),
                    },
                )
            self._stream(reply, req, cid, created)

    def _stream(self, reply, req: ChatRequest, cid: str, created: int) -> None:
        b = self.server.backend

        def chunk(delta: dict, finish: str | None = None, **extra) -> dict:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": b.model_name,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                **extra,
            }

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.send_header("X-Accel-Buffering", "no")
        self.end_headers()
        self.close_connection = True
        pieces = iter(reply)
        try:
            # the verdict and predictions are known before the first token: send them first
            self._event(chunk({"role": "assistant", "content": ""}, tunesmith=reply.metadata()))
            for piece in pieces:
                self._event(chunk({"content": piece}))
            self._event(chunk({}, _finish(reply.finish_reason), tunesmith=reply.metadata()))
            if req.include_usage:
                self._event(
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": b.model_name,
                        "choices": [],
                        "usage": _usage(reply),
                    }
                )
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            reply.cancel()  # client went away: stop generating
            log.info("client disconnected during streaming; generation cancelled")
        except Exception as e:  # headers are sent: report in-band, as OpenAI streams do
            log.exception("generation failed")
            with contextlib.suppress(OSError):
                self._event(RequestError(f"generation failed: {type(e).__name__}", 500, kind="server_error").body())
        finally:
            pieces.close()  # joins the generation thread whatever happened

    def _event(self, obj: dict) -> None:
        self.wfile.write(b"data: " + json.dumps(obj).encode("utf-8") + b"\n\n")
        self.wfile.flush()


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def _usage(reply) -> dict:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True  # a hung client must not keep the process alive at shutdown

    def __init__(self, backend: ChatBackend, host: str = "127.0.0.1", port: int = 8000, allow_remote: bool = False):
        if not is_loopback(host) and not allow_remote:
            raise ServeError(
                f"refusing to listen on {host}: the server has no authentication; pass --allow-remote "
                "to expose it beyond this machine"
            )
        self.backend = backend
        self.allow_remote = allow_remote
        if ":" in host:
            self.address_family = socket.AF_INET6
        try:
            super().__init__((host, port), Handler)
        except OSError as e:
            raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}"


def start_in_thread(
    backend: ChatBackend, host: str = "127.0.0.1", port: int = 0, allow_remote: bool = False
) -> tuple[ChatServer, threading.Thread]:
    """Start a server on a background thread (tests, notebooks); stop with `server.shutdown()`."""
    server = ChatServer(backend, host, port, allow_remote)
    t = threading.Thread(target=server.serve_forever, name="tunesmith-serve", daemon=True)
    t.start()
    return server, t
