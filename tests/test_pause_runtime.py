"""Pause/resume and reset (docs/API.md §7) end to end: real Kafka, a node, the projector, PostgreSQL, CLI, HTTP.

What only the real stack shows: the node's durable timer fires while the workflow is paused and its
FireTimer is kept (CommandDeferred) rather than lost with the committed offset; the projections show
``paused`` and then the new run of a reset; the client refuses bad input before anything is sent.
"""

from __future__ import annotations

import time

import pytest

from actors import WorkflowFailed, WorkflowNotRunning
from actors.interfaces.cli import EXIT_REFUSED, EXIT_USAGE, main
from tests.apps.pause_app import Napper, Steps
from tests.processes import wait_until
from tests.stack import running_stack


@pytest.fixture(scope="module")
def stack(kafka_server, pg_server, tmp_path_factory):
    with running_stack(kafka_server.bootstrap, pg_server, tmp_path_factory.mktemp("node"), prefix="pz", partitions=2) as (
        client, node, namespace,
    ):
        yield client, namespace


def _kinds(handle) -> list[str]:
    return [e["type"] for e in handle.history()]


def test_paused_workflow_waits_through_its_timer_and_signals_then_resumes(stack):
    client, _ = stack
    h = client.start(Napper, 1.0, 2, id="pz-1")
    wait_until(lambda: h.status() == "waiting", 20, "napping")
    h.pause(reason="maintenance")
    wait_until(lambda: h.status() == "paused", 20, "paused")
    h.pause()  # idempotent
    wait_until(lambda: _kinds(h).count("CommandDeferred") == 1, 20, "the timer fired and was deferred")
    h.signal("add", "a")
    h.signal("add", "b")
    wait_until(lambda: _kinds(h).count("CommandDeferred") == 3, 20, "both signals deferred")
    time.sleep(1.0)  # nothing happens however long it stays paused
    assert h.status() == "paused" and _kinds(h).count("WorkflowPaused") == 1
    assert h.query("state") == {"woke": False, "items": []}
    assert "TimerFired" not in _kinds(h) and "ActivityScheduled" not in _kinds(h)
    h.resume()
    assert h.result(timeout=30) == {"items": ["a", "b"], "after": "did last"}
    kinds = _kinds(h)
    at = kinds.index("WorkflowResumed")
    assert kinds[at + 1:at + 4] == ["TimerFired", "SignalReceived", "SignalReceived"]


def test_pause_of_a_finished_workflow_is_refused(stack):
    client, namespace = stack
    h = client.start(Napper, 0.1, 0, id="pz-2")
    h.result(timeout=30)
    before = h.history()
    with pytest.raises(WorkflowNotRunning):
        h.pause()
    conn = ["--kafka", client.kafka, "--postgres", client.postgres, "--namespace", namespace]
    assert main(["pause", "pz-2", *conn]) == EXIT_REFUSED
    assert h.history() == before and h.status() == "completed"


def test_reset_to_an_earlier_event_runs_again_from_there(stack):
    client, _ = stack
    h = client.start(Steps, id="pz-3")
    assert h.result(timeout=30) == ["did one", "did two", "did three"]
    history = h.history()
    cut = next(e["seq"] for e in history if e["type"] == "ActivityCompleted")
    h.reset(cut)
    wait_until(lambda: len(client._read("runs", "pz-3")) == 2 and h.status() == "completed", 30, "reset run completed")
    runs = client._read("runs", "pz-3")
    assert runs[0]["run_id"] != runs[1]["run_id"]
    new = h.history()
    assert [e["type"] for e in new if e["seq"] <= cut] == [e["type"] for e in history if e["seq"] <= cut]
    scheduled = [e for e in new if e["type"] == "ActivityScheduled" and e["seq"] > cut]
    assert len(scheduled) == 2 and h.result(timeout=10) == ["did one", "did two", "did three"]


def test_reset_of_an_open_run_terminates_it_and_bad_seqs_change_nothing(stack):
    client, namespace = stack
    h = client.start(Napper, 3600, 1, id="pz-4")
    wait_until(lambda: h.status() == "waiting", 20, "napping")
    before = h.history()
    for bogus in (0, -1, before[-1]["seq"] + 1, 999):
        with pytest.raises(ValueError, match="seq"):
            h.reset(bogus)
    conn = ["--kafka", client.kafka, "--postgres", client.postgres, "--namespace", namespace]
    assert main(["reset", "pz-4", "77", *conn]) == EXIT_USAGE
    assert h.history() == before
    assert main(["reset", "pz-4", "1", *conn]) == 0
    wait_until(lambda: len(client._read("runs", "pz-4")) == 2, 20, "new run")
    runs = client._read("runs", "pz-4")
    assert runs[0]["status"] == "terminated" and runs[0]["error_message"] == "reset"
    wait_until(lambda: h.status() == "waiting", 20, "new run napping")
    h.terminate("done")


