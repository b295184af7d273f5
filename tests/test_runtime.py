"""The runtime end to end through the real broker and PostgreSQL: one node, the projector, the client."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import REGISTRY

from actors import (
    Client,
    QueryFailed,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowNotRunning,
    WorkflowTerminated,
)
from eventstore import codec
from eventstore.log import PayloadTooLargeError
from eventstore.topics import Topics
from tests.apps import runtime_app as app
from tests.stack import running_stack


@pytest.fixture(scope="module")
def rt(kafka_server, pg_server, tmp_path_factory):
    node_dir = tmp_path_factory.mktemp("node")
    with running_stack(kafka_server.bootstrap, pg_server, node_dir, max_live_workflows=50, prefix="rt", partitions=4) as (client, node, _ns):
        yield client, node


def _wait_waiting(handles: list, seconds: float) -> None:
    """Give each handle up to ``seconds`` to reach ``waiting``; the test's own assertions say if it did not."""
    for h in handles:
        deadline = time.monotonic() + seconds
        while h.status() != "waiting" and time.monotonic() < deadline:
            time.sleep(0.05)


def _wait_status(handle, status: str, seconds: float) -> None:
    """Give ``handle`` up to ``seconds`` to reach ``status`` in the projections; the test asserts it did."""
    deadline = time.monotonic() + seconds
    while handle.status() != status and time.monotonic() < deadline:
        time.sleep(0.05)


def test_hello_chain_and_fan_out(rt):
    client, _ = rt
    assert client.start(app.Hello, "ada").result(timeout=20) == "hello ada"
    assert client.start(app.Chain, "c", 10).result(timeout=20) == "hello c/9"
    assert client.start(app.FanOut, "f", 50).result(timeout=20) == "50:hello f/49"


def test_status_pending_then_signal_query_update_and_history(rt):
    client, _ = rt
    handle = client.start(app.Signalled, "s")
    assert handle.status() in ("pending", "waiting", "running")
    _wait_waiting([handle], 10)
    assert handle.status() == "waiting" and handle.running()
    assert handle.query("peek") is None
    assert handle.update("add", "x") == 1
    assert handle.update("add", "y") == 2
    with pytest.raises(QueryFailed, match="no query named"):
        handle.query("nope")
    with pytest.raises(QueryFailed):
        handle.update("add")  # wrong arguments
    handle.signal("go", "now")
    assert handle.result(timeout=20) == "hello s/now"
    assert handle.completed() and not handle.running() and handle.output() == "hello s/now"
    history = handle.history()
    assert [e["seq"] for e in history] == sorted(e["seq"] for e in history)
    assert history[0]["type"] == "WorkflowStarted" and history[-1]["type"] == "WorkflowCompleted"
    assert {"SignalReceived", "UpdateAccepted", "UpdateCompleted"} <= {e["type"] for e in history}
    assert all({"seq", "type", "at"} <= set(e) for e in history)


def test_activity_timeouts_heartbeats_retries_and_non_retryable(rt):
    client, _ = rt
    cases = {
        "start-to-close": "ActivityTimeout after 2",
        "heartbeat": "ActivityTimeout after 2",
        "beating": "12",
        "fails": "RuntimeError after 3",
        "refuses": "NonRetryableError after 1",
        "unknown": "ActivityNotRegistered after 1",
        "big": "PayloadTooLarge after 1",
    }
    handles = {kind: client.start(app.Timeouts, kind) for kind in cases}
    for kind, expected in cases.items():
        assert handles[kind].result(timeout=30) == expected, kind
    exceptions = handles["fails"].exceptions()
    assert [(e["activity"], e["attempt"], e["error_type"]) for e in exceptions] == [("rt.fails", i, "RuntimeError") for i in (1, 2, 3)]
    assert all("boom" in e["message"] and "Traceback" in e["traceback"] for e in exceptions)


def test_100_children_times_10_activities_within_120_seconds(rt):
    client, _ = rt
    started = time.monotonic()
    assert client.start(app.Parent, 100).result(timeout=120) == sum(range(100))
    assert time.monotonic() - started < 120


def test_continue_as_new_is_followed_by_the_handle(rt):
    client, _ = rt
    handle = client.start(app.Looping, 3)
    assert handle.result(timeout=30) == 99
    assert handle.history()[0]["continued_from"]


