"""A log that shrank under a reader is noticed: the node (restore) and the projector (seek) stop that
partition loudly instead of writing after, or projecting, records that are not the ones they had read.

The tests shrink the log the way an operator can on any Kafka: delete the namespace's topics and create
them again (offsets restart at 0). noida-db does the same by itself after a kill -9 (docs/DESIGN.md).
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from kafka import KafkaAdminClient
from prometheus_client import REGISTRY

from actors import Client
from actors.node.loop import Node
from eventstore.topics import Topics, ensure_topics, partition_for
from projections.migrate import connect, migrate
from projections.projector import Projector
from tests.apps import runtime_app as app
from tests.processes import wait_until

PARTITIONS = 2


def _truncated(component: str, partition: int) -> float | None:
    labels = {"component": component, "partition": str(partition)}
    return REGISTRY.get_sample_value("metamorph_log_truncated", labels)


def _recreate_topics(kafka: str, namespace: str) -> None:
    topics = Topics(namespace)
    names = [topics.commands, topics.events]
    admin = KafkaAdminClient(bootstrap_servers=kafka)
    try:
        admin.delete_topics(names)
        wait_until(lambda: not set(names) & set(admin.list_topics()), 30, "the topics to be deleted")
    finally:
        admin.close()
    deadline = time.monotonic() + 30
    while True:  # a deletion finishes in the background: creating too early is refused for a moment
        try:
            ensure_topics(kafka, namespace, partitions=PARTITIONS)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _ids_on_every_partition(prefix: str, per_partition: int = 3) -> list[str]:
    """Workflow ids, ``per_partition`` on each partition, so every partition has something to lose."""
    ids: list[str] = []
    counts = dict.fromkeys(range(PARTITIONS), 0)
    while min(counts.values()) < per_partition:
        wid = f"{prefix}-{uuid.uuid4().hex[:8]}"
        p = partition_for(wid, PARTITIONS)
        if counts[p] < per_partition:
            counts[p] += 1
            ids.append(wid)
    return ids


def _run_some(kafka: str, pg_url: str, namespace: str, data, name: str) -> list[str]:
    node = Node(kafka, namespace, data_dir=data, name=name).start()
    stop = threading.Event()
    projector = threading.Thread(
        target=Projector(kafka, pg_url, namespace, name="pj").run, args=(stop,), daemon=True
    )  # fmt: skip
    client = Client(kafka, pg_url, namespace)
    try:
        assert node.wait_ready(30)
        projector.start()
        handles = [client.start(app.Hello, f"t{i}", id=wid) for i, wid in enumerate(_ids_on_every_partition("tr"))]
        for i, h in enumerate(handles):
            assert h.result(timeout=60) == f"hello t{i}"
        return [h.id for h in handles]
    finally:
        client.close()
        stop.set()
        projector.join(10)
        node.stop()


@pytest.fixture
def shrunk(kafka, namespace, pg_url, tmp_path):
    """A namespace whose node store and projection have read events that the log no longer has."""
    ensure_topics(kafka, namespace, partitions=PARTITIONS)
    migrate(pg_url, namespace)
    _run_some(kafka, pg_url, namespace, tmp_path / "node", "n1")
    _recreate_topics(kafka, namespace)
    return kafka, namespace, pg_url, tmp_path, set(range(PARTITIONS))


def test_a_node_whose_log_shrank_stops_the_partition_instead_of_writing_after_it(shrunk, caplog):
    kafka, namespace, _pg, tmp_path, used = shrunk
    node = Node(kafka, namespace, data_dir=tmp_path / "node", name="n1").start()  # same store, shorter log
    try:
        assert node.wait_ready(30)
        wait_until(lambda: all(_truncated("node", p) == 1 for p in used), 30, "the node to report truncation")
        assert not set(node.owned_partitions) & used, "a truncated partition must not be owned"
        assert "the log was truncated or reset" in caplog.text
        # Commands for a stopped partition stay in Kafka: nothing is decided on a history that is gone.
        client = Client(kafka, None, namespace)
        wid = next(f"after-{i}" for i in range(1000) if partition_for(f"after-{i}", PARTITIONS) in used)
        client.start(app.Hello, "late", id=wid)
        time.sleep(2)
        assert node._log is not None
        assert node._log.end_offset(partition_for(wid, PARTITIONS)) == 0, "the node wrote events after all"
        client.close()
    finally:
        node.stop()


def test_a_projector_whose_log_shrank_stops_the_partition_instead_of_projecting_reused_offsets(shrunk, caplog):
    kafka, namespace, pg_url, tmp_path, used = shrunk
    with connect(pg_url, namespace) as conn:
        before = conn.execute("SELECT count(*) FROM history").fetchone()[0]
    # A fresh node (empty store) writes new events at offsets the projector has already passed.
    node = Node(kafka, namespace, data_dir=tmp_path / "fresh", name="n2").start()
    stop = threading.Event()
    projector = Projector(kafka, pg_url, namespace, name="pj")
    thread = threading.Thread(target=projector.run, args=(stop,), daemon=True)
    client = Client(kafka, pg_url, namespace)
    try:
        assert node.wait_ready(30)
        for i, wid in enumerate(_ids_on_every_partition("tu")):
            client.start(app.Hello, f"u{i}", id=wid)
        thread.start()
        wait_until(lambda: all(_truncated("projector", p) == 1 for p in used), 30, "the projector to report it")
        time.sleep(2)
        with connect(pg_url, namespace) as conn:
            after = conn.execute("SELECT count(*) FROM history").fetchone()[0]
            rows = conn.execute("SELECT partition FROM projector_offsets").fetchall()
        assert rows, "the stored offsets must be kept for the operator"
        assert after == before, f"{after - before} events at reused offsets were projected"
        assert "the log was truncated or reset" in caplog.text
    finally:
        client.close()
        stop.set()
        thread.join(10)
        node.stop()
