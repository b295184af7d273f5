"""Map ``asyncio.gather`` and ``asyncio.sleep`` to their durable twins inside workflow code.

Users write ordinary async Python, and ordinary async Python gathers and sleeps. The patched functions
check whether the calling thread is driving a workflow; everywhere else (activities on a real event loop,
the HTTP server) they are the untouched originals.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .replay import in_workflow

_original_gather = asyncio.gather
_original_sleep = asyncio.sleep


def _gather(*aws: Any, return_exceptions: bool = False) -> Any:
    if in_workflow():
        from . import workflow

        return workflow.all(aws, return_exceptions=return_exceptions)
    return _original_gather(*aws, return_exceptions=return_exceptions)


def _sleep(delay: float, result: Any = None) -> Any:
    if in_workflow():
        from . import workflow

        return workflow.timer(delay)
    return _original_sleep(delay, result)


def install() -> None:
    if asyncio.gather is not _gather:
        asyncio.gather = _gather  # type: ignore[assignment]
        asyncio.sleep = _sleep  # type: ignore[assignment]
