"""The embedded broker and PostgreSQL behave like the real servers the rest of Metamorph expects.

These tests pin down what the dev command, the demo and every other test rely on: the broker
speaks enough Kafka (topics, idempotent acks=all produce, consumer groups), a graceful stop keeps
the data (noida-db snapshots on SIGTERM), a crash of the test process leaves no broker behind, and
PostgreSQL keeps its tables across a stop/start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from eventstore.embedded import EmbeddedKafka, EmbeddedPostgres, EmbeddedStack, free_port

REPO = Path(__file__).resolve().parent.parent


def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value).get(timeout=10)
        producer.flush()
    finally:
        producer.close()


def consume(
    bootstrap: str, topic: str, want: int, group: str, timeout: float = 15
) -> list[tuple[bytes, bytes]]:
    """Read with a consumer group until ``want`` records arrived (or the deadline passed); commits."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    got: list[tuple[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(got) < want and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                got.extend((r.key, r.value) for r in batch)
        consumer.commit()
    finally:
        consumer.close()
    return got


def process_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (a reparented, unreaped child is dead for our purposes)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_dead(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.05)
    return False


# -- broker ---------------------------------------------------------------------------------


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_broker_round_trip(kafka: str, kafka_server: EmbeddedKafka, namespace: str) -> None:
    assert kafka == f"127.0.0.1:{kafka_server.port}" == kafka_server.bootstrap
    topic = f"{namespace}.events"
    create_topic(kafka, topic, partitions=2)
    admin = KafkaAdminClient(bootstrap_servers=kafka)
    try:
        assert topic in admin.list_topics()
    finally:
        admin.close()
    records = [(b"wf-1", b"started"), (b"wf-1", b"completed"), (b"wf-2", b"started")]
    produce(kafka, topic, records)
    got = consume(kafka, topic, len(records), group=f"{namespace}.nodes")
    assert sorted(got) == sorted(records)
    # Records with one key stay in order (same partition), as the engine relies on.
    assert [v for k, v in got if k == b"wf-1"] == [b"started", b"completed"]


def test_broker_graceful_restart_keeps_records_and_offsets(tmp_path: Path) -> None:
    with EmbeddedKafka(tmp_path / "kafka") as broker:
        bootstrap, port, first_pid = broker.bootstrap, broker.port, broker.pid
        create_topic(bootstrap, "durable", partitions=2)
        produce(bootstrap, "durable", [(b"a", b"1"), (b"b", b"2")])
        assert len(consume(bootstrap, "durable", 2, group="g1")) == 2  # commits offsets for g1
        produce(bootstrap, "durable", [(b"a", b"3")])

        broker.stop()  # SIGTERM: noida-db saves its state and exits
        assert broker.pid is None and not process_alive(first_pid)
        assert (broker.data_dir / "kafka.json").is_file(), "noida-db wrote no snapshot on SIGTERM"
        broker.stop()  # idempotent

        broker.start()
        assert broker.port == port and broker.bootstrap == bootstrap and broker.pid != first_pid
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            assert "durable" in admin.list_topics()
        finally:
            admin.close()
        # Every record is still there for a new group...
        assert sorted(consume(bootstrap, "durable", 3, group="g2")) == [
            (b"a", b"1"),
            (b"a", b"3"),
            (b"b", b"2"),
        ]
        # ...and g1's committed offsets survived too: it only gets what it had not read.
        assert consume(bootstrap, "durable", 1, group="g1") == [(b"a", b"3")]

        broker.restart()
        consumer = KafkaConsumer(bootstrap_servers=bootstrap)
        try:
            ends = consumer.end_offsets([TopicPartition("durable", p) for p in (0, 1)])
        finally:
            consumer.close()
        assert sum(ends.values()) == 3
    assert broker.pid is None


def test_broker_start_failure_is_reported_with_log(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        broker = EmbeddedKafka(tmp_path / "kafka", port=squatter.getsockname()[1])
        with pytest.raises(RuntimeError, match="already in use"):
            broker.start()
    assert broker.pid is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_broker_dies_with_its_parent(tmp_path: Path) -> None:
    """A test run that is SIGKILLed must not leave a broker behind."""
    script = (
        "import os, sys\n"
        "from eventstore.embedded import EmbeddedKafka\n"
        f"k = EmbeddedKafka({str(tmp_path / 'kafka')!r}).start()\n"
        "print(k.pid, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == -signal.SIGKILL, out.stderr
    pid = int(out.stdout.strip())
    try:
        assert wait_dead(pid), "broker outlived its parent"
    finally:
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)


# -- PostgreSQL -----------------------------------------------------------------------------


def test_postgres_answers(pg_url: str, pg_server: EmbeddedPostgres, namespace: str) -> None:
    assert f"/{namespace}?host=" in pg_url
    assert ":5432" not in pg_url  # our own server on a Unix socket, never the machine's
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.execute("select current_database()").fetchone() == (namespace,)
        socket_dir = conn.execute("show unix_socket_directories").fetchone()
        assert socket_dir is not None and str(pg_server.pgdata) in socket_dir[0]


def test_postgres_restart_keeps_tables(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path) as pg:
        assert pg.pgdata == tmp_path.resolve() / "pg"
        url = pg.create_database("restart_me")
        with psycopg.connect(url) as conn:
            conn.execute("create table kept (id int primary key, note text)")
            conn.execute("insert into kept values (1, 'before stop')")

        first_pid = pg.pid
        pg.stop()
        assert pg.pid is None and first_pid is not None and wait_dead(first_pid)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2).close()
        pg.stop()  # idempotent

        pg.start()
        with psycopg.connect(url) as conn:
            assert conn.execute("select note from kept").fetchall() == [("before stop",)]

        pg.restart()
        with psycopg.connect(url) as conn:
            conn.execute("insert into kept values (2, 'after restart')")
            assert conn.execute("select count(*) from kept").fetchone() == (2,)
        last_pid = pg.pid
    assert last_pid is not None and wait_dead(last_pid)


# -- both -----------------------------------------------------------------------------------


def test_stack_starts_and_stops_both(tmp_path: Path) -> None:
    with EmbeddedStack(tmp_path / "stack") as stack:
        assert (tmp_path / "stack" / "kafka").is_dir() and (
            tmp_path / "stack" / "pg" / "PG_VERSION"
        ).is_file()
        create_topic(stack.kafka, "stack.check")
        with psycopg.connect(stack.postgres) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        pids = [stack.kafka_server.pid, stack.pg_server.pid]
    assert all(pid is not None and wait_dead(pid) for pid in pids)
    stack.stop()  # idempotent
