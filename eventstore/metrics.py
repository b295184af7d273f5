"""Prometheus metrics of every Metamorph process (docs/DESIGN.md "Metrics"), defined once.

Names carry the ``metamorph_`` prefix and their unit; labels stay low-cardinality (workflow type, activity
name, queue, partition, outcome — never workflow ids). Each process exposes whichever of these it updates
on ``/metrics`` via :func:`serve`; ``ops/`` (scrape config, alerts, Grafana dashboard) is built on these
names, and ``tests/test_ops.py`` checks that every name used there is defined here.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from eventstore import settings

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
#: Whole workflows run from milliseconds to days.
_WORKFLOW = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400)

# -- nodes: commands, events, workflows -----------------------------------------------------------------
commands_consumed = Counter("metamorph_commands_consumed_total", "Commands consumed by nodes", ["partition"])
events_appended = Counter("metamorph_events_appended_total", "Events appended to the event log", ["partition"])
batch_seconds = Histogram("metamorph_node_batch_duration_seconds", "Time to process one command batch", buckets=_LATENCY)
workflows_started = Counter("metamorph_workflows_started_total", "Workflow runs started", ["workflow_type"])
workflows_closed = Counter(
    "metamorph_workflows_closed_total",
    "Workflow runs that ended, by outcome (completed, failed, cancelled, terminated, continued)",
    ["workflow_type", "outcome"],
)
workflow_duration = Histogram(
    "metamorph_workflow_duration_seconds",
    "Time from a workflow's start command to its completion (WorkflowCompleted), by workflow type",
    ["workflow_type"],
    buckets=_WORKFLOW,
)
rejected_commands = Counter("metamorph_rejected_commands_total", "Commands a workflow refused", ["command"])
nondeterminism = Counter("metamorph_nondeterminism_total", "Workflows blocked by a replay mismatch", ["workflow_type"])
workflows_blocked = Counter(
    "metamorph_workflows_blocked_total",
    "Workflows blocked (waiting, not failed): reason NondeterminismError (a replay mismatch) or UnknownWorkflowType",
    ["workflow_type", "reason"],
)
blocked_workflows = Gauge("metamorph_blocked_workflows", "Workflows of the owned partitions blocked right now", ["partition"])

# -- nodes: actors, replay, restore ---------------------------------------------------------------------
replay_seconds = Histogram("metamorph_replay_duration_seconds", "Time to rebuild a workflow by replay", buckets=_LATENCY)
replayed_events = Counter("metamorph_replayed_events_total", "History events replayed into workflow code")
live_workflows = Gauge("metamorph_live_workflows", "Workflow actors in memory")
passivated_workflows = Gauge(
    "metamorph_passivated_workflows", "Open workflows of the owned partitions that have no actor in memory"
)
passivations = Counter("metamorph_passivations_total", "Workflow actors stopped to free memory", ["reason"])
passivated_queries = Counter(
    "metamorph_passivated_queries_total", "Queries answered by a throw-away replay, without waking a passivated workflow"
)
restore_seconds = Histogram("metamorph_restore_duration_seconds", "Time to restore an assigned partition", ["partition"], buckets=_LATENCY)
restored_records = Counter("metamorph_restored_records_total", "Event records read while restoring partitions", ["partition"])
owned_partitions = Gauge("metamorph_owned_partitions", "Command partitions this node owns")

# -- timers -----------------------------------------------------------------------------------------------
timers_pending = Gauge("metamorph_timers_pending", "Durable timers waiting to fire", ["partition"])
timers_fired = Counter("metamorph_timers_fired_total", "Durable timers fired", ["kind"])
timer_lateness = Histogram("metamorph_timer_lateness_seconds", "How late timers fired (fire time minus due time)", buckets=_LATENCY)

# -- activities -------------------------------------------------------------------------------------------
activity_attempts = Counter("metamorph_activity_attempts_total", "Activity attempts executed", ["activity", "queue", "outcome"])
activity_retries = Counter("metamorph_activity_retries_total", "Activity attempts executed after a failed one (attempt > 1)", ["activity"])
activity_duration = Histogram(
    "metamorph_activity_duration_seconds", "Duration of one activity attempt", ["activity", "queue"], buckets=_LATENCY
)

# -- Kafka consumers (node: commands, worker: activities.<queue>, projector: events) ----------------------
consumer_lag = Gauge("metamorph_consumer_lag_records", "Records behind the end of a partition", ["component", "topic", "partition"])

# -- bad input and dependencies ---------------------------------------------------------------------------
deadlettered = Counter("metamorph_deadlettered_records_total", "Records sent to the dead-letter topic", ["component", "reason"])
dependency_up = Gauge("metamorph_dependency_up", "1 if the dependency answered last time", ["component", "dependency"])
rerouted_commands = Counter(
    "metamorph_rerouted_commands_total", "Commands that arrived on another partition than their workflow id's, re-routed"
)
log_truncated = Gauge(
    "metamorph_log_truncated",
    "1 while a partition is stopped because the log ends before the position saved for it (truncated or reset)",
    ["component", "partition"],
)
stale_messages = Counter(
    "metamorph_stale_messages_dropped_total",
    "Messages dropped by their receiver because a node that no longer owned their partition sent them (older epoch)",
    ["component", "topic"],
)
fenced_batches = Counter(
    "metamorph_node_fenced_batches_total",
    "Batches a node appended after a newer owner's marker (it was a zombie there): not applied, not sent; it rejoins",
)
dependency_errors = Counter("metamorph_dependency_errors_total", "Failed calls to Kafka or PostgreSQL", ["component", "dependency"])

# -- projector --------------------------------------------------------------------------------------------
projector_events = Counter("metamorph_projector_events_total", "Events applied to the projections", ["partition"])
projector_batch_seconds = Histogram("metamorph_projector_batch_duration_seconds", "One projector transaction", buckets=_LATENCY)
projector_lag = Gauge("metamorph_projector_lag_records", "Events not yet projected", ["partition"])
projector_failures = Counter(
    "metamorph_projector_failures_total",
    "Projector batches that failed for a reason other than PostgreSQL being down (retried, never skipped)",
    ["error_type"],
)
projector_stalled = Gauge(
    "metamorph_projector_stalled", "1 while the projector retries a batch its own code failed on (a projection bug)"
)

# -- HTTP API (metamorph serve) ---------------------------------------------------------------------------
http_requests = Counter("metamorph_http_requests_total", "HTTP API requests", ["route", "status"])

_lag_reported: dict[tuple[int, str], set[tuple[str, int]]] = {}
_lag_lock = threading.Lock()


def report_lag(consumer: Any, component: str) -> None:
    """Set ``metamorph_consumer_lag_records`` for every partition ``consumer`` (a KafkaConsumer) is assigned.

    Lag is the partition's high watermark minus the consumer's position. Series of partitions this consumer
    reported before but is no longer assigned (a rebalance moved them) are removed, so a dashboard summing
    lag does not count a partition twice. Call it about once a second from the consumer's own thread.
    """
    assigned = {(tp.topic, tp.partition): tp for tp in consumer.assignment()}
    for tp in assigned.values():
        high = consumer.highwater(tp)
        if high is None:
            continue
        try:
            position = consumer.position(tp, timeout_ms=100)
        except Exception:  # no position yet (just assigned): nothing to report
            continue
        if position is not None:
            consumer_lag.labels(component, tp.topic, str(tp.partition)).set(max(0, high - position))
    key = (id(consumer), component)
    with _lag_lock:
        gone = _lag_reported.get(key, set()) - set(assigned)
        _lag_reported[key] = set(assigned)
    _remove_lag(component, gone)


def forget_lag(consumer: Any, component: str) -> None:
    """Remove the lag series ``consumer`` reported (call when it is closed)."""
    with _lag_lock:
        reported = _lag_reported.pop((id(consumer), component), set())
    _remove_lag(component, reported)


def _remove_lag(component: str, partitions: set[tuple[str, int]]) -> None:
    for topic, partition in partitions:
        with contextlib.suppress(KeyError):
            consumer_lag.remove(component, topic, str(partition))


_served: set[tuple[str, int]] = set()
_serve_lock = threading.Lock()


def serve(port: int, addr: str | None = None) -> int:
    """Expose /metrics on ``port`` (0 = off); returns the port.

    ``addr`` defaults to ``METAMORPH_METRICS_ADDR`` or 127.0.0.1 (set 0.0.0.0 for a Prometheus on another
    host). Idempotent: a second call for the same address and port does nothing, so components sharing one
    process (``metamorph dev``, tests) can each call it.
    """
    if not port:
        return 0
    addr = addr or settings.get("METAMORPH_METRICS_ADDR")
    with _serve_lock:
        if (addr, port) not in _served:
            start_http_server(port, addr=addr)
            _served.add((addr, port))
    return port
