"""Prometheus metrics move as workflows run: an in-process node and projector, ``/metrics`` parsed with
prometheus-client's own parser.

prometheus-client keeps one registry per process, so counters here are process-global and shared with every
other test of the session: each test compares a scrape before with a scrape after its workflows. The
``/metrics`` server is started once per session (:func:`metrics_port`); ``tests/test_ops.py`` reuses it and
:func:`running_stack` for its real-Prometheus test.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors import WorkflowFailed
from eventstore import metrics
from eventstore.topics import Topics
from tests.apps import runtime_app as app
from tests.stack import running_stack

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

_port: int | None = None
_port_lock = threading.Lock()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics_port() -> int:
    """The session's ``/metrics`` port (one HTTP server per process, like a real Metamorph process)."""
    global _port
    with _port_lock:
        if _port is None:
            port = free_port()
            assert metrics.serve(port, "127.0.0.1") == port
            _port = port
        return _port


def scrape(port: int | None = None) -> Samples:
    """Every sample of ``/metrics``, keyed by (sample name, sorted labels)."""
    url = f"http://127.0.0.1:{port or metrics_port()}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 if there are none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def series(samples: Samples, name: str, **labels: str) -> list[dict[str, str]]:
    want = set(labels.items())
    return [dict(ls) for (n, ls), _ in samples.items() if n == name and want <= set(ls)]


