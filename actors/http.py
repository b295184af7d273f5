"""The HTTP API: the Client's operations as JSON over HTTP, for dashboards, scripts and other languages.

Why Starlette and not a hand-rolled server: routing, body handling and the ASGI contract are solved
problems, and uvicorn serves it. The Client is synchronous (Kafka producer, psycopg), so every call into it
runs in Starlette's thread pool and never blocks the event loop.

Errors are always JSON ``{"error": <type>, "message": <text>}``: 400 bad body or parameters, 404 unknown
workflow or route, 400 an unknown status filter, 401 no or a wrong bearer token, 403 a read-only token on
a route that acts, 409 a query/update the workflow refused, an action on a workflow that has already ended
(WorkflowNotRunning), or a retry of a workflow that has not failed, 413 payload too large, 503 Kafka or
PostgreSQL unreachable, 504 no answer in time. ``/openapi.json`` describes every route; it is written by
hand so that it states what the API promises rather than what a framework happens to infer.

Security (DESIGN.md, "Security"): with ``METAMORPH_API_TOKENS`` set, every route except the UI shell and its
assets, ``/healthz``, ``/openapi.json`` and the webhooks (which have their own credentials) needs
``Authorization: Bearer <token>``. Request bodies are bounded (``METAMORPH_HTTP_MAX_BODY``) before any
credential is looked at, so an anonymous caller cannot make the server buffer megabytes. Workflow ids may
hold any character: a client percent-encodes them (``/`` as ``%2F``) and the routes match the raw path.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, is_dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from uuid import UUID

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from eventstore import metrics
from eventstore.log import PayloadTooLargeError
from eventstore.payloads import PayloadError

from . import schedules_http, stream_http, webhooks
from .errors import QueryFailed, WorkflowAlreadyStarted, WorkflowNotFound, WorkflowNotRunning
from .routing import IdRoute, route_path

if TYPE_CHECKING:
    from .client import Client

MAX_PAGE = 1000
MAX_BODY = 1024 * 1024  # bytes; METAMORPH_HTTP_MAX_BODY overrides
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

log = logging.getLogger(__name__)


class JSON(JSONResponse):
    """JSON that also renders what projection rows hold (datetimes, decimals, UUIDs, dataclasses)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=jsonable, ensure_ascii=False, separators=(",", ":")).encode()


