"""Broker faults on a 3-broker Apache Kafka cluster (RF 3, min ISR 2) with 100 workflows in flight.

The leader of the partitions in use is SIGKILLed and restarted later; then the whole cluster is stopped
and started again. Node and projector run all along in this process and are never restarted: every
workflow must complete exactly once, and the outage must show in ``metamorph_dependency_up``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType
from prometheus_client import REGISTRY

from actors import Client
from actors.node.loop import Node
from eventstore.topics import Topics, ensure_topics
from projections.migrate import migrate
from projections.projector import Projector
from tests.apps import runtime_app as app
from tests.processes import assert_exactly_once, wait_until

pytestmark = pytest.mark.slow

PARTITIONS = 4


def _kafka_up(component: str) -> float | None:
    """``metamorph_dependency_up{component, kafka}`` as a scrape sees it."""
    return REGISTRY.get_sample_value("metamorph_dependency_up", {"component": component, "dependency": "kafka"})


@pytest.fixture
def stack3(kafka_cluster, namespace, pg_url, tmp_path):
    if not kafka_cluster.running:
        kafka_cluster.start()
    kafka = kafka_cluster.bootstrap
    ensure_topics(kafka, namespace, partitions=PARTITIONS)
    migrate(pg_url, namespace)
    node = Node(kafka, namespace, data_dir=tmp_path / "node", session_timeout=6).start()
    stop = threading.Event()
    projector = threading.Thread(target=Projector(kafka, pg_url, namespace).run, args=(stop,), daemon=True)
    client = Client(kafka, pg_url, namespace)
    try:
        assert node.wait_ready(60), "node did not get its partitions"
        projector.start()
        yield kafka_cluster, node, client, pg_url, namespace
    finally:
        client.close()
        stop.set()
        projector.join(15)
        node.stop()


def _start_and_half_release(client: Client, tag: str, n: int = 100) -> list:
    handles = [client.start(app.Crashy, f"{tag}{i}", id=f"{tag}-{i}-{uuid.uuid4().hex[:4]}") for i in range(n)]
    wait_until(lambda: all(h.status() == "waiting" for h in handles), 120, f"the {n} workflows to wait")
    for h in handles[: n // 2]:  # half are in timers/activities when the fault hits
        h.signal("release")
    return handles


def _check_all(handles: list, tag: str, pg_url: str, namespace: str) -> None:
    for i, h in enumerate(handles):
        assert h.result(timeout=120) == f"slow hello {tag}{i}|{tag}{i}"
    assert_exactly_once(pg_url, namespace, [h.id for h in handles])


def test_new_topics_are_replicated_three_times_with_min_isr_two(kafka_cluster, namespace, caplog):
    if not kafka_cluster.running:
        kafka_cluster.start()
    kafka = kafka_cluster.bootstrap
    ensure_topics(kafka, namespace, partitions=2)
    topics = Topics(namespace)
    admin = KafkaAdminClient(bootstrap_servers=kafka)
    try:
        for meta in admin.describe_topics([topics.commands, topics.events, topics.deadletter]):
            assert {len(p["replica_nodes"]) for p in meta["partitions"]} == {3}, meta["name"]
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topics.events)])
        events = configs["topic"][topics.events]
        assert events["min.insync.replicas"]["value"] == "2"
        assert events["retention.ms"]["value"] == "-1", "the event log is the system of record: never expire it"
    finally:
        admin.close()
    with pytest.raises(ValueError, match="replication factor 4 is impossible on a cluster of 3"):
        ensure_topics(kafka, namespace + "x", partitions=1, replication=4)
    with caplog.at_level(logging.WARNING, logger="eventstore.topics"):
        ensure_topics(kafka, namespace + "y", partitions=1, replication=1)
    assert "replication factor 1 on a cluster of 3 brokers" in caplog.text


def test_killing_the_leader_of_the_partitions_in_use_loses_and_doubles_nothing(stack3):
    cluster, node, client, pg_url, ns = stack3
    handles = _start_and_half_release(client, "L")
    topics = Topics(ns)
    leaders = Counter(cluster.leader_of(t, p) for t in (topics.commands, topics.events) for p in range(PARTITIONS))
    victim = leaders.most_common(1)[0][0]
    cluster.node(victim).kill()  # SIGKILL: the leader of most partitions in use vanishes
    for h in handles[50:]:
        h.signal("release")  # written while the leadership moves
    time.sleep(3)
    cluster.node(victim).start()  # back later; it catches up as a follower
    _check_all(handles, "L", pg_url, ns)
    assert node._thread is not None and node._thread.is_alive()


def test_a_whole_cluster_stop_and_start_loses_and_doubles_nothing_and_is_reported(stack3):
    cluster, node, client, pg_url, ns = stack3
    handles = _start_and_half_release(client, "C")
    assert _kafka_up("node") == 1
    cluster.stop()  # graceful: every broker shuts down
    try:
        wait_until(lambda: _kafka_up("node") == 0, 30, "the node to report Kafka down")
        wait_until(lambda: _kafka_up("projector") == 0, 30, "the projector to report Kafka down")
    finally:
        cluster.start()
    for h in handles[50:]:
        h.signal("release")
    _check_all(handles, "C", pg_url, ns)
    wait_until(lambda: _kafka_up("node") == 1, 30, "the node to report Kafka up again")
    assert node._thread is not None and node._thread.is_alive()
