"""Webhooks: let outside systems start workflows and signal them with a plain HTTP POST.

In the spirit of Laravel Workflow, nothing is reachable over a webhook unless the code opts in: ``@webhook``
on a Workflow subclass enables ``POST /webhooks/start/{workflow_type}``, and ``@webhook`` on a ``@signal``
method enables ``POST /webhooks/signal/{workflow_type}/{id}/{signal}``. Every other path under
``/webhooks`` is a 404, so exposing one workflow never exposes its neighbours::

    @webhook
    class OrderWorkflow(Workflow):
        name = "order"

        async def execute(self, order_id: str, amount: int = 1) -> str: ...

        @webhook
        @signal
        def approve(self, by: str) -> None: ...

The JSON body becomes the arguments: an object maps to the parameters of ``execute`` (or of the signal
handler) by name, an array is taken positionally, an empty body means no arguments. Arguments travel as a
positional list (that is what the event log records), so an object is turned into that list here, with the
parameters' defaults filling gaps.

Authentication (``METAMORPH_WEBHOOK_AUTH`` or the app's constructor arguments):

- ``none``: anyone who can reach the server may call the enabled routes.
- ``token``: ``Authorization: Bearer <token>`` or ``X-Metamorph-Token: <token>`` must equal
  ``METAMORPH_WEBHOOK_TOKEN``.
- ``signature``: ``X-Metamorph-Timestamp`` holds the sender's clock (unix seconds) and ``X-Signature`` the
  hex HMAC-SHA256, keyed with ``METAMORPH_WEBHOOK_SECRET``, of ``<timestamp>.<target>.<raw body>`` where
  target is the request path as sent, with its query string (``/webhooks/start/order?id=A-1``); see
  :func:`sign`. An optional ``sha256=`` prefix is accepted. Why more than the body: a signature over the
  body alone stays valid forever and on every route, so anyone who once saw a request could replay it or
  aim it at another workflow. A timestamp off by more than ``METAMORPH_WEBHOOK_TOLERANCE`` seconds (300)
  is refused, and so is a signature this process has already accepted within that window.

Without an explicit mode, a configured secret implies ``signature``, a configured token ``token``, and
nothing ``none``. Credentials are checked before the route is looked up, so an unauthenticated caller
cannot probe which workflows are exposed (it gets 401 everywhere).
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from actors.engine.definitions import Workflow, handler_for, workflows
from actors.interfaces.routing import IdRoute, route_path
from eventstore import settings

if TYPE_CHECKING:
    from actors.client.sync import Client

T = TypeVar("T")

_MARK = "__metamorph_webhook__"
MODES = ("none", "token", "signature")
TOLERANCE = 300  # seconds a signed request's timestamp may differ from this server's clock


def webhook(target: T) -> T:
    """Expose a Workflow subclass (start) or a ``@signal`` method (signal) over HTTP; see the module doc."""
    if isinstance(target, type):
        if not issubclass(target, Workflow):
            raise TypeError(f"@webhook on a class needs a Workflow subclass, not {target.__qualname__}")
    elif not callable(target):
        raise TypeError(f"@webhook applies to a Workflow subclass or a @signal method, not {target!r}")
    setattr(target, _MARK, True)
    return target


def start_enabled(cls: type) -> bool:
    """True if this very class was decorated (a subclass of a webhook workflow does not inherit the route)."""
    return bool(cls.__dict__.get(_MARK, False))


def signal_handler(cls: type, signal_name: str) -> Any | None:
    """The webhook-enabled signal handler function of ``cls`` named ``signal_name``, else None."""
    attr = handler_for(cls, "signal", signal_name)
    if attr is None:
        return None
    fn = getattr(cls, attr, None)
    return fn if getattr(fn, _MARK, False) else None


@dataclass(frozen=True)
class WebhookAuth:
    """How webhook callers prove who they are; build it with :meth:`configure`."""

    mode: str = "none"
    token: str | None = None
    secret: str | None = None
    tolerance: int = TOLERANCE
    _seen: _Seen = field(default_factory=lambda: _Seen(), compare=False, repr=False)

    @classmethod
    def configure(
        cls, mode: str | None = None, token: str | None = None, secret: str | None = None
    ) -> WebhookAuth:
        """Arguments win over ``METAMORPH_WEBHOOK_*``; refuses a mode whose credential is missing."""
        tolerance = settings.get("METAMORPH_WEBHOOK_TOLERANCE", TOLERANCE)
        token = token or settings.get("METAMORPH_WEBHOOK_TOKEN")
        secret = secret or settings.get("METAMORPH_WEBHOOK_SECRET")
        mode = (mode or settings.get("METAMORPH_WEBHOOK_AUTH") or "").strip().lower()
        if not mode:
            mode = "signature" if secret else "token" if token else "none"
        if mode not in MODES:
            raise ValueError(f"webhook auth must be one of {', '.join(MODES)}, not {mode!r}")
        if mode == "token" and not token:
            raise ValueError("webhook auth 'token' needs a token (METAMORPH_WEBHOOK_TOKEN)")
        if mode == "signature" and not secret:
            raise ValueError("webhook auth 'signature' needs a secret (METAMORPH_WEBHOOK_SECRET)")
        return cls(mode, token, secret, tolerance)

    def allows(self, headers: Any, body: bytes, target: str = "", now: float | None = None) -> bool:
        """Constant-time check of the request's credentials against the configured ones.

        ``target`` is the request path as sent plus ``?query`` if any (signature mode signs it).
        """
        if self.mode == "none":
            return True
        if self.mode == "token":
            given = _bearer(headers.get("authorization")) or headers.get("x-metamorph-token") or ""
            return hmac.compare_digest(given.encode(), (self.token or "").encode())
        stamp = (headers.get("x-metamorph-timestamp") or "").strip()
        now = time.time() if now is None else now
        if not stamp.isdigit() or abs(now - int(stamp)) > self.tolerance:
            return False
        given = (headers.get("x-signature") or "").strip()
        if given.lower().startswith("sha256="):
            given = given[len("sha256=") :]
        expected = sign(body, self.secret or "", stamp, target)
        if not hmac.compare_digest(given.lower().encode(), expected.encode()):
            return False
        return self._seen.first(expected, int(stamp) + self.tolerance, now)


class _Seen:
    """Signatures accepted recently, each kept until its timestamp leaves the tolerance window.

    Why: inside the window a captured request could otherwise be sent again verbatim. This covers one
    process; a sender that retries must sign again (a new timestamp gives a new signature).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until: dict[str, float] = {}

    def first(self, signature: str, until: float, now: float) -> bool:
        """Record ``signature``; False if it was already recorded and has not expired."""
        with self._lock:
            if len(self._until) > 1024:
                self._until = {s: t for s, t in self._until.items() if t >= now}
            if self._until.get(signature, -1.0) >= now:
                return False
            self._until[signature] = until
            return True