def jsonable(value: Any) -> Any:
    """``json.dumps`` fallback shared with the CLI's ``--json`` output."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return str(value)


def redact(text: str) -> str:
    """Mask passwords of connection strings (URI and key=value forms) in a message meant for a user."""
    text = re.sub(r"(://[^:@/\s]+):[^@/\s]*@", r"\1:***@", text)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", text)


class BadRequest(ValueError):
    """A body or parameter the API cannot use; answered with 400."""


def _error(status: int, error: str, message: str) -> Response:
    return JSON({"error": error, "message": message}, status_code=status)


# -- authentication --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ApiToken:
    """One configured caller: a name (for logs) and whether it may only read."""

    name: str
    secret: bytes
    read_only: bool


class ApiTokens:
    """The bearer tokens of ``METAMORPH_API_TOKENS``: ``name:token`` (may act), ``ro:name:token`` (reads only).

    Why a name per token: a leaked token can be revoked alone and the access log says who acted. No tokens
    means no authentication, which is only sane on loopback (``serve`` warns otherwise).
    """

    def __init__(self, tokens: list[ApiToken]) -> None:
        self.tokens = tokens

    @classmethod
    def parse(cls, spec: str | None) -> ApiTokens:
        """Parse ``name:token,ro:name:token``; refuses empty names or tokens and duplicate names."""
        tokens: list[ApiToken] = []
        for item in filter(None, (part.strip() for part in (spec or "").split(","))):
            read_only = item.startswith("ro:")
            name, sep, secret = (item[3:] if read_only else item).partition(":")
            if not sep or not name.strip() or not secret.strip():
                raise ValueError(
                    "METAMORPH_API_TOKENS entries must be name:token or ro:name:token "
                    f"(entry {len(tokens) + 1} is not)"
                )
            if any(t.name == name.strip() for t in tokens):
                raise ValueError(f"METAMORPH_API_TOKENS names token {name.strip()!r} twice")
            tokens.append(ApiToken(name.strip(), secret.strip().encode(), read_only))
        return cls(tokens)

    @classmethod
    def configure(cls, tokens: str | ApiTokens | None = None) -> ApiTokens:
        """The argument if given, else ``METAMORPH_API_TOKENS`` (empty: no authentication)."""
        if isinstance(tokens, ApiTokens):
            return tokens
        return cls.parse(tokens if tokens is not None else os.environ.get("METAMORPH_API_TOKENS"))

    def __bool__(self) -> bool:
        return bool(self.tokens)

    def find(self, presented: str) -> ApiToken | None:
        """The token equal to ``presented``; compares with every token in constant time (no early exit)."""
        given = presented.encode()
        found = None
        for token in self.tokens:
            if hmac.compare_digest(given, token.secret):
                found = token
        return found


def _bearer(value: str | None) -> str | None:
    scheme, _, credential = (value or "").partition(" ")
    return credential.strip() or None if scheme.lower() == "bearer" else None


_PUBLIC = {"/", "/ui.js", "/ui.css", "/healthz", "/openapi.json"}
_READ_ONLY_POST = re.compile(r"^/workflows/.+/query/[^/]+$")  # a query reads, even though it is a POST


class BodyTooLarge(ValueError):
    """A request body over the limit; answered with 413 before anything reads it."""


class _Guard:
    """ASGI middleware: bound the body, then check the bearer token, then add security headers.

    The order matters: the size check comes first so an unauthenticated caller cannot make the server read
    a large body, and authentication runs before routing so that, with tokens set, an anonymous caller
    cannot even learn which routes exist (fail closed: a route added later is protected by default).
    """

    def __init__(self, app: Any, tokens: ApiTokens, max_body: int) -> None:
        self.app, self.tokens, self.max_body = app, tokens, max_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            refusal = _error(413, "PayloadTooLarge", f"the request body is over {self.max_body} bytes")
            await refusal(scope, receive, send)
            return
        denied = self._refusal(scope, headers)
        if denied is not None:
            await denied(scope, receive, send)
            return
        received = 0

        async def bounded() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:  # a chunked body without Content-Length
                raise BodyTooLarge(f"the request body is over {self.max_body} bytes")
            return message

        async def secure(message: dict) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, bounded, secure)

    def _refusal(self, scope: dict, headers: dict[str, str]) -> Response | None:
        path, method = route_path(scope), scope["method"]
        public = {path, scope["path"]}  # raw and decoded: both must be public, whichever a route matches
        if not self.tokens or public <= _PUBLIC or all(p.startswith("/webhooks/") for p in public):
            return None
        token = self.tokens.find(_bearer(headers.get("authorization")) or "")
        if token is None:
            response = _error(401, "Unauthorized", "this API needs Authorization: Bearer <token>")
            response.headers["WWW-Authenticate"] = 'Bearer realm="metamorph"'
            return response
        scope.setdefault("state", {})["principal"] = token.name
        if token.read_only and method not in SAFE_METHODS and not _READ_ONLY_POST.match(path):
            return _error(403, "Forbidden", f"token {token.name!r} is read-only")
        return None


# -- request helpers -------------------------------------------------------------------------------------
async def _body(request: Request) -> dict:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to parse
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _args(body: dict) -> list[Any]:
    args = body.get("args", [])
    if not isinstance(args, list):
        raise BadRequest('"args" must be a JSON array')
    return args


def _reason(body: dict) -> str | None:
    """The optional ``reason`` of terminate and pause: a string or absent."""
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise BadRequest('"reason" must be a string')
    return reason


def _timeout(body: dict, default: float = 10.0) -> float:
    value = body.get("timeout", default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise BadRequest('"timeout" must be a positive number of seconds')
    return float(value)


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {raw!r}") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}")
    return value


def _list_filters(request: Request) -> dict[str, Any]:
    """``search`` (repeatable ``key=value``, ``amount>100``...), ``started_after``, ``started_before``."""
    from .search import filters_from_text

    q = request.query_params
    return {"search": filters_from_text(q.getlist("search")),
            "started_after": q.get("started_after") or None, "started_before": q.get("started_before") or None}


def _start_options(body: dict) -> dict[str, Any]:
    """The API.md §6 start options of a start body, shape-checked; the Client checks their values (400)."""
    options: dict[str, Any] = {}
    for name in ("if_running", "if_closed", "start_signal"):
        if body.get(name) is not None:
            if not isinstance(body[name], str):
                raise BadRequest(f'"{name}" must be a string')
            options[name] = body[name]
    if body.get("start_signal_args") is not None:
        if not isinstance(body["start_signal_args"], list):
            raise BadRequest('"start_signal_args" must be a JSON array')
        options["start_signal_args"] = body["start_signal_args"]
    for name in ("start_delay", "timeout"):
        if body.get(name) is not None:
            if isinstance(body[name], bool) or not isinstance(body[name], int | float):
                raise BadRequest(f'"{name}" must be a number of seconds')
            options[name] = body[name]
    if body.get("priority") is not None:
        if isinstance(body["priority"], bool) or not isinstance(body["priority"], int):
            raise BadRequest('"priority" must be an integer, 0 (first) to 9')
        options["priority"] = body["priority"]
    for name in ("search", "memo"):
        if body.get(name) is not None:
            if not isinstance(body[name], dict):
                raise BadRequest(f'"{name}" must be a JSON object')
            options[name] = body[name]
    return options


# -- endpoints -------------------------------------------------------------------------------------------
class _Api:
    """The endpoints, bound to one Client."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return run_in_threadpool(fn, *args, **kwargs)

    async def healthz(self, request: Request) -> Response:
        return JSON({"status": "ok", "namespace": self.client.namespace})

    async def openapi(self, request: Request) -> Response:
        return JSON(openapi_document())

    async def list_workflows(self, request: Request) -> Response:
        """A page of workflows: ``cursor`` (keyset, stable while workflows arrive) or the older ``offset``."""
        limit = _int_param(request, "limit", 100, 1, MAX_PAGE)
        offset = _int_param(request, "offset", 0, 0, 2**31 - 1)
        q = request.query_params
        if offset and q.get("cursor"):
            raise BadRequest("pass either cursor or offset, not both")
        page = await self._call(
            self.client._list_page, q.get("status") or None, q.get("type") or None, limit, offset=offset,
            parent_id=q.get("parent_id") or None, cursor=q.get("cursor") or None, raw=True, **_list_filters(request),
        )
        rows = list(page)
        more = page.next_cursor is not None
        return JSON(
            {
                "workflows": rows,
                "limit": limit,
                "offset": offset,
                "next_offset": offset + limit if more else None,
                "next_cursor": page.next_cursor,
            }
        )

    async def count(self, request: Request) -> Response:
        q = request.query_params
        n = await self._call(self.client.count, q.get("status") or None, q.get("type") or None, **_list_filters(request))
        return JSON({"count": n})

    async def batch(self, request: Request) -> Response:
        """Act on every open workflow matching the filters (mutating: a read-only token gets 403)."""
        body = await _body(request)
        action = body.get("action")
        if not isinstance(action, str) or not action:
            raise BadRequest('"action" is required: cancel, terminate, signal, pause or resume')
        for name in ("status", "type", "reason", "signal"):
            if body.get(name) is not None and not isinstance(body[name], str):
                raise BadRequest(f'"{name}" must be a string')
        search = body.get("search")
        if search is not None and not isinstance(search, dict):
            raise BadRequest('"search" must be a JSON object of attribute filters')
        n = await self._call(
            self.client.batch, action, status=body.get("status"), type=body.get("type"), search=search,
            reason=body.get("reason"), signal=body.get("signal"), args=_args(body),
        )
        return JSON({"action": action, "count": n})

    async def start(self, request: Request) -> Response:
        body = await _body(request)
        wf_type = body.get("type")
        if not isinstance(wf_type, str) or not wf_type:
            raise BadRequest('"type" (the workflow type name) is required')
        workflow_id = body.get("id")
        if workflow_id is not None and (not isinstance(workflow_id, str) or not workflow_id):
            raise BadRequest('"id" must be a non-empty string')
        handle = await self._call(self.client.start, wf_type, *_args(body), id=workflow_id, **_start_options(body))
        location = f"/workflows/{quote(handle.id, safe='')}"
        return JSON({"id": handle.id}, status_code=201, headers={"Location": location})

    async def get_workflow(self, request: Request) -> Response:
        workflow_id = request.path_params["id"]
        return JSON(await self._call(self._details, workflow_id))

    def _details(self, workflow_id: str) -> dict:
        row = dict(self.client.get(workflow_id).describe())
        for part in ("history", "activities", "exceptions", "children", "runs", "signals"):
            row[part] = self.client._read(part, workflow_id)
        return row

    async def history(self, request: Request) -> Response:
        handle = self.client.get(request.path_params["id"])
        return JSON({"id": handle.id, "events": await self._call(handle.history)})

    async def signal(self, request: Request) -> Response:
        body = await _body(request)
        handle, name = self.client.get(request.path_params["id"]), request.path_params["name"]
        await self._call(handle.signal, name, *_args(body))
        return JSON({"id": handle.id, "signal": name}, status_code=202)

    async def query(self, request: Request) -> Response:
        return await self._ask(request, "query")

    async def update(self, request: Request) -> Response:
        return await self._ask(request, "update")

    async def _ask(self, request: Request, kind: str) -> Response:
        body = await _body(request)
        handle = self.client.get(request.path_params["id"])
        fn = handle.query if kind == "query" else handle.update
        result = await self._call(fn, request.path_params["name"], *_args(body), timeout=_timeout(body))
        return JSON({"id": handle.id, "result": result})

    async def cancel(self, request: Request) -> Response:
        handle = self.client.get(request.path_params["id"])
        await self._call(handle.cancel)
        return JSON({"id": handle.id, "requested": "cancel"}, status_code=202)

    async def terminate(self, request: Request) -> Response:
        body = await _body(request)
        reason = _reason(body)
        handle = self.client.get(request.path_params["id"])
        await self._call(handle.terminate, reason)
        return JSON({"id": handle.id, "requested": "terminate"}, status_code=202)

    async def pause(self, request: Request) -> Response:
        body = await _body(request)
        reason = _reason(body)
        handle = self.client.get(request.path_params["id"])
        await self._call(handle.pause, reason)
        return JSON({"id": handle.id, "requested": "pause"}, status_code=202)

    async def resume(self, request: Request) -> Response:
        handle = self.client.get(request.path_params["id"])
        await self._call(handle.resume)
        return JSON({"id": handle.id, "requested": "resume"}, status_code=202)

    async def reset(self, request: Request) -> Response:
        body = await _body(request)
        seq = body.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise BadRequest('"seq" (an integer: the last event the new run keeps) is required')
        handle = self.client.get(request.path_params["id"])
        await self._call(handle.reset, seq)
        return JSON({"id": handle.id, "requested": "reset", "seq": seq}, status_code=202)

    async def retry(self, request: Request) -> Response:
        handle = self.client.get(request.path_params["id"])
        try:
            await self._call(handle.retry)
        except ValueError as exc:  # not failed: a state conflict, not a bad request
            if isinstance(exc, PayloadTooLargeError):
                raise
            return _error(409, "NotRetryable", str(exc))
        return JSON({"id": handle.id, "requested": "retry"}, status_code=202)