def test_http_and_batch_pause_resume(stack):
    from starlette.testclient import TestClient

    from actors.interfaces.http import create_app

    client, _ = stack
    h = client.start(Napper, 3600, 1, id="pz-5")
    wait_until(lambda: h.status() == "waiting", 20, "napping")
    with TestClient(create_app(client, webhook_auth="none"), raise_server_exceptions=False) as api:
        r = api.post("/workflows/pz-5/pause", json={"reason": "http"})
        assert r.status_code == 202, r.text
        wait_until(lambda: h.status() == "paused", 20, "paused over HTTP")
        h.signal("add", "z")
        wait_until(lambda: "CommandDeferred" in _kinds(h), 20, "signal deferred")
        assert h.query("state")["items"] == []
        assert api.post("/workflows/pz-5/resume").status_code == 202
        wait_until(lambda: h.query("state")["items"] == ["z"] and h.status() == "waiting", 20, "signal applied")
        r = api.post("/workflows/pz-5/reset", json={"seq": 10_000})
        assert r.status_code == 400 and "seq" in r.json()["message"]
        assert api.post("/workflows/pz-5/reset", json={}).status_code == 400
    group = {"group": "pz-batch"}
    for wid in ("pz-6", "pz-7"):
        client.start(Napper, 3600, 1, id=wid, search=group)
    wait_until(lambda: client.count(search=group, status="waiting") == 2, 20, "napping")
    assert client.batch("pause", search=group, reason="batch") == 2
    wait_until(lambda: client.count(search=group, status="paused") == 2, 20, "all paused")
    assert client.batch("pause", search=group) == 0  # already paused: nothing to act on
    assert client.batch("resume", search=group) == 2
    wait_until(lambda: client.count(search=group, status="waiting") == 2, 20, "all resumed")
    assert client.batch("terminate", search=group) == 2
    h.terminate("done")


def test_retry_of_a_saga_that_already_compensated_warns_and_needs_force(stack):
    from actors import AlreadyCompensated
    from actors.testing import replay
    from tests.apps.saga_app import DECLINE, Fragile, Trip

    client, namespace = stack
    DECLINE.update({"t-1", "t-2"})
    h = client.start(Trip, "t-1", id="pz-saga-1")
    with pytest.raises(WorkflowFailed):
        h.result(timeout=30)
    history = h.history()
    marker = next(e for e in history if e["type"] == "SagaCompensated")
    assert marker["seq"] < next(e["seq"] for e in history if e["type"] == "WorkflowFailed")
    # How "compensated" is known: the recorded marker; a history from before it existed replays as well.
    assert replay(history, Trip) == "failed"
    assert replay([e for e in history if e["type"] != "SagaCompensated"], Trip) == "failed"
    with pytest.raises(AlreadyCompensated) as err:
        h.retry()
    assert err.value.steps == 1 and "force" in str(err.value)
    conn = ["--kafka", client.kafka, "--postgres", client.postgres, "--namespace", namespace]
    assert main(["retry", "pz-saga-1", *conn]) == EXIT_REFUSED
    time.sleep(1.0)
    assert len(client._read("runs", "pz-saga-1")) == 1 and h.status() == "failed"  # nothing was sent
    DECLINE.discard("t-1")
    assert main(["retry", "pz-saga-1", "--force", *conn]) == 0
    wait_until(lambda: len(client._read("runs", "pz-saga-1")) == 2 and h.status() == "completed", 30, "forced retry ran")
    assert h.result(timeout=10) == "paid t-1"
    # A failure that compensated nothing is retried without force.
    f = client.start(Fragile, "t-2", id="pz-saga-2")
    with pytest.raises(WorkflowFailed):
        f.result(timeout=30)
    DECLINE.discard("t-2")
    f.retry()
    wait_until(lambda: len(client._read("runs", "pz-saga-2")) == 2 and f.status() == "completed", 30, "retry ran")
    assert f.result(timeout=10) == "paid t-2"
