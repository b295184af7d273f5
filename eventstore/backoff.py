"""How long a failing loop waits before it tries again: one policy for every process.

The node, the activity worker, the ingress forwarder, the cancellation reader and the client's LISTEN
thread all reconnect the same way when Kafka or PostgreSQL goes away: wait a little, then twice as long,
up to a cap, and start small again once a round succeeded. Written once so a change (jitter, a different
cap) reaches all of them.
"""

from __future__ import annotations


class Backoff:
    """Doubling delays from ``first`` to ``cap`` seconds; ``reset()`` after a success."""

    __slots__ = ("first", "cap", "_next")

    def __init__(self, first: float = 0.5, cap: float = 10.0) -> None:
        if first <= 0 or cap < first:
            raise ValueError(f"backoff needs 0 < first <= cap, got first={first}, cap={cap}")
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        """The delay to wait now; the following one doubles (up to the cap)."""
        delay = self._next
        self._next = min(delay * 2, self.cap)
        return delay

    def peek(self) -> float:
        """The delay ``next()`` will return (for a log line written before waiting)."""
        return self._next

    def reset(self) -> None:
        self._next = self.first
