"""The HTTP API: the Client's operations as typed JSON over HTTP, for dashboards, scripts and other languages.

Why FastAPI and Pydantic: every route's request and response bodies are models (actors/interfaces/http_models.py),
so bad input is refused naming the field, what an endpoint returns is checked against its model, and the
OpenAPI document at ``/openapi.json`` is generated from the same models: it cannot drift from the server.
The Client is synchronous (Kafka producer, psycopg), so the endpoints are plain functions that FastAPI runs
in its thread pool, never blocking the event loop.

Errors are always JSON ``{"error": <type>, "message": <text>}``, the status taken from the one error table
shared with the CLI's exit codes (``actors.errors.error_table``): 400 bad body or parameters (validation
errors too: never FastAPI's 422 list), 401 no or a wrong bearer token, 403 a read-only token on a route
that acts, 404 unknown workflow, schedule or route, 409 refused (query/update failed, workflow already
ended, already started, retry of a workflow that has not failed), 413 payload too large, 503 Kafka or
PostgreSQL unreachable, 504 no answer in time.

Security (docs/DESIGN.md, "Security"): with ``METAMORPH_API_TOKENS`` set, every route except the UI shell and its
assets, ``/healthz``, ``/openapi.json`` and the webhooks (which have their own credentials) needs
``Authorization: Bearer <token>``. Request bodies are bounded (``METAMORPH_HTTP_MAX_BODY``) before any
credential is looked at, so an anonymous caller cannot make the server buffer megabytes; the guard
middleware then refuses anonymous callers before routing (they cannot probe which routes exist), and each
route's permission dependency (``reading`` or ``acting``) refuses read-only tokens where it acts. Workflow
and schedule ids may hold any character: a client percent-encodes them (``/`` as ``%2F``) and the routes
match the raw path.
"""

from __future__ import annotations

import hmac
import inspect
import ipaddress
import json
import logging
import re
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, is_dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote
from uuid import UUID

from fastapi import Body, Depends, FastAPI, Query, Security
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from actors.errors import INTERNAL, NondeterminismError, NotRetryable, classify, error_table
from actors.interfaces import schedules_http, stream_http, webhooks
from actors.interfaces.http_models import (
    BatchRequest,
    BatchResult,
    CallRequest,
    CallResult,
    Count,
    ErrorBody,
    Health,
    History,
    NoBody,
    ReasonRequest,
    RecordedHistory,
    ReplayReport,
    Requested,
    ResetRequest,
    ResetRequested,
    RetryRequest,
    SignalAccepted,
    Started,
    StartRequest,
    UpdateWithStartRequest,
    WorkflowDetails,
    WorkflowPage,
)
from actors.interfaces.routing import IdAPIRoute, route_path
from eventstore import metrics, settings
from eventstore.log import PayloadTooLargeError
from eventstore.statuses import Status

if TYPE_CHECKING:
    from actors.client.sync import Client

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
        return cls.parse(tokens if tokens is not None else settings.get("METAMORPH_API_TOKENS"))

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


class BodyTooLarge(ValueError):
    """A request body over the limit; answered with 413 before anything reads it."""


