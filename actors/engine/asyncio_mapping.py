"""Map ``asyncio.gather``, ``sleep``, ``wait`` and ``wait_for`` to their durable twins inside workflow code.

Users write ordinary async Python, and ordinary async Python gathers and sleeps. The patched functions
check whether the calling thread is driving a workflow; everywhere else (activities on a real event loop,
the HTTP server) they are the untouched originals.
"""

from __future__ import annotations

import asyncio
from typing import Any

from actors.engine.runtime import current, in_workflow

_original_gather = asyncio.gather
_original_sleep = asyncio.sleep
_original_wait = asyncio.wait
_original_wait_for = asyncio.wait_for


def _gather(*aws: Any, return_exceptions: bool = False) -> Any:
    if in_workflow():
        return current().all(aws, return_exceptions)
    return _original_gather(*aws, return_exceptions=return_exceptions)


def _sleep(delay: float, result: Any = None) -> Any:
    if in_workflow():
        return current().start_timer(delay)
    return _original_sleep(delay, result)


def _wait(fs: Any, *, timeout: float | None = None, return_when: str = asyncio.ALL_COMPLETED) -> Any:
    """In workflow code: ``(done, pending)``; FIRST_COMPLETED races like ``workflow.first`` and cancels the
    pending ones (docs/API.md §10), a timeout is a durable timer."""
    if in_workflow():
        return current().wait_set(fs, timeout, return_when)
    return _original_wait(fs, timeout=timeout, return_when=return_when)


def _wait_for(fut: Any, timeout: float | None) -> Any:
    """In workflow code: the awaitable raced against a durable timer; on timeout it is cancelled and
    ``asyncio.TimeoutError`` raised."""
    if in_workflow():
        return current().wait_for(fut, timeout)
    return _original_wait_for(fut, timeout)


def install() -> None:
    """Patch the four functions (idempotent). Called by the runtime when it creates a run, not at import:
    importing ``actors`` changes nothing in a process that never drives workflow code."""
    if asyncio.gather is not _gather:
        asyncio.gather = _gather  # type: ignore[assignment]
        asyncio.sleep = _sleep  # type: ignore[assignment]
    if asyncio.wait is not _wait:
        asyncio.wait = _wait  # type: ignore[assignment]
        asyncio.wait_for = _wait_for  # type: ignore[assignment]