# -- errors and metrics ----------------------------------------------------------------------------------
def _handlers() -> dict[Any, Callable[[Request, Exception], Any]]:
    def handler(status: int, error: str | None = None) -> Callable[[Request, Exception], Response]:
        def handle(request: Request, exc: Exception) -> Response:
            name = error or getattr(exc, "error_type", None) or type(exc).__name__
            message = getattr(exc, "message", None) or str(exc)
            return _error(status, name, redact(message))

        return handle

    def http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        name = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        detail = exc.detail if exc.status_code != 404 else f"no route {request.method} {request.url.path}"
        return _error(exc.status_code, name, detail)

    import psycopg
    from kafka.errors import KafkaError

    return {
        HTTPException: http_exception,
        BadRequest: handler(400, "BadRequest"),
        WorkflowNotFound: handler(404, "WorkflowNotFound"),
        QueryFailed: handler(409),
        WorkflowNotRunning: handler(409, "WorkflowNotRunning"),
        WorkflowAlreadyStarted: handler(409, "WorkflowAlreadyStarted"),
        # Any other ValueError from the Client is a parameter it refused (an unknown status filter, say).
        ValueError: handler(400, "BadRequest"),
        PayloadTooLargeError: handler(413, "PayloadTooLarge"),
        BodyTooLarge: handler(413, "PayloadTooLarge"),
        PayloadError: handler(400, "BadRequest"),  # arguments the client refuses (lone surrogates, too deep)
        ConnectionError: handler(503, "Unavailable"),
        KafkaError: handler(503, "Unavailable"),
        psycopg.OperationalError: handler(503, "Unavailable"),
        RuntimeError: handler(
            503, "Unavailable"
        ),  # not configured: no Postgres, no topics (run `metamorph init`)
        TimeoutError: handler(504, "Timeout"),
        Exception: handler(500, "InternalError"),
    }