def sign(body: bytes, secret: str, timestamp: int | str, target: str) -> str:
    """The ``X-Signature`` value a sender computes: hex HMAC-SHA256 of ``<timestamp>.<target>.<body>``.

    ``timestamp`` is what the sender puts in ``X-Metamorph-Timestamp`` (unix seconds), ``target`` the path
    it posts to as sent (percent-encoded as on the wire) with ``?query`` if any.
    """
    message = f"{timestamp}.{target}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(body: bytes, secret: str, target: str, now: float | None = None) -> dict[str, str]:
    """The headers of a signed webhook request (for senders written in Python, and the tests)."""
    stamp = str(int(time.time() if now is None else now))
    return {"X-Metamorph-Timestamp": stamp, "X-Signature": "sha256=" + sign(body, secret, stamp, target)}


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, credential = value.partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else None


class BadArguments(ValueError):
    """The body cannot be turned into the target's arguments (a 400 for the caller)."""


def arguments(fn: Any, body: Any) -> list[Any]:
    """Turn a webhook body into the positional arguments of ``fn`` (``self`` excluded).

    Why by name: senders (form builders, SaaS webhooks) naturally post objects; the event log stores a
    positional list, so a missing middle parameter is filled with its default and unknown names are refused
    rather than silently dropped.
    """
    if body is None:
        return []
    if isinstance(body, list):
        return body
    if not isinstance(body, dict):
        raise BadArguments("the body must be a JSON object (arguments by name) or array (positional)")
    params = [
        p
        for p in list(inspect.signature(fn).parameters.values())[1:]
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    unknown = sorted(set(body) - {p.name for p in params})
    if unknown:
        raise BadArguments(
            f"unknown argument(s) {', '.join(unknown)}; expected {', '.join(p.name for p in params)}"
        )
    values: list[Any] = []
    pending: list[Any] = []  # defaults, kept only if a later argument is given
    for p in params:
        if p.name in body:
            values += pending + [body[p.name]]
            pending = []
        elif p.default is not p.empty:
            pending.append(p.default)
        else:
            raise BadArguments(f"missing argument {p.name!r}")
    return values


def routes(client: Client, auth: WebhookAuth) -> list[Route]:
    """The two webhook routes, bound to ``client`` and guarded by ``auth``."""
    return [
        Route("/webhooks/start/{workflow_type}", _start_endpoint(client, auth), methods=["POST"]),
        IdRoute("/webhooks/signal/{workflow_type}/{id}/{signal}", _signal_endpoint(client, auth), ["POST"]),
    ]


def _error(status: int, error: str, message: str) -> Response:
    return JSONResponse({"error": error, "message": message}, status_code=status)


def _target(request: Request) -> str:
    """The request target as the sender wrote it: raw path (still percent-encoded) and query string."""
    path = route_path(request.scope)
    query = request.scope.get("query_string", b"").decode("latin-1")
    return f"{path}?{query}" if query else path


async def _authenticated_body(request: Request, auth: WebhookAuth) -> tuple[Any, Response | None]:
    raw = await request.body()  # bounded by the app's body limit before this reads it
    if not auth.allows(request.headers, raw, _target(request)):
        return None, _error(401, "Unauthorized", f"missing or invalid webhook credentials ({auth.mode})")
    if not raw.strip():
        return None, None
    try:
        return json.loads(raw), None
    except ValueError as exc:
        return None, _error(400, "BadRequest", f"the body is not valid JSON: {exc}")


def _start_endpoint(client: Client, auth: WebhookAuth) -> Any:
    async def start(request: Request) -> Response:
        body, refusal = await _authenticated_body(request, auth)
        if refusal is not None:
            return refusal
        type_name = request.path_params["workflow_type"]
        cls = workflows().get(type_name)
        if cls is None or not start_enabled(cls):
            return _error(404, "NotFound", f"no webhook starts workflow type {type_name!r}")
        try:
            args = arguments(cls.execute, body)
        except BadArguments as exc:
            return _error(400, "BadRequest", str(exc))
        handle = await run_in_threadpool(
            client.start, type_name, *args, id=request.query_params.get("id") or None
        )
        return JSONResponse({"id": handle.id, "type": type_name}, status_code=201)

    return start


def _signal_endpoint(client: Client, auth: WebhookAuth) -> Any:
    async def signal(request: Request) -> Response:
        body, refusal = await _authenticated_body(request, auth)
        if refusal is not None:
            return refusal
        type_name, workflow_id, name = (request.path_params[k] for k in ("workflow_type", "id", "signal"))
        cls = workflows().get(type_name)
        fn = signal_handler(cls, name) if cls is not None else None
        if fn is None:
            return _error(404, "NotFound", f"no webhook sends signal {name!r} to workflow type {type_name!r}")
        handle = client.get(workflow_id)
        row = await run_in_threadpool(handle.describe)  # WorkflowNotFound becomes the app's 404
        if row.get("type") != type_name:  # the id exists, but as another type: not this route's business
            return _error(404, "WorkflowNotFound", f"no workflow {workflow_id!r} of type {type_name!r}")
        try:
            args = arguments(fn, body)
        except BadArguments as exc:
            return _error(400, "BadRequest", str(exc))
        await run_in_threadpool(handle.signal, name, *args)
        return JSONResponse({"id": workflow_id, "signal": name}, status_code=202)

    return signal
