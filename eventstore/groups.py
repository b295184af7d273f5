"""Consumer-group members: one place for their Kafka settings, and polling that survives a rebalance race.

``member()`` builds the group consumer of every long-running process (node, activity worker, projector),
so static membership, session timeout, heartbeats and offset handling are decided once.
The session timeout is the failover time: a member that dies without leaving (SIGKILL, power loss, a
network partition) keeps its partitions until the broker has heard nothing from it for that long; then the
group rebalances and the survivors take them over. Shorter means faster takeover, but a member that stalls
longer than that (a long GC-like pause, an overloaded machine, a slow network) is evicted although alive
and its partitions move twice. 10 s is Kafka's usual trade-off; ``METAMORPH_SESSION_TIMEOUT`` (seconds) or
the processes' ``--session-timeout`` change it (the broker bounds it by ``group.min/max.session.timeout.ms``).

Polling:

kafka-python 3.0.12 runs JoinGroup/SyncGroup as a background task and only applies its result (the new
assignment, the ``on_partitions_assigned`` callback) inside a later ``poll``. If ``poll`` times out while
that task is in flight and the caller does other work before polling again, two things can go wrong:

* the rebalance was triggered by a metadata change (the usual second join right after start-up), the
  leader's assignment clears that trigger, so the next ``poll`` thinks nothing is pending and never applies
  the finished join: the member sits in the group with no partitions, for ever;
* the trigger is still set but the task already finished, so the next ``poll`` throws its result away and
  joins again — with short poll timeouts and work between polls, again and again.

A node polls with 0–1 ms timeouts while its own activities run (eager dispatch), so it hit both after a
crash restart. The cure is to do nothing else while the group is joining: pin the rejoin flag (so a
finished join is never mistaken for none) and poll back to back with a timeout long enough for the join
round trip to finish inside one call.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kafka import KafkaConsumer

from eventstore import settings

from . import fetchhold
from .fetchhold import hold_empty_fetches

log = logging.getLogger(__name__)

DEFAULT_SESSION_TIMEOUT = 10.0


def session_timeout(seconds: float | None = None) -> float:
    """The session timeout in seconds: ``seconds`` if given, else ``METAMORPH_SESSION_TIMEOUT``, else 10."""
    if seconds is None:
        seconds = float(settings.get("METAMORPH_SESSION_TIMEOUT", DEFAULT_SESSION_TIMEOUT))
    if not 1.0 <= seconds <= 1800.0:
        raise ValueError(f"session timeout {seconds} s is outside 1..1800 s")
    return seconds


def member(
    bootstrap: str,
    group: str | None,
    instance_id: str | None,
    *,
    session_timeout_s: float | None = None,
    fetch_hold_ms: float | None = None,
    **overrides: Any,
) -> KafkaConsumer:
    """A consumer for ``group`` as static member ``instance_id``, with the settings every process shares.

    Offsets are never auto-committed (each process commits after its work is durable) and a new group
    starts from the earliest offset (a workflow's first command must not be skipped). Static membership
    lets a restarted process reclaim its partitions at once with warm local state; a process stopped
    cleanly leaves the group itself (``eventstore.topics.leave_group``). ``group=None`` gives a plain
    consumer for manual assignment. ``fetch_hold_ms``: how long an empty fetch is held on the client side
    for brokers that do not hold it (``eventstore.fetchhold``; default: the latency-path hold).
    """
    timeout_ms = int(session_timeout(session_timeout_s) * 1000)
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
    }
    if group is not None:
        config.update(
            group_id=group,
            group_instance_id=instance_id,
            session_timeout_ms=timeout_ms,
            heartbeat_interval_ms=max(100, min(1_000, timeout_ms // 3)),
        )
    config.update(overrides)
    consumer = KafkaConsumer(**config)
    # A broker that answers empty fetches at once (noida-db) would make this consumer spin while idle.
    hold_empty_fetches(consumer, fetchhold.latency_hold_ms() if fetch_hold_ms is None else fetch_hold_ms)
    return consumer

#: The kafka-python release the private reaches below (``_coordinator``, ``_join_task``) were checked
#: against. Measured on 2026-11-29 with plain ``poll(0)`` and 10 ms of work between polls, 10 fresh members
#: each: 4 of 10 never got their partitions on Apache Kafka 4.4.0, 9 of 10 on noida-db 0.2.3; with ``poll``
#: below, 10 of 10 on both. ``tests/test_eventstore.py`` fails if a kafka-python upgrade breaks this seam.
CHECKED_WITH_KAFKA_PYTHON = "3.0.12"

_JOIN_POLL_MS = 1_000
_JOIN_BUDGET_S = 30.0


def heartbeat_age(consumer: KafkaConsumer) -> float | None:
    """Seconds since the group coordinator last *answered* a heartbeat, None before it first did.

    The answer, not the send: while the connection is being re-established kafka-python keeps "sending"
    heartbeats that fail at once, so the send time (the public ``last-heartbeat-seconds-ago`` metric) stays
    fresh through an outage. The receive time is private (``_coordinator.heartbeat.last_receive``, a
    ``time.monotonic()`` stamp), so it is read here, in the one module allowed to, checked against
    kafka-python 3.0.12. Heartbeats run on kafka-python's own IO thread, so this stays true while the
    caller's thread is busy or blocked.
    """
    heartbeat = getattr(getattr(consumer, "_coordinator", None), "heartbeat", None)
    received = getattr(heartbeat, "last_receive", None)
    if received is None or received == float("-inf"):
        return None
    return max(0.0, time.monotonic() - float(received))


def broker_reachable(consumer: KafkaConsumer) -> bool:
    """True while the member's heartbeats reach its group coordinator.

    ``poll`` does not fail while the brokers are down (kafka-python reconnects quietly and returns nothing)
    and a flush waits for them, so a process cannot learn of an outage from its own loop. The heartbeat
    is the one request a group member sends all the time; if none has gone out for three heartbeat
    intervals (at least 3 s), no broker is answering. Before the first heartbeat there is nothing to judge.
    """
    age = heartbeat_age(consumer)
    if age is None:
        return True
    interval = consumer.config.get("heartbeat_interval_ms", 3000) / 1000
    return age < max(3.0, 3 * interval)


class BrokerWatch:
    """``metamorph_dependency_up{component,kafka}`` for one process, from ``broker_reachable``.

    The gauge is computed when Prometheus scrapes it, from the consumer ``watch`` was last given, so it
    tells the truth even while the process's loop is stuck waiting for the broker (a flush). ``check``,
    called from the loop, logs the outage's start and end once each (WARNING) and counts each outage once
    in ``metamorph_dependency_errors_total``, so alerts and logs tell the same story.
    """

    def __init__(self, component: str) -> None:
        from eventstore import metrics

        self.component = component
        self.up = True
        self._consumer: KafkaConsumer | None = None
        metrics.dependency_up.labels(component, "kafka").set_function(self._value)

    def _value(self) -> float:
        consumer = self._consumer
        try:
            return 1.0 if consumer is None or broker_reachable(consumer) else 0.0
        except Exception:  # a closed consumer: the loop is between consumers, which says nothing either way
            return 1.0

    def watch(self, consumer: KafkaConsumer | None) -> None:
        self._consumer = consumer

    def check(self, consumer: KafkaConsumer) -> bool:
        from eventstore import metrics

        self._consumer = consumer
        up = broker_reachable(consumer)
        if self.up and not up:
            log.warning("%s: no Kafka broker answers; waiting for one (nothing is lost meanwhile)", self.component)
            metrics.dependency_errors.labels(self.component, "kafka").inc()
        elif up and not self.up:
            log.warning("%s: Kafka answers again", self.component)
        self.up = up
        return up


def poll(consumer: KafkaConsumer, timeout_ms: int, max_records: int | None = None) -> dict[Any, list[Any]]:
    """``consumer.poll``, except that a pending rebalance is driven to completion first.

    Returns whatever the poll returned. Bounded: after ``_JOIN_BUDGET_S`` of joining (a broker waiting for
    slow members) it returns so the caller's loop can notice a stop request, and is called again.
    """
    coordinator = consumer._coordinator
    if _joining(coordinator):
        deadline = time.monotonic() + _JOIN_BUDGET_S
        while _joining(coordinator) and time.monotonic() < deadline:
            coordinator.request_rejoin()  # keep "a join is pending" true until poll has applied the result
            records = consumer.poll(timeout_ms=_JOIN_POLL_MS, max_records=max_records)
            if records:
                return records
    return consumer.poll(timeout_ms=timeout_ms, max_records=max_records)


def settled(consumer: KafkaConsumer) -> bool:
    """True once the member has joined a stable generation (it may own no partitions: more members than
    partitions). The one other private reach, kept here beside ``poll``'s."""
    return consumer._coordinator.generation_if_stable() is not None


def _joining(coordinator: Any) -> bool:
    if coordinator.group_id is None:
        return False
    return getattr(coordinator, "_join_task", None) is not None or coordinator.need_rejoin()