def test_passivated_workflows_are_rebuilt_by_replay(rt):
    client, node = rt
    handles = [client.start(app.Signalled, f"p{i}") for i in range(80)]  # more than max_live_workflows=50
    _wait_waiting(handles, 20)
    assert len(node._live) <= 50
    for i, h in enumerate(handles):
        h.signal("go", str(i))
    assert [h.result(timeout=30) for h in handles] == [f"hello p{i}/{i}" for i in range(80)]


def test_queries_to_passivated_workflows_do_not_wake_them(rt):
    client, node = rt
    handles = [client.start(app.Signalled, f"q{i}") for i in range(70)]  # more than max_live_workflows=50
    _wait_waiting(handles, 20)
    assert [h.update("add", "x") for h in handles] == [1] * 70  # state that only the history carries
    passive = [h for h in handles if h.id not in node._live]
    assert len(passive) >= 10
    answered_before = REGISTRY.get_sample_value("metamorph_passivated_queries_total") or 0.0
    assert [h.query("count") for h in passive] == [1] * len(passive)  # rebuilt by replay, answered right
    assert not any(h.id in node._live for h in passive)  # and still asleep: no actor, no LRU churn
    assert REGISTRY.get_sample_value("metamorph_passivated_queries_total") - answered_before == len(passive)
    with pytest.raises(QueryFailed, match="no query named"):
        passive[0].query("nope")
    with pytest.raises(WorkflowNotFound):  # answered by the owning node, which knows every id it has
        client.get("no-such-query-target").query("count")
    assert "no-such-query-target" not in node._live
    for i, h in enumerate(handles):
        h.signal("go", str(i))
    assert [h.result(timeout=30) for h in handles] == [f"hello q{i}/{i}" for i in range(70)]