class _CountRequests:
    """ASGI middleware: count every request by route template (low cardinality) and status."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def tap(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tap)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            metrics.http_requests.labels(route, str(status)).inc()


# -- the app ---------------------------------------------------------------------------------------------
_UI_DIR = Path(__file__).parent
_UI_ASSETS = {"/ui.js": ("ui.js", "text/javascript"), "/ui.css": ("ui.css", "text/css")}
# The page runs only its own script and style files: no inline script, no eval, no third-party origin. Data
# injected into the page could at worst be text; even a missed escape could not execute.
UI_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


async def _ui(request: Request) -> Response:
    """The dashboard: one static page over this same JSON API (no build step, nothing to install)."""
    return Response(
        (_UI_DIR / "ui.html").read_text(),
        media_type="text/html",
        headers={"Content-Security-Policy": UI_CSP, "Cache-Control": "no-cache"},
    )


async def _ui_asset(request: Request) -> Response:
    """The dashboard's script and style sheet, as separate files so the CSP can forbid inline script."""
    name, media_type = _UI_ASSETS[request.url.path]
    return Response(
        (_UI_DIR / name).read_text(),
        media_type=media_type,
        headers={"Content-Security-Policy": UI_CSP, "Cache-Control": "no-cache"},
    )


def create_app(
    client: Client,
    *,
    webhook_auth: str | None = None,
    webhook_token: str | None = None,
    webhook_secret: str | None = None,
    api_tokens: str | ApiTokens | None = None,
    max_body: int | None = None,
) -> Starlette:
    """The HTTP API (and the webhook routes) over ``client``.

    ``webhook_*`` override ``METAMORPH_WEBHOOK_AUTH`` / ``_TOKEN`` / ``_SECRET``; see :mod:`actors.webhooks`.
    ``api_tokens`` overrides ``METAMORPH_API_TOKENS`` and ``max_body`` ``METAMORPH_HTTP_MAX_BODY`` (bytes).
    """
    tokens = ApiTokens.configure(api_tokens)
    if max_body is None:
        max_body = int(os.environ.get("METAMORPH_HTTP_MAX_BODY") or MAX_BODY)
    api = _Api(client)
    wid = "/workflows/{id}"
    routes = [
        Route("/", _ui, methods=["GET"]),
        *(Route(path, _ui_asset, methods=["GET"]) for path in _UI_ASSETS),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
        Route("/workflows", api.list_workflows, methods=["GET"]),
        Route("/workflows", api.start, methods=["POST"]),
        # Before the "{id}" routes, which would take "count" and "batch" for workflow ids.
        Route("/workflows/count", api.count, methods=["GET"]),
        Route("/workflows/batch", api.batch, methods=["POST"]),
        # The suffixed routes before the bare one: "{id}" matches "a/b/history" too.
        IdRoute(wid + "/history", api.history, methods=["GET"]),
        *stream_http.routes(client),  # GET /workflows/{id}/stream (SSE), before the {id} catch-all
        IdRoute(wid + "/signal/{name}", api.signal, methods=["POST"]),
        IdRoute(wid + "/query/{name}", api.query, methods=["POST"]),
        IdRoute(wid + "/update/{name}", api.update, methods=["POST"]),
        IdRoute(wid + "/cancel", api.cancel, methods=["POST"]),
        IdRoute(wid + "/terminate", api.terminate, methods=["POST"]),
        IdRoute(wid + "/retry", api.retry, methods=["POST"]),
        IdRoute(wid + "/pause", api.pause, methods=["POST"]),
        IdRoute(wid + "/resume", api.resume, methods=["POST"]),
        IdRoute(wid + "/reset", api.reset, methods=["POST"]),
        IdRoute(wid, api.get_workflow, methods=["GET"]),
        *schedules_http.routes(client, _body, JSON),
        *webhooks.routes(client, webhooks.WebhookAuth.configure(webhook_auth, webhook_token, webhook_secret)),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers=_handlers(),
        middleware=[Middleware(_CountRequests), Middleware(_Guard, tokens=tokens, max_body=max_body)],
    )
    app.state.api_tokens = tokens
    return app


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, ``localhost``)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket up front, so a busy port is a clear error and port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def server(app: Starlette, sock: socket.socket, log_level: str = "warning") -> Any:
    """A uvicorn server for ``app`` on an already bound socket; ``.run(sockets=[sock])`` serves it.

    Warns when the socket is reachable from other machines and the app has no API tokens.
    """
    import uvicorn

    host, port = sock.getsockname()[:2]
    if not is_loopback(host) and not getattr(app.state, "api_tokens", None):
        log.warning(
            "the HTTP API listens on %s:%s, reachable from other machines, without authentication: anyone "
            "who can reach it may start, cancel and terminate workflows; set METAMORPH_API_TOKENS",
            host,
            port,
        )
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off"))


