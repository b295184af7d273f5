"""Pending rows written off the start path: ``Client.start`` needs Kafka only (issue 15, item 6).

Why: a start is accepted once its command is durable in Kafka. The ``pending`` row a client writes to the
projections (``projections.pending``) only lets *other* readers (the CLI, the HTTP API) see the id before the
projector has the real row; the starting client answers ``pending`` from memory anyway. Writing it inline made
every start wait for PostgreSQL (up to the pool timeout while it was down). Here one daemon thread per client
writes them in order, best effort: a row that cannot be written is dropped (the projector writes the real one
when the workflow starts), and ``close`` waits a bounded time so a short-lived process (``metamorph start``)
still leaves its row behind.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class PendingWriter:
    """Calls ``write(*item)`` for each item added, in a background thread; never blocks the caller."""

    def __init__(self, write: Callable[..., Any]) -> None:
        self._write = write
        self._items: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def add(self, *item: Any) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="metamorph-pending-rows", daemon=True)
                self._thread.start()
        self._items.put(item)

    def _run(self) -> None:
        while True:
            item = self._items.get()
            try:
                if item is None:
                    return
                self._write(*item)
            except Exception:  # best effort: the projector writes the real row; never kill the thread
                log.exception("writing a pending row failed")
            finally:
                self._items.task_done()

    def close(self, timeout: float) -> None:
        """Write what is queued for at most ``timeout`` seconds, then stop the thread."""
        with self._lock:
            thread = self._thread
            self._thread = None
        if thread is None:
            return
        self._items.put(None)
        thread.join(timeout)
        if thread.is_alive():
            log.warning("pending rows not written within %.1fs at close; the projector writes the real rows", timeout)
