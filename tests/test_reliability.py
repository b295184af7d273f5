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
        assert start_seconds < 2.0, f"start took {start_seconds:.1f}s with PostgreSQL down"
        assert signal_seconds < 2.0, f"signal took {signal_seconds:.1f}s with PostgreSQL down"
        assert second_seconds < 2.0, f"a second start took {second_seconds:.1f}s with PostgreSQL down"
        assert handle.result(timeout=60) == "hello pg-down/later"
        assert other.result(timeout=60) == "hello second"


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

