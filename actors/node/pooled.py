"""pykka actors without a thread each: their inboxes are drained on one shared pool of threads.

A ``ThreadingActor`` parks a thread per live workflow, and a parked thread costs about 24 KB of resident
memory — three quarters of what a live workflow costs (``bench/memprobe.py``) — plus a thread start and
stop every time a workflow is woken or passivated. Workflow actors spend nearly all their life waiting,
so they do not need a thread of their own, only the actor guarantees: one message at a time, in order,
with pykka's refs, futures, ``ask``/``tell`` and stop semantics. A ``PooledActor`` keeps those: sending
puts the envelope in the actor's inbox and, if the actor is not already scheduled, schedules one drain of
the inbox on the shared pool; the drain handles envelopes exactly as pykka's own loop does.
"""

from __future__ import annotations

import logging
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pykka
from pykka import ActorRegistry

log = logging.getLogger(__name__)

#: Workflow steps are short and hold the GIL; a few threads keep one slow step from stalling the rest.
POOL_THREADS = 8
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_stopped_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is not None:  # every message goes through here: no lock once the pool exists
        return _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="metamorph-actors")
        return _pool


class _Inbox:
    """The ``ActorInbox`` protocol, telling its actor when something arrives.

    A list rather than a deque: an inbox holds a message or two, and an empty deque allocates a 760-byte
    block — per live workflow, that alone was a third of the W5 target.
    """

    __slots__ = ("_envelopes", "_arrived")

    def __init__(self, arrived: Any) -> None:
        self._envelopes: list = []
        self._arrived = arrived

    def put(self, envelope: Any, /) -> None:
        self._envelopes.append(envelope)
        self._arrived()

    def get(self) -> Any:
        return self._envelopes.pop(0)

    def empty(self) -> bool:
        return not self._envelopes


class _Stopped:
    """``threading.Event`` for ``actor_stopped``, minus the Condition (and its deque) until someone waits."""

    __slots__ = ("_flag", "_event")

    def __init__(self) -> None:
        self._flag = False
        self._event: threading.Event | None = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with _stopped_lock:
            self._flag = True
            event = self._event
        if event is not None:
            event.set()

    def wait(self, timeout: float | None = None) -> bool:
        with _stopped_lock:
            if self._flag:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout)


class PooledActor(pykka.Actor):
    """A pykka actor whose messages are handled on the shared pool, one at a time and in order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._schedule_lock = threading.Lock()
        self._scheduled = False
        self._set_up = False
        super().__init__(*args, **kwargs)
        self.actor_stopped = self._actor_ref.actor_stopped = _Stopped()  # type: ignore[assignment]

    def _create_actor_inbox(self) -> Any:  # type: ignore[override]
        return _Inbox(self._schedule)

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return pykka.ThreadingFuture()

    def _start_actor_loop(self) -> None:
        self._schedule()  # runs on_start even if nothing has been sent yet

    def _schedule(self) -> None:
        with self._schedule_lock:
            if self._scheduled:
                return
            self._scheduled = True
        try:
            _executor().submit(self._drain)
        except RuntimeError:  # the pool is shut down: the process is exiting
            with self._schedule_lock:
                self._scheduled = False

    def _drain(self) -> None:
        if not self._set_up:
            self._set_up = True
            self._actor_loop_setup()
        while True:
            with self._schedule_lock:
                if self.actor_stopped.is_set() or self.actor_inbox.empty():
                    self._scheduled = False
                    break
            self._handle_envelope(self.actor_inbox.get())
        if self.actor_stopped.is_set():
            self._actor_loop_teardown()

    def _handle_envelope(self, envelope: Any) -> None:
        """pykka's ``_actor_loop_running`` body, for one envelope."""
        try:
            response = self._handle_receive(envelope.message)
            if envelope.reply_to is not None:
                envelope.reply_to.set(response)
        except Exception:
            if envelope.reply_to is not None:
                log.info("Exception returned from %s to caller:", self, exc_info=sys.exc_info())
                envelope.reply_to.set_exception()
            else:
                self._handle_failure(*sys.exc_info())
                try:
                    self.on_failure(*sys.exc_info())
                except Exception:
                    self._handle_failure(*sys.exc_info())
        except BaseException:
            log.debug("%r in %s. Stopping all actors.", sys.exc_info()[1], self)
            self._stop()
            ActorRegistry.stop_all()