def serve(client: Client, host: str = "127.0.0.1", port: int = 8080, **webhook_options: Any) -> None:
    """Serve the API with uvicorn until SIGINT/SIGTERM (uvicorn handles the signals in the main thread)."""
    sock = bind(host, port)
    try:
        server(create_app(client, **webhook_options), sock, log_level="info").run(sockets=[sock])
    finally:
        sock.close()


# -- OpenAPI ---------------------------------------------------------------------------------------------
def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    return {str(c): {"$ref": f"#/components/responses/E{c}"} for c in sorted(codes)}


def _asset(media_type: str) -> dict:
    return {"200": {"description": "The file", "content": {media_type: {"schema": {"type": "string"}}}}}


def _path_param(name: str, description: str) -> dict:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": description,
    }


def _query_param(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _body_schema(schema: dict, required: bool = False) -> dict:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _op(
    op_id: str,
    summary: str,
    responses: dict,
    params: list | None = None,
    body: dict | None = None,
    tags: list | None = None,
) -> dict:
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "tags": tags or ["workflows"],
        "responses": responses,
    }
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = body
    return op


def openapi_document() -> dict:
    """The hand-written OpenAPI 3.1 description of every route of :func:`create_app`."""
    filter_params = [
        {**_query_param("search", {"type": "array", "items": {"type": "string"}},
                        "Search attribute filter (repeat): key=value, key!=value, key>N, key<=N, 'key in a,b'"),
         "style": "form", "explode": True},
        _query_param("started_after", {"type": "string", "format": "date-time"}, "Started at or after"),
        _query_param("started_before", {"type": "string", "format": "date-time"}, "Started before"),
    ]
    wid = _path_param("id", "Workflow id")
    name = _path_param("name", "Handler (method) name")
    accepted = _json(_ref("Accepted"), "Accepted: the command is durably in Kafka")
    call_body = _body_schema(_ref("CallRequest"))
    call_ok = _json(_ref("CallResult"), "The handler's return value")
    any_args = {"oneOf": [{"type": "object"}, {"type": "array"}]}
    paths = {
        "/": {
            "get": _op(
                "ui",
                "The dashboard (HTML)",
                {
                    "200": {
                        "description": "The dashboard page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
                tags=["ops"],
            )
        },
        "/ui.js": {"get": _op("uiScript", "The dashboard's script", _asset("text/javascript"), tags=["ops"])},
        "/ui.css": {"get": _op("uiStyle", "The dashboard's style sheet", _asset("text/css"), tags=["ops"])},
        "/healthz": {"get": _op("healthz", "Liveness", {"200": _json(_ref("Health"), "Up")}, tags=["ops"])},
        "/openapi.json": {
            "get": _op(
                "openapi", "This document", {"200": _json({"type": "object"}, "OpenAPI 3.1")}, tags=["ops"]
            )
        },
        "/workflows": {
            "get": _op(
                "listWorkflows",
                "List workflows, newest first, one page at a time",
                {"200": _json(_ref("WorkflowPage"), "A page of workflows"), **_errors(400, 503)},
                params=[
                    _query_param("status", _ref("Status"), "Only this status"),
                    _query_param("type", {"type": "string"}, "Only this workflow type"),
                    _query_param("parent_id", {"type": "string"}, "Only children of this workflow"),
                    _query_param(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 100},
                        "Page size",
                    ),
                    _query_param("offset", {"type": "integer", "minimum": 0, "default": 0}, "Rows to skip"),
                    _query_param("cursor", {"type": "string"}, "next_cursor of the previous page (keyset paging)"),
                    *filter_params,
                ],
            ),
            "post": _op(
                "startWorkflow",
                "Start a workflow (an existing id is not started twice unless a policy says so)",
                {"201": _json(_ref("Started"), "Start command accepted"), **_errors(400, 409, 413, 503, 504)},
                body=_body_schema(_ref("StartRequest"), required=True),
            ),
        },
        "/workflows/count": {
            "get": _op(
                "countWorkflows",
                "How many workflows match the list filters",
                {"200": _json(_ref("Count"), "The count"), **_errors(400, 503)},
                params=[_query_param("status", _ref("Status"), "Only this status"),
                        _query_param("type", {"type": "string"}, "Only this workflow type"), *filter_params],
            )
        },
        "/workflows/batch": {
            "post": _op(
                "batchWorkflows",
                "Cancel, terminate or signal every open workflow matching the filters",
                {"200": _json(_ref("BatchResult"), "How many were acted on"), **_errors(400, 503)},
                body=_body_schema(_ref("BatchRequest"), required=True),
            )
        },
        "/workflows/{id}": {
            "get": _op(
                "getWorkflow",
                "A workflow with its history, activities, exceptions, children, runs and signals",
                {"200": _json(_ref("WorkflowDetails"), "The workflow"), **_errors(404, 503)},
                params=[wid],
            )
        },
        "/workflows/{id}/history": {
            "get": _op(
                "getHistory",
                "The current run's events in order",
                {"200": _json(_ref("History"), "The events"), **_errors(404, 503)},
                params=[wid],
            )
        },
        "/workflows/{id}/signal/{name}": {
            "post": _op(
                "signalWorkflow",
                "Send a signal",
                {"202": accepted, **_errors(400, 404, 413, 503)},
                [wid, name],
                call_body,
            )
        },
        "/workflows/{id}/query/{name}": {
            "post": _op(
                "queryWorkflow",
                "Ask a query",
                {"200": call_ok, **_errors(400, 404, 409, 503, 504)},
                [wid, name],
                call_body,
            )
        },
        "/workflows/{id}/update/{name}": {
            "post": _op(
                "updateWorkflow",
                "Run an update",
                {"200": call_ok, **_errors(400, 404, 409, 503, 504)},
                [wid, name],
                call_body,
            )
        },
        "/workflows/{id}/cancel": {
            "post": _op(
                "cancelWorkflow", "Request cancellation", {"202": accepted, **_errors(404, 503)}, [wid]
            )
        },
        "/workflows/{id}/terminate": {
            "post": _op(
                "terminateWorkflow",
                "Terminate at once (no cleanup code runs)",
                {"202": accepted, **_errors(400, 404, 503)},
                [wid],
                _body_schema({"type": "object", "properties": {"reason": {"type": "string"}}}),
            )
        },
        "/workflows/{id}/retry": {
            "post": _op(
                "retryWorkflow", "Reset a failed workflow", {"202": accepted, **_errors(404, 409, 503)}, [wid]
            )
        },
        "/workflows/{id}/pause": {
            "post": _op(
                "pauseWorkflow", "Take no step until resumed", {"202": accepted, **_errors(400, 404, 409, 503)}, [wid],
                _body_schema({"type": "object", "properties": {"reason": {"type": "string"}}}),
            )
        },
        "/workflows/{id}/resume": {
            "post": _op("resumeWorkflow", "End a pause", {"202": accepted, **_errors(404, 409, 503)}, [wid])
        },
        "/workflows/{id}/reset": {
            "post": _op(
                "resetWorkflow", "A new run replaying history up to and including seq",
                {"202": accepted, **_errors(400, 404, 503)}, [wid],
                _body_schema({"type": "object", "required": ["seq"], "properties": {"seq": {"type": "integer"}}}),
            )
        },
        "/webhooks/start/{workflow_type}": {
            "post": _op(
                "webhookStart",
                "Start a @webhook workflow; a JSON object maps to execute()'s parameters by name, an array is positional",
                {"201": _json(_ref("Started"), "Start command accepted"), **_errors(400, 401, 404, 413, 503)},
                [
                    _path_param("workflow_type", "Registered workflow type name"),
                    _query_param("id", {"type": "string"}, "Workflow id (default: a new UUID)"),
                ],
                _body_schema(any_args),
                tags=["webhooks"],
            )
        },
        "/webhooks/signal/{workflow_type}/{id}/{signal}": {
            "post": _op(
                "webhookSignal",
                "Send a @webhook signal; the body maps to the handler's parameters",
                {"202": accepted, **_errors(400, 401, 404, 413, 503)},
                [
                    _path_param("workflow_type", "Workflow type name"),
                    wid,
                    _path_param("signal", "Signal name"),
                ],
                _body_schema(any_args),
                tags=["webhooks"],
            )
        },
    }
    paths.update(schedules_http.openapi_paths(_op, _json, _errors, _path_param, _body_schema))
    paths.update(stream_http.openapi_paths(_op, _errors, _path_param))
    for path, ops in paths.items():
        if path.startswith(("/workflows", "/schedules")):
            for method, op in ops.items():
                acts = method != "get" and not path.endswith("/query/{name}")
                op["responses"].update(_errors(401, 403) if acts else _errors(401))
                op["security"] = [{"apiToken": []}, {}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Metamorph",
            "version": "0.1.0",
            "description": "Start, steer and inspect durable workflows. Errors are {error, message} objects.",
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "responses": {f"E{c}": _json(_ref("Error"), text) for c, text in _ERROR_TEXT.items()},
            "securitySchemes": {
                "apiToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "METAMORPH_API_TOKENS (name:token, or ro:name:token for reading only); "
                    "required on /workflows routes when tokens are configured",
                },
                "webhookToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "METAMORPH_WEBHOOK_AUTH=token",
                },
                "webhookHeaderToken": {"type": "apiKey", "in": "header", "name": "X-Metamorph-Token"},
                "webhookSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Signature",
                    "description": "Hex HMAC-SHA256 of '<X-Metamorph-Timestamp>.<request target>.' + the raw "
                    "body (optional sha256= prefix); METAMORPH_WEBHOOK_AUTH=signature",
                },
            },
        },
    }