class _Guard:
    """ASGI middleware: bound the body, then authenticate the bearer token, then add security headers.

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
        path = route_path(scope)
        public = {path, scope["path"]}  # raw and decoded: both must be public, whichever a route matches
        if not self.tokens or public <= _PUBLIC or all(p.startswith("/webhooks/") for p in public):
            return None
        token = self.tokens.find(_bearer(headers.get("authorization")) or "")
        if token is None:
            response = _error(401, "Unauthorized", "this API needs Authorization: Bearer <token>")
            response.headers["WWW-Authenticate"] = 'Bearer realm="metamorph"'
            return response
        scope.setdefault("state", {})["principal"] = token.name
        return None  # what the token may do is each route's permission dependency (reading / acting)


# -- permissions (FastAPI dependencies: declared per route, documented in the OpenAPI document) ------------
_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="apiToken",
    description="METAMORPH_API_TOKENS (name:token, or ro:name:token for reading only); required on every "
    "route but the UI, /healthz, /openapi.json and the webhooks when tokens are configured",
)


class ApiError(Exception):
    """An error answered as ``{error, message}`` with this status (and headers): auth and state refusals."""

    def __init__(self, status: int, error: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.headers = status, error, message, headers or {}


def _principal(request: Request, credentials: HTTPAuthorizationCredentials | None) -> ApiToken | None:
    """The caller's token (None when no tokens are configured); 401 without a valid one.

    The guard middleware already refused anonymous callers before routing; checking again here keeps a
    route safe even if it were mounted without that middleware.
    """
    tokens: ApiTokens = request.app.state.api_tokens
    if not tokens:
        return None
    token = tokens.find(credentials.credentials if credentials else "")
    if token is None:
        raise ApiError(401, "Unauthorized", "this API needs Authorization: Bearer <token>",
                       {"WWW-Authenticate": 'Bearer realm="metamorph"'})
    return token


async def reading(request: Request, credentials: HTTPAuthorizationCredentials | None = Security(_BEARER)) -> None:
    """Permission of a route that only reads: any valid token (a query is a read, though it is a POST)."""
    _principal(request, credentials)


async def acting(request: Request, credentials: HTTPAuthorizationCredentials | None = Security(_BEARER)) -> None:
    """Permission of a route that changes something: a token that is not read-only (403 otherwise)."""
    token = _principal(request, credentials)
    if token is not None and token.read_only:
        raise ApiError(403, "Forbidden", f"token {token.name!r} is read-only")


READS, ACTS = [Depends(reading)], [Depends(acting)]


# -- helpers ---------------------------------------------------------------------------------------------
def plain(value: Any) -> Any:
    """Projection values made JSON-native (decimals → numbers, UUIDs/bytes → text), datetimes kept."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool | datetime | date):
        return value
    return jsonable(value)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error responses of a route (each an ``ErrorBody``)."""
    return {c: {"model": ErrorBody, "description": _ERROR_TEXT[c]} for c in sorted(codes)}


_ERROR_TEXT = {
    400: "Bad body or parameter",
    401: "Missing or invalid credentials (API bearer token, or webhook token/signature)",
    403: "The token is read-only",
    404: "Unknown workflow, schedule or route",
    409: "Refused by the workflow, or not in a state that allows it",
    413: "Payload too large",
    503: "Kafka or PostgreSQL unreachable (or not initialised)",
    504: "No answer in time",
}


def _list_filters(search: list[str], started_after: datetime | None, started_before: datetime | None) -> dict:
    from actors.search import filters_from_text

    return {"search": filters_from_text(search), "started_after": started_after, "started_before": started_before}


def _supports(fn: Callable[..., Any], parameter: str) -> bool:
    try:
        return parameter in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


# -- the routes ------------------------------------------------------------------------------------------
def _add_workflow_routes(app: FastAPI, client: Client) -> None:
    """The ``/workflows`` routes (docs/API.md §3, §6, §7, §11), typed; plain ``def``: FastAPI runs them in its
    thread pool, as the Client blocks (Kafka producer, psycopg)."""
    Q = Query  # noqa: N806 - short alias, many uses
    status_q = Q(None, description="Only this status")
    type_q = Q(None, description="Only this workflow type")
    search_q = Q([], description="Search attribute filter (repeat): key=value, key!=value, key>N, key<=N, 'key in a,b'")
    after_q = Q(None, description="Started at or after (ISO 8601)")
    before_q = Q(None, description="Started before (ISO 8601)")
    read_errors = _errors(400, 401, 404, 503)
    act_codes = (400, 401, 403, 404, 409, 413, 503)
    act_errors = _errors(*act_codes)

    @app.get("/workflows", response_model=WorkflowPage, dependencies=READS, tags=["workflows"],
             operation_id="listWorkflows", responses=_errors(400, 401, 503))
    def list_workflows(
        status: Status | None = status_q, type: str | None = type_q,  # noqa: A002 - API name
        parent_id: str | None = Q(None, description="Only children of this workflow"),
        limit: int = Q(100, ge=1, le=MAX_PAGE, description="Page size"),
        offset: int = Q(0, ge=0, le=2**31 - 1, description="Rows to skip (prefer cursor)"),
        cursor: str | None = Q(None, description="next_cursor of the previous page (keyset paging)"),
        search: list[str] = search_q, started_after: datetime | None = after_q,
        started_before: datetime | None = before_q,
    ) -> dict:
        """List workflows, newest first, one page at a time (``cursor``: stable while workflows arrive)."""
        if offset and cursor:
            raise BadRequest("pass either cursor or offset, not both")
        page = client._list_page(status, type or None, limit, offset=offset, parent_id=parent_id or None,
                                 cursor=cursor or None, raw=True,
                                 **_list_filters(search, started_after, started_before))
        more = page.next_cursor is not None
        return {"workflows": plain(list(page)), "limit": limit, "offset": offset,
                "next_offset": offset + limit if more else None, "next_cursor": page.next_cursor}

    @app.post("/workflows", status_code=201, response_model=Started, dependencies=ACTS, tags=["workflows"],
              operation_id="startWorkflow", responses=_errors(400, 401, 403, 409, 413, 503, 504))
    def start(body: StartRequest, response: Response) -> dict:
        """Start a workflow with the options of docs/API.md §6 (an existing id is not started twice unless a
        policy says so; a policy makes this wait for the owning node's decision)."""
        options = body.model_dump(exclude_none=True, exclude={"type", "args", "id"})
        handle = client.start(body.type, *body.args, id=body.id, **options)
        response.headers["Location"] = f"/workflows/{quote(handle.id, safe='')}"
        return {"id": handle.id}

    @app.post("/workflows/update-with-start", response_model=CallResult, dependencies=ACTS, tags=["workflows"],
              operation_id="updateWithStart", responses=_errors(400, 401, 403, 409, 413, 503, 504))
    def update_with_start(body: UpdateWithStartRequest, response: Response) -> dict:
        """Start (under the §6 policies) and run an update on the open or new run, in one command (docs/API.md §6);
        answers the update's result. The execution ``timeout`` is not available here (the Client's
        update_with_start takes ``timeout`` as the update's)."""
        if body.timeout is not None:
            raise BadRequest('"timeout" (the execution timeout) is not available with update-with-start')
        options = body.model_dump(exclude_none=True, exclude={"type", "args", "id", "update", "update_args",
                                                              "update_timeout"})
        handle, result = client.update_with_start(body.type, *body.args, id=body.id, update=body.update,
                                                  update_args=body.update_args, timeout=body.update_timeout, **options)
        response.headers["Location"] = f"/workflows/{quote(handle.id, safe='')}"
        return {"id": handle.id, "result": result}

    # Before the "{id}" routes, which would take "count" and "batch" for workflow ids.
    @app.get("/workflows/count", response_model=Count, dependencies=READS, tags=["workflows"],
             operation_id="countWorkflows", responses=_errors(400, 401, 503))
    def count(status: Status | None = status_q, type: str | None = type_q,  # noqa: A002
              search: list[str] = search_q, started_after: datetime | None = after_q,
              started_before: datetime | None = before_q) -> dict:
        """How many workflows match the list filters (all pages)."""
        return {"count": client.count(status, type or None, **_list_filters(search, started_after, started_before))}

    @app.post("/workflows/batch", response_model=BatchResult, dependencies=ACTS, tags=["workflows"],
              operation_id="batchWorkflows", responses=_errors(400, 401, 403, 413, 503))
    def batch(body: BatchRequest) -> dict:
        """Cancel, terminate, signal, pause or resume every open workflow matching the filters."""
        n = client.batch(body.action, status=body.status, type=body.type, search=body.search,
                         reason=body.reason, signal=body.signal, args=body.args)
        return {"action": body.action, "count": n}

    # The suffixed routes before the bare one: "{id}" matches "a/b/history" too.
    @app.get("/workflows/{id}/history", response_model=History, dependencies=READS, tags=["workflows"],
             operation_id="getHistory", responses=read_errors)
    def history(id: str = WID) -> dict:  # noqa: A002
        """The current run's events in order (replayable: see POST /replay)."""
        handle = client.get(id)
        return {"id": handle.id, "events": plain(handle.history())}

    @app.get("/workflows/{id}/replay", response_model=ReplayReport, dependencies=READS, tags=["workflows"],
             operation_id="replayWorkflow", responses=read_errors)
    def replay_stored(id: str = WID) -> dict:  # noqa: A002
        """Replay the current run's stored history against this server's code (is a deploy safe for it?)."""
        return replay_report(client.get(id).history())

    @app.post("/workflows/{id}/signal/{name}", status_code=202, response_model=SignalAccepted,
              dependencies=ACTS, tags=["workflows"], operation_id="signalWorkflow", responses=act_errors)
    def signal(id: str = WID, name: str = NAME, body: CallRequest | None = None) -> dict:  # noqa: A002
        """Send a signal (409 if the workflow has ended)."""
        client.get(id).signal(name, *(body.args if body else []))
        return {"id": id, "signal": name}

    @app.post("/workflows/{id}/query/{name}", response_model=CallResult, dependencies=READS,
              tags=["workflows"], operation_id="queryWorkflow", responses=_errors(400, 401, 404, 409, 413, 503, 504))
    def query(id: str = WID, name: str = NAME, body: CallRequest | None = None) -> dict:  # noqa: A002
        """Ask a query (a read: read-only tokens may)."""
        body = body or CallRequest()
        return {"id": id, "result": client.get(id).query(name, *body.args, timeout=body.timeout)}

    @app.post("/workflows/{id}/update/{name}", response_model=CallResult, dependencies=ACTS,
              tags=["workflows"], operation_id="updateWorkflow", responses=_errors(*act_codes, 504))
    def update(id: str = WID, name: str = NAME, body: CallRequest | None = None) -> dict:  # noqa: A002
        """Run an update and return its result."""
        body = body or CallRequest()
        return {"id": id, "result": client.get(id).update(name, *body.args, timeout=body.timeout)}

    def requested(path: str, op: str, doc: str, call: Callable[[Any, Any], Any], model: type = ReasonRequest) -> None:
        def endpoint(id: str = WID, body: Any = None) -> dict:  # noqa: A002
            call(client.get(id), body or model())
            return {"id": id, "requested": path}

        # Real types, not the strings of ``from __future__ import annotations``: ``model`` is a local.
        endpoint.__annotations__ = {"id": str, "body": model | None, "return": dict}
        endpoint.__doc__ = doc
        app.add_api_route(f"/workflows/{{id}}/{path}", endpoint, methods=["POST"], status_code=202,
                          response_model=Requested, dependencies=ACTS, tags=["workflows"], operation_id=op,
                          responses=act_errors, name=path)

    requested("cancel", "cancelWorkflow", "Request cancellation (the workflow's cleanup code runs).",
              lambda h, b: h.cancel(), NoBody)
    requested("terminate", "terminateWorkflow", "Terminate at once (no cleanup code runs).",
              lambda h, b: h.terminate(b.reason))
    requested("pause", "pauseWorkflow", "Take no step until resumed (docs/API.md §7).", lambda h, b: h.pause(b.reason))
    requested("resume", "resumeWorkflow", "End a pause.", lambda h, b: h.resume(), NoBody)

    @app.post("/workflows/{id}/retry", status_code=202, response_model=Requested, dependencies=ACTS,
              tags=["workflows"], operation_id="retryWorkflow", responses=act_errors)
    def retry(id: str = WID, body: RetryRequest | None = None) -> dict:  # noqa: A002
        """Reset a failed workflow to its last good step (``force``: even a compensated saga, when the
        client supports it). 409 NotRetryable for a workflow that has not failed."""
        handle = client.get(id)
        force = bool(body and body.force)
        try:
            if force:
                retry_with: Callable[..., None] = handle.retry  # force=: added with compensated sagas
                if not _supports(retry_with, "force"):
                    raise BadRequest('"force" is not supported by this version of the client')
                retry_with(force=True)
            else:
                handle.retry()
        except ValueError as exc:  # not failed: a state conflict, not a bad request
            if isinstance(exc, PayloadTooLargeError | BadRequest | NotRetryable):
                raise
            raise NotRetryable(str(exc)) from None
        return {"id": id, "requested": "retry"}

    @app.post("/workflows/{id}/reset", status_code=202, response_model=ResetRequested, dependencies=ACTS,
              tags=["workflows"], operation_id="resetWorkflow", responses=act_errors)
    def reset(body: ResetRequest, id: str = WID) -> dict:  # noqa: A002
        """A new run replaying the history up to and including ``seq``, then live (docs/API.md §7)."""
        client.get(id).reset(body.seq)
        return {"id": id, "requested": "reset", "seq": body.seq}

    @app.get("/workflows/{id}", response_model=WorkflowDetails, dependencies=READS, tags=["workflows"],
             operation_id="getWorkflow", responses=read_errors)
    def get_workflow(id: str = WID) -> dict:  # noqa: A002
        """A workflow with its history, activities, exceptions, children, runs and signals."""
        row = dict(client.get(id).describe())
        for part in ("history", "activities", "exceptions", "children", "runs", "signals"):
            row[part] = client._read(part, id)
        return plain(row)

    @app.post("/replay", response_model=ReplayReport, dependencies=READS, tags=["workflows"],
              operation_id="replayHistory", responses=_errors(400, 401, 404, 413))
    def replay(body: list[dict[str, Any]] | RecordedHistory = Body(
            description="A history as `metamorph history ID --json` or GET /workflows/{id}/history writes it")) -> dict:
        """Replay a recorded history against the workflow code this server imported (``serve --app``) and
        report the first non-determinism (docs/API.md §11); nothing is started or changed."""
        return replay_report(body.model_dump() if isinstance(body, RecordedHistory) else body)


def replay_report(doc: Any) -> dict:
    """Replay one history document against this process's workflow classes: the ReplayReport as a dict.

    400 for a document that is not a history, 404 ``UnknownWorkflowType`` when the code is not imported.
    """
    from actors.engine import replayer
    from actors.engine.definitions import workflows

    try:
        history = replayer.load_history(doc)
    except (ValueError, TypeError, KeyError) as exc:
        raise BadRequest(f"not a replayable history: {exc}") from None
    report = {"workflow_id": history.workflow_id, "workflow_type": history.workflow_type,
              "run_id": history.run_id, "events": len(history.events)}
    cls = workflows().get(history.workflow_type)
    if cls is None:
        raise ApiError(404, "UnknownWorkflowType", f"this server does not have the code of workflow type "
                       f"{history.workflow_type!r} (start serve with --app MODULE)")
    try:
        status = replayer.replay(history, cls)
    except NondeterminismError as exc:
        finding = {"seq": exc.seq, "recorded": exc.recorded, "issued": exc.issued, "message": str(exc)}
        return {**report, "deterministic": False, "nondeterminism": finding}
    return {**report, "deterministic": True, "status": str(status)}


WID = PathParam(description="Workflow id, percent-encoded (any character, '/' as %2F)")
NAME = PathParam(description="Handler (method) name")


def _add_ops_routes(app: FastAPI) -> None:
    html = {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "The dashboard page"}
    app.add_api_route("/", _ui, methods=["GET"], response_class=HTMLResponse, tags=["ops"], operation_id="ui",
                      responses={200: html}, summary="The dashboard (HTML)")
    for path, (name, media_type) in _UI_ASSETS.items():
        app.add_api_route(path, _ui_asset, methods=["GET"], response_class=Response, tags=["ops"],
                          operation_id="ui_" + name.replace(".", "_"), summary=f"The dashboard's {name}",
                          responses={200: {"content": {media_type: {"schema": {"type": "string"}}},
                                           "description": "The file"}})

    @app.get("/healthz", response_model=Health, tags=["ops"], operation_id="healthz")
    async def healthz(request: Request) -> dict:
        """Liveness: the process answers (it does not probe Kafka or PostgreSQL)."""
        return {"status": "ok", "namespace": request.app.state.namespace}

    @app.get("/openapi.json", tags=["ops"], operation_id="openapi", response_model=dict[str, Any])
    async def openapi(request: Request) -> Response:
        """This document (OpenAPI 3.1), generated from the routes' typed models."""
        return JSON(request.app.openapi())


# -- errors ----------------------------------------------------------------------------------------------
def _tabled(request: Request, exc: Exception) -> Response:
    """Every error of the one error table (actors.errors) as ``{error, message}`` with its status."""
    kind = classify(exc)
    name = kind.error or getattr(exc, "error_type", None) or type(exc).__name__
    message = getattr(exc, "message", None) or str(exc) or name
    if kind is INTERNAL:
        log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(kind.status, name, redact(str(message)))


def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    response = _error(exc.status, exc.error, exc.message)
    response.headers.update(exc.headers)
    return response


def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    name = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
    detail = exc.detail if exc.status_code != 404 else f"no route {request.method} {request.url.path}"
    return _error(exc.status_code, name, str(detail))


def _invalid(request: Request, exc: Exception) -> Response:
    """A request the models refuse: 400 ``BadRequest`` naming the field (not FastAPI's 422 list)."""
    assert isinstance(exc, RequestValidationError)
    return _error(400, "BadRequest", validation_message(exc.errors()))


def validation_message(errors: Any) -> str:
    """One readable sentence per validation error: ``"timeout": Input should be a valid number``."""
    parts = []
    for e in errors:
        loc = [str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path", "header")]
        where = ".".join(loc)
        if tuple(e.get("loc", ())) == ("body",) and isinstance(e.get("input"), bytes | bytearray):
            return "the body must be JSON, sent as Content-Type: application/json"
        if e.get("type") == "json_invalid":
            return f"the body is not valid JSON: {(e.get('ctx') or {}).get('error', e.get('msg'))}"
        if e.get("type") in ("enum", "literal_error"):
            parts.append(f"unknown {where or 'value'} {e.get('input')!r}: {e.get('msg')}")
        elif e.get("type") == "missing":
            parts.append(f'"{where}" is required')
        else:
            parts.append(f'"{where}": {e.get("msg")}' if where else str(e.get("msg")))
    return "; ".join(parts) or "invalid request"


def _handlers() -> dict[Any, Callable[[Request, Exception], Any]]:
    handlers: dict[Any, Callable[[Request, Exception], Any]] = {kind: _tabled for kind, _ in error_table()}
    handlers.update({
        ApiError: _api_error, HTTPException: _http_exception, RequestValidationError: _invalid,
        BadRequest: _tabled, BodyTooLarge: lambda r, e: _error(413, "PayloadTooLarge", str(e)),
        Exception: _tabled,
    })
    return handlers


# -- raw Starlette routes --------------------------------------------------------------------------------
# Routes that are not typed FastAPI routes (the webhooks verify a signature over the raw body; a stream
# answers text/event-stream) are documented here, by route template and method, so the generated document
# still covers every route. A raw route without an entry fails create_app: nothing is served undocumented.
_SSE = {"description": "Server-Sent Events: `id:` the position, `data:` the item as JSON; then `event: end` "
                       "(data: the final status) or `event: timeout`",
        # Any event: a reconnect hint (`retry:`) has no data, an item's data is any JSON value.
       "content": {"text/event-stream": {"schema": {}}}}
RAW_ROUTE_DOCS: dict[tuple[str, str], dict[str, Any]] = {
    ("/workflows/{id}/stream", "GET"): {
        "operationId": "streamWorkflow", "tags": ["workflows"],
        "summary": "The items the workflow streams, live (Server-Sent Events, resumable; docs/API.md §10)",
        "parameters": [
            {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "Workflow id, percent-encoded"},
            {"name": "after", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0},
             "description": "Start after this position (Last-Event-ID, when sent, wins)"},
            {"name": "timeout", "in": "query", "required": False,
             "schema": {"type": "number", "exclusiveMinimum": 0},
             "description": "End with `event: timeout` after this many seconds if the workflow has not ended"},
            {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"},
             "description": "The last position received (sent by EventSource on reconnect)"},
        ],
        "responses": {"200": _SSE},
        "security": [{"apiToken": []}],
        "x-error-codes": [400, 401, 404, 503],
    },
    ("/webhooks/start/{workflow_type}", "POST"): {
        "operationId": "webhookStart", "tags": ["webhooks"],
        "summary": "Start a @webhook workflow; a JSON object maps to execute()'s parameters by name, an array is positional",
        "parameters": [
            {"name": "workflow_type", "in": "path", "required": True, "schema": {"type": "string"}},
            {"name": "id", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "Workflow id (default: a new UUID)"},
        ],
        "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/WebhookBody"}}}},
        "responses": {"201": {"description": "Started", "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/WebhookStarted"}}}}},
        "security": [{"webhookToken": []}, {"webhookHeaderToken": []}, {"webhookSignature": []}, {}],
        "x-error-codes": [400, 401, 404, 413, 503],
    },
    ("/webhooks/signal/{workflow_type}/{id}/{signal}", "POST"): {
        "operationId": "webhookSignal", "tags": ["webhooks"],
        "summary": "Send a @webhook signal; the body maps to the handler's parameters",
        "parameters": [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
            for n in ("workflow_type", "id", "signal")
        ],
        "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/WebhookBody"}}}},
        "responses": {"202": {"description": "Accepted", "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SignalAccepted"}}}}},
        "security": [{"webhookToken": []}, {"webhookHeaderToken": []}, {"webhookSignature": []}, {}],
        "x-error-codes": [400, 401, 404, 409, 413, 503],
    },
}
_WEBHOOK_SCHEMES = {
    "webhookToken": {"type": "http", "scheme": "bearer", "description": "METAMORPH_WEBHOOK_AUTH=token"},
    "webhookHeaderToken": {"type": "apiKey", "in": "header", "name": "X-Metamorph-Token"},
    "webhookSignature": {
        "type": "apiKey", "in": "header", "name": "X-Signature",
        "description": "Hex HMAC-SHA256 of '<X-Metamorph-Timestamp>.<request target>.' + the raw body (optional "
        "sha256= prefix); METAMORPH_WEBHOOK_AUTH=signature",
    },
}


