"""Crash safety with real processes: SIGKILL a node mid-way, and hand partitions from one node to another."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from eventstore.topics import Topics
from tests.apps import runtime_app as app
from tests.processes import Processes, assert_exactly_once, process_cluster, wait_until

pytestmark = pytest.mark.slow


class _Nodes(Processes):
    """The node processes of one test (``tests.apps.node_runner``), started and killed by name."""

    def __init__(self, kafka: str, namespace: str, data: Path) -> None:
        super().__init__(data / "logs", {"METAMORPH_TEST_MARKS": str(data / "marks")})
        self.kafka, self.namespace, self.data, self.marks = kafka, namespace, data, data / "marks"

    def up(self, name: str) -> subprocess.Popen[str]:
        return self.node(name, self.kafka, self.namespace, self.data)


@pytest.fixture
def cluster(kafka, namespace, pg_url, tmp_path):
    nodes = _Nodes(kafka, namespace, tmp_path)
    with process_cluster(kafka, namespace, pg_url, nodes) as client:
        yield nodes, client, pg_url


def test_sigkill_mid_way_through_50_workflows_loses_nothing(cluster):
    nodes, client, pg_url = cluster
    nodes.up("n1")
    handles = [client.start(app.Crashy, f"k{i}", id=f"crash-{i}-{uuid.uuid4().hex[:4]}") for i in range(50)]
    wait_until(lambda: sum(h.status() == "waiting" for h in handles) >= 20, 60, "workflows to reach their wait")
    for h in handles[:25]:  # half are released: they are in timers or activities when the node dies
        h.signal("release")
    time.sleep(0.6)
    nodes.kill("n1")  # SIGKILL: no goodbye, no flush beyond what was acknowledged
    for h in handles[25:]:  # signals sent while no node runs wait in Kafka
        h.signal("release")
    nodes.up("n1")
    for i, h in enumerate(handles):
        assert h.result(timeout=float(os.environ.get("CRASH_WAIT", 90))) == f"slow hello k{i}|k{i}"
    assert_exactly_once(pg_url, client.namespace, [h.id for h in handles])


def test_a_second_node_takes_over_when_the_first_stops(cluster):
    nodes, client, pg_url = cluster
    nodes.up("a")
    nodes.up("b")
    handles = [client.start(app.Crashy, f"t{i}", id=f"take-{i}-{uuid.uuid4().hex[:4]}") for i in range(20)]
    wait_until(lambda: all(h.status() == "waiting" for h in handles), 60, "workflows to wait")
    nodes.kill("a", signal.SIGTERM)  # a graceful stop: a leaves the group and b takes its partitions
    for h in handles:
        h.signal("release")
    for i, h in enumerate(handles):
        assert h.result(timeout=float(os.environ.get("CRASH_WAIT", 90))) == f"slow hello t{i}|t{i}"
    assert_exactly_once(pg_url, client.namespace, [h.id for h in handles])


def test_a_broker_restart_mid_way_loses_and_doubles_nothing(cluster, kafka_server):
    nodes, client, pg_url = cluster
    nodes.up("n1")
    handles = [client.start(app.Crashy, f"b{i}", id=f"broker-{i}-{uuid.uuid4().hex[:4]}") for i in range(10)]
    wait_until(lambda: all(h.status() == "waiting" for h in handles), 60, "workflows to wait")
    for h in handles[:5]:
        h.signal("release")
    kafka_server.restart()  # graceful: the broker saves, goes away, comes back on the same port
    for h in handles[5:]:
        h.signal("release")
    for i, h in enumerate(handles):
        assert h.result(timeout=float(os.environ.get("CRASH_WAIT", 90))) == f"slow hello b{i}|b{i}"
    assert_exactly_once(pg_url, client.namespace, [h.id for h in handles])


def _rebalance_nodes(kafka: str, namespace: str) -> None:
    """Make the node group rebalance twice without moving a commands partition: a member that subscribes
    only to another topic joins (eager protocol: every member gives up and is given back its partitions),
    then leaves. This is what a restarted node meets when the group settles in steps."""
    from kafka import KafkaConsumer

    topics = Topics(namespace)
    guest = KafkaConsumer(bootstrap_servers=kafka, group_id=topics.node_group, enable_auto_commit=False)
    try:
        guest.subscribe([topics.deadletter])
        deadline = time.monotonic() + 30
        while not guest.assignment() and time.monotonic() < deadline:
            guest.poll(200)
        assert guest.assignment(), "the guest member never joined the node group"
        time.sleep(1.0)  # let the node finish taking its partitions back
    finally:
        guest.close(autocommit=False)


def test_a_restarted_node_redispatches_each_attempt_in_flight_once(cluster):
    """After a SIGKILL and restart, every attempt in flight at the kill runs again — once, not once per
    assignment callback (issue 15, item 2: a restarted static member is assigned its partitions twice,
    ~200 ms apart, and each assignment used to re-send every attempt in flight)."""
    nodes, client, pg_url = cluster
    nodes.up("n1")
    count, seconds = 24, 4.0  # fewer than the node's 32 activity slots: every attempt runs at once
    keys = [f"r{i}-{uuid.uuid4().hex[:4]}" for i in range(count)]
    handles = [client.start(app.LongStep, key, seconds, id=f"redis-{key}") for key in keys]
    marks = nodes.marks
    wait_until(lambda: all((marks / f"{k}.start").exists() for k in keys), 60, "every activity to start")
    time.sleep(0.5)
    in_flight = sum(not (marks / f"{k}.done").exists() for k in keys)
    nodes.kill("n1")
    nodes.up("n1")
    _rebalance_nodes(nodes.kafka, nodes.namespace)  # two more assignments of the same partitions to n1
    for key, h in zip(keys, handles, strict=True):
        assert h.result(timeout=float(os.environ.get("CRASH_WAIT", 90))) == f"slept {key}"
    runs = {k: len((marks / f"{k}.start").read_text().split()) for k in keys}
    extra = sum(runs.values()) - count
    print(f"\nredispatch after restart: {in_flight} attempts in flight at the kill, {extra} extra executions, "
          f"runs per activity {sorted(Counter(runs.values()).items())}")  # fmt: skip
    assert in_flight > 0, "the kill must catch attempts running"
    assert extra <= in_flight, f"{extra} extra executions for {in_flight} attempts in flight: {runs}"
    assert_exactly_once(pg_url, client.namespace, [h.id for h in handles])
