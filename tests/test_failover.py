"""Failover without a restart: a node, an activity worker or a projector killed for good is replaced.

The killed process never comes back. Its consumer group notices the silence after the session timeout,
gives its partitions to the survivor, and the survivor restores and finishes every workflow: nothing
lost, no activity result recorded twice, no projection row written twice. The session timeout is 3 s
here (``--session-timeout``); each test prints the takeover time it measured.

On the embedded noida-db broker a dead static member is never evicted, so these run on Apache Kafka only
(the session broker unless ``METAMORPH_TEST_BROKER=noida``, in which case they start their own).
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from actors import Client
from actors.node.loop import Node
from eventstore.topics import ensure_topics
from projections.migrate import migrate
from projections.projector import Projector
from tests.apache import ApacheKafka
from tests.apps import runtime_app as app
from tests.processes import APP, Processes, assert_exactly_once, owned_partitions, wait_until

pytestmark = pytest.mark.slow

SESSION = "3"
PARTITIONS = 4


@pytest.fixture(scope="module")
def apache(kafka_server, tmp_path_factory):
    """Apache Kafka: the session broker, or one of this module's own when the session runs on noida-db."""
    if isinstance(kafka_server, ApacheKafka):
        if not kafka_server.running:
            kafka_server.start()
        yield kafka_server.bootstrap
        return
    with ApacheKafka(tmp_path_factory.mktemp("apache")) as server:
        yield server.bootstrap


@pytest.fixture
def setup(apache, namespace, pg_url, tmp_path):
    ensure_topics(apache, namespace, partitions=PARTITIONS)
    migrate(pg_url, namespace)
    procs = Processes(tmp_path / "logs", {"METAMORPH_TEST_MARKS": str(tmp_path / "marks")})
    client = Client(apache, pg_url, namespace)
    yield procs, client, apache, namespace, pg_url, tmp_path
    client.close()
    procs.stop_all()


def _projector_thread(kafka: str, pg_url: str, namespace: str) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=Projector(kafka, pg_url, namespace).run, args=(stop,), daemon=True)
    thread.start()
    return thread, stop


def test_a_node_killed_for_good_is_replaced_by_the_survivor(setup):
    procs, client, kafka, ns, pg_url, tmp = setup
    projector, stop = _projector_thread(kafka, pg_url, ns)
    try:
        procs.node("a", kafka, ns, tmp / "data", "--session-timeout", SESSION)
        procs.node("b", kafka, ns, tmp / "data", "--session-timeout", SESSION)
        pattern = r"node {} owns partition (\d+)"
        wait_until(lambda: owned_partitions(procs.log("b"), pattern.format("b")), 30, "b to own partitions")
        handles = [client.start(app.Crashy, f"f{i}", id=f"fo-{i}-{uuid.uuid4().hex[:4]}") for i in range(24)]
        wait_until(lambda: all(h.status() == "waiting" for h in handles), 60, "every workflow to wait")
        b_before = owned_partitions(procs.log("b"), pattern.format("b"))
        assert 0 < len(b_before) < PARTITIONS, f"b owns {b_before}: both nodes must share the work"

        killed = time.monotonic()
        procs.kill("a")  # SIGKILL, and a never comes back
        for h in handles:  # signals for a's workflows wait in Kafka until b takes the partitions
            h.signal("release")
        wait_until(
            lambda: owned_partitions(procs.log("b"), pattern.format("b")) == set(range(PARTITIONS)),
            60, "b to take over a's partitions",
        )  # fmt: skip
        takeover = time.monotonic() - killed
        for i, h in enumerate(handles):
            assert h.result(timeout=90) == f"slow hello f{i}|f{i}"
        finished = time.monotonic() - killed
        print(f"\nnode takeover: partitions after {takeover:.1f}s, all 24 results after {finished:.1f}s "
              f"(session timeout {SESSION}s)")  # fmt: skip
        assert takeover < float(SESSION) + 20
        assert procs.procs["b"].poll() is None, "the survivor must not have restarted"
        assert_exactly_once(pg_url, ns, [h.id for h in handles])
    finally:
        stop.set()
        projector.join(10)