_ERROR_TEXT = {
    400: "Bad body or parameter",
    401: "Missing or invalid credentials (API bearer token, or webhook token/signature)",
    403: "The token is read-only",
    404: "Unknown workflow (or route)",
    409: "Refused by the workflow, or not in a state that allows it",
    413: "Payload too large",
    503: "Kafka or PostgreSQL unreachable (or not initialised)",
    504: "No answer in time",
}


def _schemas() -> dict:
    stamp = {"type": ["string", "null"], "format": "date-time"}
    event = {
        "type": "object",
        "required": ["seq", "type", "at"],
        "properties": {"seq": {"type": "integer"}, "type": {"type": "string"}, "at": stamp},
    }
    rows = {"type": "array", "items": {"type": "object"}}
    workflow = {
        "type": "object",
        "required": ["id", "type", "status"],
        "properties": {
            "id": {"type": "string"},
            "run_id": {"type": ["string", "null"]},
            "type": {"type": "string"},
            "status": _ref("Status"),
            "input": {},
            "output": {},
            "error_type": {"type": ["string", "null"]},
            "error_message": {"type": ["string", "null"]},
            "error_traceback": {"type": ["string", "null"]},
            "parent_id": {"type": ["string", "null"]},
            "search": {"type": "object"},
            "memo": {"type": "object"},
            "created_at": stamp,
            "updated_at": stamp,
        },
    }
    return {
        "Status": {
            "type": "string",
            "enum": [
                "pending",
                "running",
                "waiting",
                "blocked",
                "paused",
                "completed",
                "failed",
                "continued",
                "cancelled",
                "terminated",
            ],
        },
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
        },
        "Health": {
            "type": "object",
            "properties": {"status": {"const": "ok"}, "namespace": {"type": "string"}},
        },
        "Workflow": workflow,
        "WorkflowPage": {
            "type": "object",
            "required": ["workflows", "limit", "offset", "next_offset"],
            "properties": {
                "workflows": {"type": "array", "items": _ref("Workflow")},
                "limit": {"type": "integer"},
                "offset": {"type": "integer"},
                "next_offset": {"type": ["integer", "null"]},
                "next_cursor": {"type": ["string", "null"], "description": "Pass as cursor for the next page"},
            },
        },
        "Count": {"type": "object", "required": ["count"], "properties": {"count": {"type": "integer"}}},
        "BatchRequest": {
            "type": "object",
            "required": ["action"],
            "properties": {
                "action": {"type": "string", "enum": ["cancel", "terminate", "signal", "pause", "resume"]},
                "status": {"type": "string"},
                "type": {"type": "string"},
                "search": {"type": "object", "description": 'Attribute filters: {"k": v} or {"k": [op, v]}'},
                "reason": {"type": "string"},
                "signal": {"type": "string"},
                "args": {"type": "array", "default": []},
            },
        },
        "BatchResult": {
            "type": "object",
            "required": ["action", "count"],
            "properties": {"action": {"type": "string"}, "count": {"type": "integer"}},
        },
        "WorkflowDetails": {
            "allOf": [
                _ref("Workflow"),
                {
                    "type": "object",
                    "properties": {
                        "history": {"type": "array", "items": _ref("Event")},
                        "activities": rows,
                        "exceptions": rows,
                        "children": rows,
                        "runs": rows,
                        "signals": rows,
                    },
                },
            ]
        },
        "Event": event,
        "History": {
            "type": "object",
            "properties": {"id": {"type": "string"}, "events": {"type": "array", "items": _ref("Event")}},
        },
        "StartRequest": {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"type": "string", "description": "Workflow type name"},
                "args": {"type": "array", "default": []},
                "id": {"type": "string", "description": "Workflow id (default: a new UUID)"},
                "if_running": {"type": "string", "enum": ["use_existing", "fail", "terminate"], "default": "use_existing"},
                "if_closed": {"type": "string", "enum": ["use_existing", "fail", "allow", "allow_failed"],
                              "default": "use_existing"},
                "start_signal": {"type": "string", "description": "Signal-with-start: delivered before the first step"},
                "start_signal_args": {"type": "array", "default": []},
                "start_delay": {"type": "number", "minimum": 0, "description": "Seconds before the first step"},
                "timeout": {"type": "number", "exclusiveMinimum": 0,
                            "description": "Seconds the whole execution may take; then it ends timed_out"},
                "search": {"type": "object", "description": "Search attributes: str, number, bool, ISO datetime"},
                "memo": {"type": "object", "description": "Any JSON object, shown with the workflow"},
                "priority": {"type": "integer", "minimum": 0, "maximum": 9,
                             "description": "Activity task priority, 0 first (default 5)"},
            },
        },
        "Started": {
            "type": "object",
            "required": ["id"],
            "properties": {"id": {"type": "string"}, "type": {"type": "string"}},
        },
        "CallRequest": {
            "type": "object",
            "properties": {
                "args": {"type": "array", "default": []},
                "timeout": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "default": 10,
                    "description": "Seconds (queries and updates)",
                },
            },
        },
        "CallResult": {
            "type": "object",
            "required": ["id", "result"],
            "properties": {"id": {"type": "string"}, "result": {}},
        },
        "Accepted": {
            "type": "object",
            "required": ["id"],
            "properties": {
                "id": {"type": "string"},
                "signal": {"type": "string"},
                "requested": {"type": "string"},
            },
        },
    }