def _template(route: BaseRoute) -> str:
    return getattr(route, "path", "")


def _generate(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document: FastAPI's, generated from the typed routes, plus the raw routes' entries.

    Adjusted where FastAPI's defaults are not what the API does: request validation errors are 400
    ``ErrorBody`` (not 422), and every error response is an ``ErrorBody``.
    """
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                      openapi_version="3.1.0")
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    from pydantic import TypeAdapter

    schemas["WebhookBody"] = TypeAdapter(dict[str, Any] | list[Any]).json_schema()
    schemas["WebhookBody"]["description"] = "Arguments by name (object) or by position (array); empty: none"
    schemas["WebhookStarted"] = {"type": "object", "required": ["id", "type"],
                                 "properties": {"id": {"type": "string"}, "type": {"type": "string"}}}
    schemas.setdefault("ErrorBody", ErrorBody.model_json_schema())
    error_ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    for ops in doc.get("paths", {}).values():
        for op in ops.values():
            responses = op.get("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", {"description": _ERROR_TEXT[400], **error_ref})
    for route in app.routes:
        if isinstance(route, APIRoute) or not isinstance(route, Route):
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            entry = RAW_ROUTE_DOCS.get((_template(route), method))
            if entry is None:
                continue
            op = {k: v for k, v in entry.items() if k != "x-error-codes"}
            op["responses"] = {**op["responses"], **{
                str(c): {"description": _ERROR_TEXT[c], **error_ref} for c in entry["x-error-codes"]}}
            doc.setdefault("paths", {}).setdefault(_template(route), {})[method.lower()] = op
    components.setdefault("securitySchemes", {}).update(_WEBHOOK_SCHEMES)
    app.openapi_schema = doc
    return doc


def _check_routes(app: FastAPI, tokens: ApiTokens) -> None:
    """Fail closed at start: every typed route outside the public ones declares a permission, and every raw
    route is documented and, if it acts, is a webhook (which has its own credentials)."""
    permissions = {reading, acting}
    for route in app.routes:
        path = _template(route)
        if isinstance(route, APIRoute):
            declared = {d.call for d in route.dependant.dependencies}
            if path not in _PUBLIC and not declared & permissions:
                raise RuntimeError(f"route {path} declares no permission (reading or acting)")
        elif isinstance(route, Route):
            for method in (route.methods or set()) - {"HEAD"}:
                if (path, method) not in RAW_ROUTE_DOCS:
                    raise RuntimeError(f"raw route {method} {path} is not documented (RAW_ROUTE_DOCS)")
                if method not in SAFE_METHODS and not path.startswith("/webhooks/"):
                    raise RuntimeError(f"raw route {method} {path} acts but has no permission check")


# -- the app ---------------------------------------------------------------------------------------------
def create_app(
    client: Client | None,
    *,
    webhook_auth: str | None = None,
    webhook_token: str | None = None,
    webhook_secret: str | None = None,
    api_tokens: str | ApiTokens | None = None,
    max_body: int | None = None,
    raw_routes: list[BaseRoute] | None = None,
) -> FastAPI:
    """The HTTP API (and the webhook routes) over ``client``.

    ``webhook_*`` override ``METAMORPH_WEBHOOK_AUTH`` / ``_TOKEN`` / ``_SECRET``; see :mod:`actors.interfaces.webhooks`.
    ``api_tokens`` overrides ``METAMORPH_API_TOKENS`` and ``max_body`` ``METAMORPH_HTTP_MAX_BODY`` (bytes).
    ``raw_routes``: extra Starlette routes (matched before the typed ones; each documented in
    ``RAW_ROUTE_DOCS``). ``client`` None builds the app only to describe it (``openapi_document``).
    """
    tokens = ApiTokens.configure(api_tokens)
    if max_body is None:
        max_body = settings.get("METAMORPH_HTTP_MAX_BODY", MAX_BODY)
    app = FastAPI(
        title="Metamorph",
        version="0.1.0",
        description="Start, steer and inspect durable workflows (docs/API.md §6–§11). Errors are `{error, message}` "
        "objects; ids may hold any character (percent-encode them, '/' as %2F).",
        openapi_url=None, docs_url=None, redoc_url=None,  # /openapi.json is a documented route; no CDN pages
        strict_content_type=False,  # a body without Content-Type is JSON (as before); another type is refused
        exception_handlers=_handlers(),
        middleware=[Middleware(_CountRequests), Middleware(_Guard, tokens=tokens, max_body=max_body)],
    )
    app.router.route_class = IdAPIRoute
    app.state.api_tokens = tokens
    app.state.namespace = client.namespace if client is not None else "default"
    app.openapi = lambda: _generate(app)  # type: ignore[method-assign]
    _add_ops_routes(app)
    any_client = cast("Client", client)
    _add_workflow_routes(app, any_client)
    schedules_http.add_routes(app, any_client)
    raw: list[BaseRoute] = [
        *(raw_routes or []),
        *stream_http.routes(any_client),  # GET /workflows/{id}/stream (SSE)
        *webhooks.routes(any_client, webhooks.WebhookAuth.configure(webhook_auth, webhook_token, webhook_secret)),
    ]
    app.router.routes[:0] = raw  # before "/workflows/{id}", which would take "x/stream" for an id
    _check_routes(app, tokens)
    return app


def openapi_document() -> dict:
    """The OpenAPI 3.1 document of :func:`create_app`, generated from its typed routes (no server needed)."""
    return create_app(None, webhook_auth="none", api_tokens="").openapi()


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


def server(app: FastAPI, sock: socket.socket, log_level: str = "warning") -> Any:
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


