"""``GET /workflows/{id}/stream``: a workflow's stream as Server-Sent Events (docs/API.md §10, §13).

Each item is one event whose ``id:`` is its position (1, 2, ... per workflow id, across continue-as-new)
and whose ``data:`` is the item as JSON. A browser's ``EventSource`` sends the last id it got as
``Last-Event-ID`` when it reconnects, and the stream resumes after it; other clients pass ``?after=N``.
When the workflow has ended and every item was sent, an ``event: end`` carries its final status and the
response ends; with ``?timeout=S`` an ``event: timeout`` ends it after S seconds if the workflow has not.
An unknown id is 404 and a bad ``after``/``timeout``/``Last-Event-ID`` 400 (before any event is sent).

Kept apart from ``http.py`` (registered there by one line, through :func:`routes`). The endpoint is
async end to end: it waits for items on one asyncio LISTEN connection per server (the projector's stream
channel), so an idle reader holds no thread; the short reads go to the thread pool like every read of
the HTTP API. A ``: keep-alive`` comment is sent while nothing happens, so proxies keep the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from actors.client.streams import afollow, check_after, check_timeout
from actors.errors import NotConfigured
from actors.interfaces.routing import IdRoute

if TYPE_CHECKING:
    from actors.client.aio import _AsyncTerminals
    from actors.client.sync import Client

#: Seconds of silence after which a comment line is sent (proxies close idle connections at 30-60 s).
KEEP_ALIVE = 15.0


def _position(raw: str, name: str) -> int:
    """A position from a query parameter or header: decimal digits only (ValueError → 400 otherwise)."""
    text = raw.strip()
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"{name} must be a stream position, an integer >= 0 (got {raw!r})")
    return check_after(int(text))


def _timeout(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"timeout must be a number of seconds > 0 (got {raw!r})") from None
    return check_timeout(value)


class _StreamEndpoint:
    def __init__(self, client: Client) -> None:
        self.client = client
        self._listener: _AsyncTerminals | None = None
        self._lock: asyncio.Lock | None = None

    async def listener(self) -> _AsyncTerminals:
        """One LISTEN connection per server for every SSE reader, made on first use in the server's loop."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._listener is None:
                from actors.client.aio import _AsyncTerminals
                from projections.db import notify_channel, stream_channel

                if not self.client.postgres:
                    raise NotConfigured("the stream reads the projections: serve needs METAMORPH_POSTGRES")
                listener = _AsyncTerminals(self.client.postgres, self.client.namespace,
                                           stream_channel(notify_channel(self.client.namespace)))
                await listener.start()
                self._listener = listener
        return self._listener

    async def handle(self, request: Request) -> Response:
        workflow_id = request.path_params["id"]
        last = request.headers.get("last-event-id")
        after = _position(last, "Last-Event-ID") if last else _position(request.query_params.get("after", "0"), "after")
        timeout = _timeout(request.query_params.get("timeout"))
        await run_in_threadpool(self.client._require, workflow_id)  # WorkflowNotFound → 404, before any byte
        listener = await self.listener()
        return StreamingResponse(self._events(listener, workflow_id, after, timeout), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _events(self, listener: _AsyncTerminals, workflow_id: str, after: int,
                      timeout: float | None) -> AsyncIterator[str]:
        client = self.client

        async def items(wid: str, position: int, limit: int) -> list[dict]:
            return await run_in_threadpool(client._read, "stream_items", wid, position, limit)  # type: ignore[no-any-return]

        async def row(wid: str) -> dict:
            return await run_in_threadpool(client._require, wid)  # type: ignore[no-any-return]

        source = afollow(items, row, listener, workflow_id, after, timeout).__aiter__()
        yield "retry: 1000\n\n"
        pending: asyncio.Task | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(source.__anext__())
                done, _ = await asyncio.wait({pending}, timeout=KEEP_ALIVE)
                if not done:
                    yield ": keep-alive\n\n"
                    continue
                task, pending = pending, None
                try:
                    item = task.result()
                except StopAsyncIteration:
                    status = (await row(workflow_id))["status"]
                    yield _event({"status": status}, kind="end")
                    return
                except TimeoutError:
                    yield _event({"message": f"workflow {workflow_id} has not ended after {timeout}s"}, kind="timeout")
                    return
                yield _event(item["value"], event_id=item["position"])
        finally:  # the reader went away (or the stream ended): stop the pending read, then the generator
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            await source.aclose()  # type: ignore[attr-defined]


def _event(value: Any, event_id: int | None = None, kind: str | None = None) -> str:
    """One SSE event; JSON has no raw newline, so ``data:`` is a single line."""
    lines = []
    if kind is not None:
        lines.append(f"event: {kind}")
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(value, separators=(",", ":"), ensure_ascii=False))
    return "\n".join(lines) + "\n\n"


def routes(client: Client) -> list:
    """The stream route over ``client`` (register it before the ``/workflows/{id}`` catch-all)."""
    return [IdRoute("/workflows/{id}/stream", _StreamEndpoint(client).handle, methods=["GET"])]
