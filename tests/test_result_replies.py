"""result() on ``<ns>.replies`` (issue 16): the owning node publishes each workflow's outcome once it is
durable, and result() (sync and async) returns it without waiting for the projector. The projection stays
the source of truth: a result produced before the client listened is read from it."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest

from actors import AsyncClient, Client, WorkflowFailed
from actors.engine.dispatch import messages_for_history, result_message
from actors.node.loop import Node
from eventstore import codec
from eventstore.topics import Topics, ensure_topics
from projections.migrate import migrate
from projections.projector import Projector
from tests.apps import runtime_app as app
from tests.apps.policies_app import Fails


@pytest.fixture(scope="module")
def no_projector(kafka_server, pg_server, tmp_path_factory):
    """A node and a migrated database, but no projector: the projection never learns how a workflow ended,
    so only the replies topic can give result() its answer."""
    if not kafka_server.running:
        kafka_server.start()
    if not pg_server.running:
        pg_server.start()
    namespace = "rr" + uuid.uuid4().hex[:8]
    postgres = pg_server.create_database(namespace)
    ensure_topics(kafka_server.bootstrap, namespace, partitions=2)
    migrate(postgres, namespace)
    node = Node(kafka_server.bootstrap, namespace, data_dir=tmp_path_factory.mktemp("node")).start()
    try:
        assert node.wait_ready(30), "node did not get its partitions"
        yield kafka_server.bootstrap, postgres, namespace
    finally:
        node.stop()


def test_sync_result_comes_from_the_replies_topic(no_projector):
    kafka, postgres, namespace = no_projector
    with Client(kafka, postgres, namespace) as client:
        # The listener starts with the first result() and reads from the end; start it first here, so that
        # even the first workflow's outcome is published after it listens (else only the projection has it).
        assert client._result_replies() is not None
        assert client.start(app.Hello, "ada").result(timeout=20) == "hello ada"
        chain = client.start(app.Chain, "c", 3)
        assert chain.result(timeout=20) == "hello c/2"
        # The projection never hears of it here, yet the handle that got the outcome reads it back.
        assert chain.status() == "completed" and chain.output() == "hello c/2"
        with pytest.raises(WorkflowFailed, match="fails on purpose") as failed:
            client.start(Fails, "f").result(timeout=20)
        assert failed.value.error_type == "RuntimeError" and "Traceback" in failed.value.traceback
        # Two handles of the same id waiting at once both get the outcome.
        h = client.start(app.Signalled, "two")
        both: list = []
        waiters = [threading.Thread(target=lambda: both.append(client.get(h.id).result(timeout=30))) for _ in range(2)]
        for t in waiters:
            t.start()
        replies = client._result_replies()
        assert replies is not None
        deadline = time.monotonic() + 20
        while len(replies._results.get(h.id, ())) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)  # both waiters subscribed before the workflow can end
        h.signal("go", "now")
        for t in waiters:
            t.join(40)
        assert both == ["hello two/now", "hello two/now"]


def test_async_result_comes_from_the_replies_topic(no_projector):
    kafka, postgres, namespace = no_projector

    async def main() -> list:
        async with AsyncClient(kafka, postgres, namespace) as client:
            assert await client._result_replies() is not None  # listening before the first start
            handles = [await client.start(app.Hello, f"a{i}") for i in range(5)]
            out = list(await asyncio.gather(*[h.result(timeout=30) for h in handles]))
            with pytest.raises(WorkflowFailed, match="fails on purpose"):
                await (await client.start(Fails, "af")).result(timeout=30)
            return out

    assert asyncio.run(main()) == [f"hello a{i}" for i in range(5)]


def test_a_result_produced_before_the_client_listened_is_read_from_the_projection(no_projector):
    kafka, postgres, namespace = no_projector
    stop = threading.Event()
    projector = threading.Thread(target=Projector(kafka, postgres, namespace).run, args=(stop,), daemon=True)
    projector.start()
    try:
        with Client(kafka, postgres, namespace) as first:
            handle = first.start(app.Hello, "early")
            assert handle.result(timeout=20) == "hello early"
        with Client(kafka, postgres, namespace) as late:  # its replies consumer starts at the end: nothing to read
            assert late.get(handle.id).result(timeout=20) == "hello early"
    finally:
        stop.set()
        projector.join(10)


def _events(run: str, *kinds: str) -> list[dict]:
    at = datetime(2026, 11, 29, tzinfo=UTC)
    bodies = {
        "WorkflowStarted": {"workflow_type": "t", "input": b""}, "WorkflowCompleted": {"result": b"\x00"},
        "WorkflowTerminated": {"reason": "reset"}, "WorkflowContinued": {"new_run_id": "r9", "input": b""},
    }
    return [{"type": k, "seq": i + 1, "run_id": run, "at": at, **bodies.get(k, {})} for i, k in enumerate(kinds)]


def _results(messages: list) -> list[dict]:
    out = []
    for m in messages:
        name, record = codec.registry().decode(m.value)
        if name == "metamorph.WorkflowResult":
            out.append(record)
    return out


def test_only_a_run_that_ends_the_workflow_publishes_a_result():
    topics = Topics("ns")
    done = _events("r1", "WorkflowStarted", "WorkflowCompleted")
    [result] = _results(messages_for_history(topics, "w", [], done))
    assert result["workflow_id"] == "w" and result["status"] == "completed" and result["result"] == b"\x00"
    # Continue-as-new goes on in a new run: no outcome yet.
    assert _results(messages_for_history(topics, "w", [], _events("r1", "WorkflowStarted", "WorkflowContinued"))) == []
    # A reset ends the old run and begins a new one in the same batch: no outcome either.
    reset = _events("r1", "WorkflowStarted", "WorkflowTerminated") + _events("r2", "WorkflowStarted")
    assert _results(messages_for_history(topics, "w", [], reset)) == []
    assert result_message(topics, "w", {"type": "ActivityCompleted", "run_id": "r1"}) is None
