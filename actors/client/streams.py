"""Reading workflow streams (docs/API.md §10): ``handle.stream()``, its async twin and the SSE endpoint.

What a reader sees: the items ``workflow.stream(value)`` appended, numbered per workflow id from 1 (the
projector numbers them in log order, across every run of the id, so a reader following an id keeps
reading through continue-as-new), each item once, in order. ``after=N`` starts after position N, so the
k-th item a reader gets has position ``after + k`` and a reconnecting reader passes the last position it
saw. The iteration ends when the workflow has a final status (completed, failed, cancelled, terminated,
timed out; ``continued`` is not final) and every item was read; ``timeout`` bounds the whole iteration
(``TimeoutError`` when it passes first).

Live delivery: the projector sends ``NOTIFY <stream channel>, '<workflow id>'`` in the transaction that
stores items (and when a workflow ends); each client holds one LISTEN connection for all its readers
(``_Terminals`` on that channel) and a reader re-reads the projection when woken. So an item reaches a
reader one projector batch after the node appended it, with no polling; a missed notification (a
reconnect) costs one re-read, never a lost item, because every wait is bounded (5 s) and followed by a
read. The sync and async loops below are the same algorithm over blocking and awaitable reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from actors.errors import WorkflowNotFound
from eventstore import statuses

#: Items read per round trip.
BATCH = 500
#: Longest sleep between re-reads when no notification comes (a safety net, not the delivery path).
_IDLE_RECHECK = 5.0
#: How long an id unknown to the projections may stay unknown (just started by another client).
_NOT_FOUND_GRACE = 5.0


def check_after(after: Any) -> int:
    """A valid ``after`` position (an int >= 0; bools and strings are refused with a ValueError)."""
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise ValueError(f"after must be a position, an integer >= 0 (got {after!r})")
    return after


def check_timeout(timeout: Any) -> float | None:
    """A valid ``timeout`` in seconds (None, or a number > 0)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0 or None (got {timeout!r})")
    return float(timeout)


class _Loop:
    """The state both loops share: position, deadline, what to do after an empty read."""

    def __init__(self, workflow_id: str, after: Any, timeout: Any) -> None:
        self.workflow_id = workflow_id
        self.position = check_after(after)
        self.timeout = check_timeout(timeout)
        self.started = time.monotonic()
        self.deadline = None if self.timeout is None else self.started + self.timeout

    def not_found(self, exc: WorkflowNotFound) -> float:
        """How long to wait before looking again for an id the projections do not have yet (or raise)."""
        now = time.monotonic()
        if now - self.started > _NOT_FOUND_GRACE or (self.deadline is not None and now > self.deadline):
            raise exc
        return 0.05

    def wait_for(self, status: str) -> float:
        """How long to sleep for a notification; TimeoutError once the deadline has passed."""
        if self.deadline is None:
            return _IDLE_RECHECK
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"workflow {self.workflow_id} is still {status} after {self.timeout}s "
                               f"(stream read up to position {self.position})")
        return min(remaining, _IDLE_RECHECK)


def follow(read_items: Callable[[str, int, int], list[dict]], read_row: Callable[[str], dict],
           listener: Any, workflow_id: str, after: Any = 0, timeout: Any = None) -> Iterator[dict]:
    """Yield stream items (``position``, ``value``, ``run_id``, ``at``) as they are projected (blocking).

    ``listener`` is a ``_Terminals`` on the stream channel; ``read_row`` raises ``WorkflowNotFound``.
    """
    loop = _Loop(workflow_id, after, timeout)
    while True:
        wake = listener.expect(workflow_id)  # before the read: a NOTIFY after it is not missed
        try:
            items = read_items(workflow_id, loop.position, BATCH)
            if not items:
                try:
                    row = read_row(workflow_id)
                except WorkflowNotFound as exc:
                    wake.wait(loop.not_found(exc))
                    continue
                if row["status"] in statuses.FINAL:
                    items = read_items(workflow_id, loop.position, BATCH)  # stored with the end, after our read
                    if not items:
                        return
                else:
                    wake.wait(loop.wait_for(row["status"]))
                    continue
        finally:
            listener.forget(workflow_id, wake)
        for item in items:
            loop.position = item["position"]
            yield item


async def afollow(read_items: Callable[[str, int, int], Awaitable[list[dict]]],
                  read_row: Callable[[str], Awaitable[dict]], listener: Any, workflow_id: str,
                  after: Any = 0, timeout: Any = None) -> AsyncIterator[dict]:
    """:func:`follow` on asyncio: ``listener`` is an ``_AsyncTerminals`` (or anything whose ``expect``
    returns an ``asyncio.Event``); reads are awaited, so no thread waits for the next item."""
    loop = _Loop(workflow_id, after, timeout)
    while True:
        wake = listener.expect(workflow_id)
        try:
            items = await read_items(workflow_id, loop.position, BATCH)
            if not items:
                try:
                    row = await read_row(workflow_id)
                except WorkflowNotFound as exc:
                    await _sleep_on(wake, loop.not_found(exc))
                    continue
                if row["status"] in statuses.FINAL:
                    items = await read_items(workflow_id, loop.position, BATCH)
                    if not items:
                        return
                else:
                    await _sleep_on(wake, loop.wait_for(row["status"]))
                    continue
        finally:
            listener.forget(workflow_id, wake)
        for item in items:
            loop.position = item["position"]
            yield item


async def _sleep_on(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
