"""Reliability hardening (issue 15): what must keep working, or be reported truthfully, when a dependency fails.

Each test reproduces a defect found by fault injection and fails without its fix.
"""

from __future__ import annotations

import threading
import time
import uuid

from actors import Client
from eventstore.topics import ensure_topics
from projections.migrate import migrate
from tests.apps import runtime_app as app
from tests.stack import running_stack


def test_start_and_signal_need_only_kafka(kafka_server, pg_server, tmp_path):
    """With PostgreSQL stopped, start and signal return promptly; the workflow completes once it is back."""
    with running_stack(kafka_server.bootstrap, pg_server, tmp_path, prefix="nopg") as (client, _node, _ns):
        assert client.start(app.Hello, "warm").result(timeout=30) == "hello warm"  # pool and listener are up
        # What a start and a signal cost here with PostgreSQL up (Kafka acks, on this machine's current load):
        # with it down they may cost that and must stay under a second more, i.e. never wait for PostgreSQL.
        began = time.monotonic()
        client.get(client.start(app.Signalled, "pg-up").id).signal("go", "now")
        kafka_only = (time.monotonic() - began) / 2
        pg_server.stop()
        try:
            started = time.monotonic()
            handle = client.start(app.Signalled, "pg-down")
            start_seconds = time.monotonic() - started
            handle.signal("go", "later")
            signal_seconds = time.monotonic() - started - start_seconds
            other = client.start(app.Hello, "second")
            second_seconds = time.monotonic() - started - start_seconds - signal_seconds
        finally:
            pg_server.start()
        bound = min(2.0, 1.0 + kafka_only)  # never looser than the 2 s this test asked before issue 15 item 6
        assert start_seconds < bound, f"start took {start_seconds:.2f}s with PostgreSQL down (Kafka only: {kafka_only:.2f}s)"
        assert signal_seconds < bound, f"signal took {signal_seconds:.2f}s with PostgreSQL down (Kafka only: {kafka_only:.2f}s)"
        assert second_seconds < bound, f"a second start took {second_seconds:.2f}s with PostgreSQL down (Kafka only: {kafka_only:.2f}s)"
        assert handle.result(timeout=60) == "hello pg-down/later"
        assert other.result(timeout=60) == "hello second"
        # result() may come from <ns>.replies before the projector has written the end; this client reads
        # its own results (it waits for the projection), and from then on every client sees them.
        assert handle.describe()["status"] == "completed" and other.status() == "completed"
        with Client(kafka_server.bootstrap, client.postgres, client.namespace) as reader:  # visible to everyone
            assert reader.get(handle.id).describe()["status"] == "completed"
            assert reader.get(other.id).status() == "completed"


def test_status_right_after_start_is_pending_before_anything_projected(kafka_server, pg_server):
    """No node and no projector: the start is only in Kafka, and the starting client still says `pending`."""
    namespace = "pend" + uuid.uuid4().hex[:8]
    postgres = pg_server.create_database(namespace)
    ensure_topics(kafka_server.bootstrap, namespace, partitions=2)
    migrate(postgres, namespace)
    with Client(kafka_server.bootstrap, postgres, namespace) as client:
        handle = client.start(app.Hello, "nobody-runs-me")
        assert handle.status() == "pending" and handle.running()
        assert handle.describe()["type"] == "rt.Hello"
        done = threading.Event()
        outcome: list = []

        def wait() -> None:
            try:
                outcome.append(handle.result(timeout=1.5))
            except Exception as exc:
                outcome.append(exc)
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        assert done.wait(10)
        assert isinstance(outcome[0], TimeoutError), outcome  # pending, not unknown


def test_the_node_has_dead_letters_acknowledged_before_it_commits(tmp_path):
    """A dead letter only buffered when the offset commit happens is lost by a crash (issue 15, item 7)."""
    from collections import namedtuple

    from kafka import TopicPartition

    from actors.node.loop import Node, _Owned

    order: list[str] = []

    class Future:
        def get(self, timeout=None):
            order.append("ack")

    class Producer:
        def send(self, topic, key=None, value=None, partition=None, headers=None):
            order.append(f"send {topic}")
            return Future()

        def flush(self, timeout=None):
            order.append("flush")

    class Log:
        kafka_producer = Producer()

    class Consumer:
        def commit(self, offsets):
            order.append("commit")

    node = Node("127.0.0.1:9", "dl", data_dir=tmp_path)
    node._log = Log()  # type: ignore[assignment]
    node.partitions = 1
    node._owned = {0: _Owned(store=None, epoch=1)}  # type: ignore[arg-type]
    record = namedtuple("Record", "offset key value")(7, b"k", b"not a metamorph record")
    node._handle_records(Consumer(), {TopicPartition("dl.commands", 0): [record]})  # type: ignore[arg-type]
    assert order[0] == "send dl.deadletter" and order[-1] == "commit", order
    assert "ack" in order and order.index("ack") < order.index("commit"), order
