"""The representative subset on the embedded noida-db broker, whatever broker the session uses.

noida-db stays the zero-install default of ``metamorph demo`` and ``metamorph dev`` (the demo test runs on
it by construction), so start → complete, signals, timers, projections and a crash restart are shown on it
here too. Failover without a restart and broker faults are not: noida-db never evicts a dead group member
and loses acknowledged writes on a kill -9 (see README, "Embedded default vs production").
"""

from __future__ import annotations

import signal
import threading
import uuid

import pytest

from actors import Client
from eventstore.topics import ensure_topics
from projections.migrate import connect, migrate
from projections.projector import Projector
from tests.apps import runtime_app as app
from tests.processes import Processes, assert_exactly_once, wait_until
from tests.stack import running_stack

pytestmark = pytest.mark.noida


@pytest.fixture
def noida_stack(noida_server, pg_server, tmp_path):
    if not noida_server.running:
        noida_server.start()
    with running_stack(noida_server.bootstrap, pg_server, tmp_path / "node", prefix="nd") as stack:
        yield stack


def test_start_signal_timer_and_projection_on_noida(noida_stack):
    client, _node, ns = noida_stack
    hello = client.start(app.Hello, "noida")
    waiting = client.start(app.Signalled, "s")
    sleepy = client.start(app.Sleepy, 0.5)
    assert hello.result(timeout=30) == "hello noida"
    wait_until(lambda: waiting.status() == "waiting", 30, "the signalled workflow to wait")
    waiting.signal("go", "now")
    assert waiting.result(timeout=30) == "hello s/now"
    assert sleepy.result(timeout=30) == "rested"
    types = [e["type"] for e in sleepy.history()]
    assert "TimerStarted" in types and "TimerFired" in types
    # result() may come from <ns>.replies before the projector writes the end; a read through the client
    # waits for it (issue 16), so the direct read below sees what the client saw.
    assert client.count(status="completed") == 3
    with connect(client.postgres, ns) as conn:
        statuses = dict(conn.execute("SELECT id, status FROM workflows").fetchall())
    assert statuses == {hello.id: "completed", waiting.id: "completed", sleepy.id: "completed"}


def test_a_node_killed_and_restarted_on_noida_loses_nothing(noida_server, pg_url, namespace, tmp_path):
    if not noida_server.running:
        noida_server.start()
    kafka = noida_server.bootstrap
    ensure_topics(kafka, namespace, partitions=2)
    migrate(pg_url, namespace)
    stop = threading.Event()
    projector = threading.Thread(target=Projector(kafka, pg_url, namespace).run, args=(stop,), daemon=True)
    projector.start()
    procs = Processes(tmp_path / "logs", {"METAMORPH_TEST_MARKS": str(tmp_path / "marks")})
    client = Client(kafka, pg_url, namespace)
    try:
        procs.node("n1", kafka, namespace, tmp_path / "data")
        handles = [client.start(app.Crashy, f"n{i}", id=f"nd-{i}-{uuid.uuid4().hex[:4]}") for i in range(10)]
        wait_until(lambda: all(h.status() == "waiting" for h in handles), 60, "the workflows to wait")
        for h in handles[:5]:
            h.signal("release")
        procs.kill("n1", signal.SIGKILL)
        for h in handles[5:]:
            h.signal("release")
        procs.node("n1", kafka, namespace, tmp_path / "data")  # the same static member comes back
        for i, h in enumerate(handles):
            assert h.result(timeout=90) == f"slow hello n{i}|n{i}"
        assert_exactly_once(pg_url, namespace, [h.id for h in handles])
    finally:
        client.close()
        procs.stop_all()
        stop.set()
        projector.join(10)
