"""Writing to ``<ns>.deadletter``: the one writer the node, the activity workers and the projector share.

Why one writer: a dead letter is the only trace of a record that is skipped, so it must be acknowledged by
the broker (acks=all) *before* the consumer commits past the record; a send that is merely buffered when the
offset commit happens is lost by a crash. Each component used to have its own copy, and two of them did not
wait. Callers ``add`` letters while they handle a batch and call ``flush`` right before they commit; a
``flush`` that fails raises, so the commit does not happen and the records are read (and dead-lettered)
again: at least once, never lost.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from . import codec, metrics

log = logging.getLogger(__name__)


class DeadLetters:
    """Dead letters of one component (``component`` labels the metric), sent through ``kafka_producer``."""

    def __init__(self, kafka_producer: Any, topic: str, component: str) -> None:
        self.producer = kafka_producer
        self.topic = topic
        self.component = component
        self._unacked: list[tuple[Any, str]] = []  # (future, label): sent, not yet known to be durable
        self._lock = threading.Lock()

    def add(
        self,
        source_topic: str,
        partition: int,
        offset: int,
        reason: str,
        key: bytes | None,
        value: bytes | None,
        label: str,
    ) -> Any:
        """Send a dead letter (asynchronously); ``flush`` before committing past the record. Returns the send's
        future, for a caller that waits for this one letter itself."""
        record = {
            "source_topic": source_topic,
            "partition": partition,
            "offset": offset,
            "reason": reason,
            "key": key,
            "value": value or b"",
        }
        future = self.producer.send(self.topic, key=key, value=codec.encode("metamorph.DeadLetter", record))
        with self._lock:
            self._unacked.append((future, label))
        log.warning(
            "%s: dead-lettered %s[%d]@%d: %s", self.component, source_topic, partition, offset, reason
        )
        return future

    @property
    def pending(self) -> int:
        """Letters sent but not yet acknowledged."""
        with self._lock:
            return len(self._unacked)

    def flush(self, timeout: float = 30.0) -> int:
        """Wait until every letter sent so far is acknowledged; raises (a KafkaError) if one was not.

        The caller must then not commit: the records are read again and dead-lettered again (a letter
        may be written twice, never lost). Returns how many were acknowledged.
        """
        with self._lock:
            unacked, self._unacked = self._unacked, []
        if not unacked:
            return 0
        self.producer.flush(timeout=timeout)
        error: Exception | None = None
        for future, label in unacked:
            try:
                future.get(timeout=timeout)
                metrics.deadlettered.labels(self.component, label).inc()
            except Exception as exc:
                error = error or exc
        if error is not None:
            metrics.dependency_errors.labels(self.component, "kafka").inc()
            raise error
        return len(unacked)