def test_an_activity_worker_killed_for_good_is_replaced_by_the_other(setup):
    procs, client, kafka, ns, pg_url, tmp = setup
    projector, stop = _projector_thread(kafka, pg_url, ns)
    node = Node(kafka, ns, data_dir=tmp / "node", run_activities=False).start()  # activities only on workers
    try:
        assert node.wait_ready(30)
        w1 = procs.cli("w1", "worker", kafka, ns, "--app", APP, "--name", "w1", "--session-timeout", SESSION,
                       ready="activity worker running")  # fmt: skip
        procs.cli("w2", "worker", kafka, ns, "--app", APP, "--name", "w2", "--session-timeout", SESSION,
                  ready="activity worker running")  # fmt: skip
        time.sleep(2)  # let the group settle with both members (tasks sent earlier would all go to one)
        handles = [client.start(app.LongStep, f"k{i}", 3.0, id=f"lw-{i}-{uuid.uuid4().hex[:4]}") for i in range(16)]
        marks = tmp / "marks"

        def started_by(pid: int) -> list[str]:
            return [p.name for p in marks.glob("*.start") if str(pid) in p.read_text().split()]

        wait_until(lambda: marks.exists() and started_by(w1.pid), 30, "w1 to run activities")
        time.sleep(0.5)
        killed = time.monotonic()
        in_flight = started_by(w1.pid)
        procs.kill("w1")  # mid-activity: w1's tasks are running and their offsets not committed
        for i, h in enumerate(handles):
            assert h.result(timeout=90) == f"slept k{i}"
        print(f"\nworker takeover: all 16 results {time.monotonic() - killed:.1f}s after the kill; "
              f"{len(in_flight)} attempts were running on the killed worker")  # fmt: skip
        for i in range(16):
            assert (marks / f"k{i}.done").exists(), f"k{i} never finished an execution"
        assert_exactly_once(pg_url, ns, [h.id for h in handles])
    finally:
        node.stop()
        stop.set()
        projector.join(10)


def test_a_projector_killed_for_good_is_replaced_by_the_other(setup):
    procs, client, kafka, ns, pg_url, tmp = setup
    node = Node(kafka, ns, data_dir=tmp / "node").start()
    try:
        assert node.wait_ready(30)
        pattern = r"projector \S+: assigned \[([\d, ]+)\]"
        args = ("--postgres", pg_url, "--session-timeout", SESSION)
        procs.cli("pa", "projector", kafka, ns, "--name", "pa", *args, ready="projector running")
        procs.cli("pb", "projector", kafka, ns, "--name", "pb", *args, ready="projector running")
        wait_until(lambda: owned_partitions(procs.log("pb"), pattern), 30, "pb to be assigned partitions")
        first = [client.start(app.Hello, f"p{i}", id=f"pj-{i}-{uuid.uuid4().hex[:4]}") for i in range(20)]
        for i, h in enumerate(first):
            assert h.result(timeout=60) == f"hello p{i}"
        pb_before = owned_partitions(procs.log("pb"), pattern)
        assert 0 < len(pb_before) < PARTITIONS, f"pb was assigned {pb_before}: both projectors must share the work"
        killed = time.monotonic()
        procs.kill("pa")
        wait_until(
            lambda: owned_partitions(procs.log("pb"), pattern) == set(range(PARTITIONS)),
            60, "pb to take over pa's partitions",
        )  # fmt: skip
        takeover = time.monotonic() - killed
        second = [client.start(app.Hello, f"q{i}", id=f"pk-{i}-{uuid.uuid4().hex[:4]}") for i in range(20)]
        for i, h in enumerate(second):
            assert h.result(timeout=90) == f"hello q{i}"
        print(f"\nprojector takeover: partitions after {takeover:.1f}s, all 20 new results "
              f"{time.monotonic() - killed:.1f}s after the kill")  # fmt: skip
        assert takeover < float(SESSION) + 20
        assert procs.procs["pb"].poll() is None
        assert_exactly_once(pg_url, ns, [h.id for h in first + second])
    finally:
        node.stop()