def wait_for(check: Callable[[Samples], bool], timeout: float = 15.0) -> Samples:
    """Scrape until ``check`` holds (gauges are sampled about once a second); returns the last scrape."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape()
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


MAX_LIVE = 3


@pytest.fixture(scope="module")
def stack(kafka_server, pg_server, tmp_path_factory):
    metrics_port()
    with running_stack(kafka_server.bootstrap, pg_server, tmp_path_factory.mktemp("node"), MAX_LIVE) as s:
        yield s


def test_metrics_endpoint_parses_and_follows_the_naming_rules(stack):
    _client, node, _ns = stack
    samples = wait_for(lambda s: value(s, "metamorph_owned_partitions") == 2)
    assert value(samples, "metamorph_owned_partitions") == len(node.owned_partitions) == 2
    names = {n for n, _ in samples if n.startswith("metamorph_")}
    assert names, "no metamorph_ metrics on /metrics"
    for name in names:
        assert name == name.lower() and " " not in name
    # label sets stay low-cardinality: never a workflow or run id
    for (name, labels), _v in samples.items():
        if name.startswith("metamorph_"):
            assert not {"workflow_id", "run_id", "id"} & {k for k, _ in labels}, (name, labels)


def test_workflow_activity_node_and_projector_counters_move(stack):
    client, _node, namespace = stack
    before = scrape()
    ids = []
    for who in ("ada", "bob", "cy"):
        handle = client.start(app.Hello, who)
        ids.append(handle.id)
        assert handle.result(timeout=20) == f"hello {who}"
    bad = client.start(app.Hello)  # wrong arguments: the run fails at once
    ids.append(bad.id)
    with pytest.raises(WorkflowFailed):
        bad.result(timeout=20)
    after = wait_for(lambda s: value(s, "metamorph_projector_events_total") > value(before, "metamorph_projector_events_total"))

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("metamorph_workflows_started_total", workflow_type="rt.Hello") == 4
    assert moved("metamorph_workflows_closed_total", workflow_type="rt.Hello", outcome="completed") == 3
    assert moved("metamorph_workflows_closed_total", workflow_type="rt.Hello", outcome="failed") == 1
    assert moved("metamorph_commands_consumed_total") >= 4 + 3  # 4 starts, 3 activity completions
    assert moved("metamorph_events_appended_total") >= 4 * 2
    assert moved("metamorph_node_batch_duration_seconds_count") >= 1
    assert moved("metamorph_activity_attempts_total", activity="rt.greet", queue="default", outcome="completed") == 3
    assert moved("metamorph_activity_duration_seconds_count", activity="rt.greet", queue="default") == 3
    assert moved("metamorph_projector_events_total") >= 4 * 2
    assert moved("metamorph_projector_batch_duration_seconds_count") >= 1
    # per-partition series are labelled by partition number only: the partitions whose counter moved in
    # this test are this node's (2 partitions); counters of nodes run earlier in the process stay as they were
    partitions = {
        ls["partition"] for ls in series(after, "metamorph_commands_consumed_total")
        if moved("metamorph_commands_consumed_total", partition=ls["partition"]) > 0
    }
    assert partitions and partitions <= {"0", "1"}
    # no workflow id leaks into any label value
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port()}/metrics", timeout=5).read().decode()
    for wid in ids:
        assert wid not in text
    assert namespace  # (the namespace appears only inside topic names of the lag gauges)


def test_time_from_start_to_completion_is_a_histogram_by_workflow_type(stack):
    client, _node, _ns = stack
    before = scrape()
    for i in range(2):
        assert client.start(app.Hello, f"h{i}").result(timeout=20) == f"hello h{i}"
    after = scrape()
    name = "metamorph_workflow_duration_seconds"
    assert value(after, f"{name}_count", workflow_type="rt.Hello") - value(before, f"{name}_count", workflow_type="rt.Hello") == 2, (
        "the node must observe metamorph_workflow_duration_seconds{workflow_type} when a run completes"
    )
    spent = value(after, f"{name}_sum", workflow_type="rt.Hello") - value(before, f"{name}_sum", workflow_type="rt.Hello")
    assert 0 < spent < 40
    assert value(after, f"{name}_bucket", workflow_type="rt.Hello", le="+Inf") == value(after, f"{name}_count", workflow_type="rt.Hello")


def test_activity_retries_and_failed_attempts_are_counted(stack):
    client, _node, _ns = stack
    before = scrape()
    assert client.start(app.Timeouts, "fails").result(timeout=20) == "RuntimeError after 3"
    retries = "metamorph_activity_retries_total"
    after = wait_for(lambda s: value(s, retries, activity="rt.fails") - value(before, retries, activity="rt.fails") >= 2, 5)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("metamorph_activity_attempts_total", activity="rt.fails", outcome="failed") == 3
    assert moved("metamorph_timers_fired_total", kind="retry") >= 2
    assert moved("metamorph_activity_retries_total", activity="rt.fails") == 2, (
        "attempts 2 and 3 of rt.fails are retries: metamorph_activity_retries_total{activity} must count them"
    )


def test_timers_pending_fired_and_lateness(stack):
    client, _node, _ns = stack
    before = scrape()
    handle = client.start(app.Sleepy, 1.5)
    pending = wait_for(lambda s: value(s, "metamorph_timers_pending") >= 1, 10)
    assert value(pending, "metamorph_timers_pending") >= 1
    assert {ls["partition"] for ls in series(pending, "metamorph_timers_pending")} <= {"0", "1"}
    assert handle.result(timeout=20) == "rested"
    after = scrape()
    assert value(after, "metamorph_timers_fired_total", kind="timer") - value(before, "metamorph_timers_fired_total", kind="timer") >= 1
    late = value(after, "metamorph_timer_lateness_seconds_count") - value(before, "metamorph_timer_lateness_seconds_count")
    assert late >= 1
    lateness = value(after, "metamorph_timer_lateness_seconds_sum") - value(before, "metamorph_timer_lateness_seconds_sum")
    assert 0 <= lateness / late < 5


def test_consumer_lag_per_partition_for_node_workers_and_projector(stack):
    _client, _node, namespace = stack
    topics = Topics(namespace)
    want = {"node": topics.commands, "worker": topics.activities("default"), "projector": topics.events}

    def reported(s: Samples) -> bool:
        lag = "metamorph_consumer_lag_records"
        return all({ls["partition"] for ls in series(s, lag, component=c, topic=t)} == {"0", "1"} for c, t in want.items())

    samples = wait_for(reported, 10)
    for component, topic in want.items():
        got = {ls["partition"] for ls in series(samples, "metamorph_consumer_lag_records", component=component, topic=topic)}
        assert got == {"0", "1"}, f"{component} must report metamorph_consumer_lag_records for each partition of {topic}: {got}"
        assert value(samples, "metamorph_consumer_lag_records", component=component, topic=topic) >= 0
    assert series(samples, "metamorph_projector_lag_records"), "the projector reports metamorph_projector_lag_records"


def test_live_and_passivated_workflow_counts(stack):
    client, _node, _ns = stack
    handles = [client.start(app.Sleepy, 30.0) for _ in range(MAX_LIVE + 2)]  # more waiting workflows than actors
    for h in handles:
        deadline = time.monotonic() + 15
        while h.status() not in ("waiting", "running") and time.monotonic() < deadline:
            time.sleep(0.1)
    samples = wait_for(lambda s: value(s, "metamorph_passivated_workflows") >= 2, 10)
    assert 1 <= value(samples, "metamorph_live_workflows") <= MAX_LIVE
    assert value(samples, "metamorph_passivations_total", reason="lru") >= 2
    assert value(samples, "metamorph_passivated_workflows") >= 2, (
        "the node must set metamorph_passivated_workflows (open workflows of its partitions without an actor)"
    )
    for h in handles:
        h.terminate("test over")