def test_bad_input_is_reported_and_nothing_else_is_lost(rt, kafka_server):
    client, _ = rt
    topics = Topics(client.namespace)
    raw = KafkaProducer(bootstrap_servers=kafka_server.bootstrap)
    raw.send(topics.commands, key=b"junk", value=b"\x00garbage that is not avro", partition=0)
    raw.flush()
    raw.close()
    good = client.start(app.Hello, "after-junk")
    unknown = client.start("rt.NoSuchWorkflow", 1)
    wrong_args = client.start(app.Hello, "a", "b", "c")
    assert good.result(timeout=20) == "hello after-junk"
    # docs/API.md §14 (was: failed with UnknownWorkflowType): a type no node knows blocks, reason in exceptions()
    _wait_status(unknown, "blocked", 20)
    assert unknown.status() == "blocked" and unknown.running()
    assert [(e["error_type"], "rt.NoSuchWorkflow" in e["message"]) for e in unknown.exceptions()] == [
        ("UnknownWorkflowType", True)
    ]
    unknown.terminate("retired")  # terminate ends a blocked workflow
    with pytest.raises(WorkflowTerminated):
        unknown.result(timeout=20)
    with pytest.raises(WorkflowFailed) as failed:
        wrong_args.result(timeout=20)
    assert failed.value.error_type == "TypeError"
    with pytest.raises(PayloadTooLargeError, match="limit"):
        client.start(app.Hello, "x" * 2_200_000)  # over METAMORPH_MAX_PAYLOAD (2 MiB)
    with pytest.raises(WorkflowNotFound):
        client.get("no-such-id").status()
    consumer = KafkaConsumer(bootstrap_servers=kafka_server.bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topics.deadletter, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    reasons = []
    deadline = time.monotonic() + 10
    while not reasons and time.monotonic() < deadline:
        reasons += [codec.decode(r.value)["reason"] for r in consumer.poll(timeout_ms=500).get(tp, [])]
    consumer.close()
    assert any("undecodable command" in r for r in reasons)


def test_duplicate_start_runs_nothing_twice(rt):
    client, _ = rt
    wid = f"dup-{uuid.uuid4().hex[:6]}"
    first = client.start(app.Hello, "one", id=wid)
    client.start(app.Hello, "two", id=wid)
    assert first.result(timeout=20) == "hello one"
    time.sleep(0.5)
    assert sum(1 for e in first.history() if e["type"] == "WorkflowStarted") == 1


def test_cancel_and_terminate(rt):
    client, _ = rt
    sleeper = client.start(app.Sleepy, 3600)
    other = client.start(app.Sleepy, 3600)
    _wait_waiting([sleeper], 10)
    assert sleeper.query("ping") == "pong"
    sleeper.cancel()
    other.terminate("enough")
    from actors import WorkflowCancelled, WorkflowTerminated

    with pytest.raises(WorkflowCancelled):
        sleeper.result(timeout=20)
    with pytest.raises(WorkflowTerminated):
        other.result(timeout=20)
    assert [s.status for s in client.list(status="cancelled")][:1] == ["cancelled"]


def test_a_dead_broker_or_database_is_a_clear_error_not_a_hang():
    from actors.client.sync import _redact

    started = time.monotonic()
    with Client(kafka="127.0.0.1:9", postgres="postgresql://u:secret@127.0.0.1:9/db", namespace="x") as dead:
        with pytest.raises(ConnectionError, match="127.0.0.1:9 is unreachable"):
            dead.start(app.Hello, "x")
        with pytest.raises(ConnectionError, match="PostgreSQL") as pg_error:
            dead.list()
        assert "secret" not in str(pg_error.value)
    assert time.monotonic() - started < 20
    assert _redact("host=h password=hunter2 dbname=d") == "host=h password=*** dbname=d"


def test_a_kafka_only_client_can_start_signal_and_query(rt):
    client, _ = rt
    with Client(client.kafka, None, client.namespace) as kafka_only:
        handle = kafka_only.start(app.Signalled, "k")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                assert handle.query("peek") is None
                break
            except QueryFailed:  # not started yet: the query raced the start command
                time.sleep(0.05)
        handle.signal("go", "kafka")
        with pytest.raises(RuntimeError, match="METAMORPH_POSTGRES"):
            handle.status()
    assert client.get(handle.id).result(timeout=20) == "hello k/kafka"


def test_activities_run_eagerly_on_the_node_that_scheduled_them(rt, kafka_server):
    """The node's own worker serves `default`: tasks skip the broker (two hops fewer per activity)."""
    from eventstore.log import end_offsets

    client, node = rt
    topic = Topics(client.namespace).activities("default")
    before = sum(end_offsets(kafka_server.bootstrap, topic, list(range(node.partitions))).values())
    assert client.start(app.Chain, "eager", 5).result(timeout=20) == "hello eager/4"
    after = sum(end_offsets(kafka_server.bootstrap, topic, list(range(node.partitions))).values())
    assert after == before


def test_acting_on_an_ended_workflow_raises_workflow_not_running(rt):
    """docs/API.md §14: an operation that did nothing says so."""
    client, _ = rt
    done = client.start(app.Signalled, "ended")
    _wait_waiting([done], 10)
    done.signal("go", "now")
    assert done.result(timeout=20) == "hello ended/now"
    with pytest.raises(WorkflowNotRunning, match="is not running \\(it is completed\\)") as refused:
        done.signal("go", "again")
    assert (refused.value.workflow_id, refused.value.status) == (done.id, "completed")
    with pytest.raises(WorkflowNotRunning):
        done.cancel()
    with pytest.raises(WorkflowNotRunning):
        done.terminate("too late")
    with pytest.raises(WorkflowNotRunning) as refused:
        done.update("add", "x")  # answered by the owning node
    assert refused.value.status == "completed"
    assert done.query("peek") == "now"  # a query still reads the final state
    with pytest.raises(WorkflowNotFound):
        client.get(f"missing-{uuid.uuid4().hex[:6]}").signal("go", "x")


def test_an_unknown_signal_is_shown_in_exceptions_and_the_workflow_carries_on(rt):
    client, _ = rt
    handle = client.start(app.Signalled, "typo")
    _wait_waiting([handle], 10)
    handle.signal("og", "now")  # a typo: accepted by Kafka, rejected by the workflow
    handle.signal("go", "now")
    assert handle.result(timeout=20) == "hello typo/now"
    rejected = [e for e in handle.exceptions() if e["error_type"] == "UnknownSignal"]
    assert len(rejected) == 1 and "'og'" in rejected[0]["message"] and rejected[0]["activity"] is None
    assert "CommandRejected" in [e["type"] for e in handle.history()]


def test_an_unknown_status_filter_is_refused(rt):
    client, _ = rt
    with pytest.raises(ValueError, match="unknown status 'bogus'"):
        client.list(status="bogus")
    assert all(s.status == "completed" for s in client.list(status="completed", limit=5))
