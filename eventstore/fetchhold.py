"""Hold an empty fetch on the client side, for brokers that answer it at once (noida-db).

Apache Kafka keeps a fetch that finds no data open for up to ``fetch.max.wait.ms``, so an idle consumer costs
nothing. noida-db answers it immediately, and kafka-python then sends the next fetch at once: every idle
consumer turns into a busy loop on its IO thread (measured: ≈ 0.4 CPU-seconds per second per idle consumer),
which takes the GIL from the thread that has work to do. With a node running five consumers (commands, its
activity queue, cancellations, ingress, …) besides the projector's and the client's, that spin was the W1/W2
latency regression of sitting 5 (bench/RESULTS.md, issue 16).

``hold_empty_fetches(consumer, hold_ms)`` makes the consumer behave as if the broker held the fetch: a fetch
response with no records that came back sooner than ``hold_ms`` is handed to kafka-python only when
``hold_ms`` have passed since it was sent, so at most one fetch per ``hold_ms`` goes out while nothing
arrives. A record produced meanwhile waits for the end of the hold (≤ ``hold_ms``, on average half), which is
why consumers on a latency path use a short hold and background readers a long one. On Apache Kafka an
empty answer takes ``fetch_max_wait_ms`` ≥ the hold, so nothing changes there.

This reaches one private method of kafka-python's fetcher (``_send_fetches_async``), checked against the
release in ``eventstore.groups.CHECKED_WITH_KAFKA_PYTHON``; ``tests/test_fetchhold.py`` fails if an upgrade
breaks it. If the seam is missing the consumer is left as it is (busy, but correct).
"""

from __future__ import annotations

import logging
import time
import types
from typing import Any

from eventstore import settings

log = logging.getLogger(__name__)

def latency_hold_ms() -> float:
    """Hold for consumers on a workflow's latency path (node commands, activity tasks, client replies)."""
    return float(settings.get("METAMORPH_FETCH_HOLD_MS"))


def background_hold_ms() -> float:
    """Hold for background readers whose records are not waited on by a caller (cancellations, ingress, the
    projector's event log once results travel on the replies topic)."""
    return float(settings.get("METAMORPH_BACKGROUND_FETCH_HOLD_MS"))


def _empty(response: Any) -> bool:
    for topic in getattr(response, "responses", ()) or ():
        for part in getattr(topic, "partitions", ()) or ():
            if getattr(part, "records", None):
                return False
            if getattr(part, "error_code", 0):
                return False  # errors are handled at once, as before
    return True


def hold_empty_fetches(consumer: Any, hold_ms: float) -> bool:
    """Make ``consumer`` wait ``hold_ms`` between empty fetches (see the module docstring). Returns whether
    the seam was found (False: the consumer is unchanged)."""
    if hold_ms <= 0:
        return False
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not hasattr(fetcher, "_send_fetches_async") or not hasattr(fetcher, "_create_fetch_requests"):
        log.warning("kafka-python's fetcher has no _send_fetches_async: empty fetches are not held (busy idle)")
        return False
    from kafka.future import Future

    hold_s = hold_ms / 1000.0
    net = fetcher._net

    async def _release(future: Any, response: Any) -> None:
        future.success(response)

    async def _send_fetches_async(self: Any) -> list:
        # kafka-python 3.0.12's body, with the response future replaced by one that completes no sooner than
        # hold_s after the send when the broker had nothing.
        futures = []
        for node_id, (request, fetch_offsets) in self._create_fetch_requests().items():
            self._nodes_with_pending_fetch_requests.add(node_id)
            sent = time.monotonic()
            raw = self._manager.send(request, node_id=node_id)
            future = Future()

            def _done(response: Any, future: Any = future, sent: float = sent) -> None:
                left = hold_s - (time.monotonic() - sent)
                if left > 0 and _empty(response):
                    net.call_later(left, _release(future, response))
                else:
                    future.success(response)

            raw.add_callback(_done)
            raw.add_errback(future.failure)
            future.add_callback(self._handle_fetch_response, node_id, fetch_offsets, sent)
            future.add_errback(self._handle_fetch_error, node_id)
            future.add_both(self._clear_pending_fetch_request, node_id)
            futures.append(future)
        self._fetch_futures.extend(futures)
        await self._clean_done_fetch_futures()
        return futures

    fetcher._send_fetches_async = types.MethodType(_send_fetches_async, fetcher)
    return True
