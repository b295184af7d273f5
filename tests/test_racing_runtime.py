"""Cancellation reaching running activities on a real broker (docs/API.md §9, §10): a lost ``workflow.first``
race and a cancelled workflow make the activity's next ``heartbeat()`` raise ``ActivityCancelled``, both
when the node runs it itself (eager dispatch) and when a separate ``metamorph worker`` process does."""

from __future__ import annotations

import time
import uuid

import pytest

from actors import WorkflowCancelled
from projections.db import connect
from tests.apps import racing_app as app
from tests.processes import Processes, wait_until
from tests.stack import running_stack


@pytest.fixture(scope="module")
def stack(kafka_server, pg_server, tmp_path_factory):
    data = tmp_path_factory.mktemp("racing")
    with running_stack(kafka_server.bootstrap, pg_server, data / "node", prefix="race", partitions=2) as (client, node, ns):
        procs = Processes(data / "logs")
        try:
            procs.cli(
                "worker", "worker", kafka_server.bootstrap, ns, "--app", "tests.apps.racing_app",
                "--queues", "racing-remote", "--name", "racing-worker", ready="activity worker running",
            )
            yield client, procs
        finally:
            procs.stop_all()


def _key(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("activity_name", ["racing.long_beat", "racing.remote_beat"])
def test_a_short_timer_beats_a_long_heartbeating_activity_which_sees_activity_cancelled(stack, activity_name):
    client, _procs = stack
    key = _key("race")
    started = time.monotonic()
    handle = client.start(app.RaceTimer, activity_name, key, 1.5)
    assert handle.result(timeout=30) == 1
    assert time.monotonic() - started < 20  # not the activity's 60 s
    wait_until(lambda: "cancelled" in app.marks(key), 15, f"{activity_name} to see ActivityCancelled")
    assert app.marks(key) == ["started", "cancelled"]
    types = [e["type"] for e in handle.history()]
    assert types.index("TimerFired") < types.index("ActivityCancelRequested") < types.index("WorkflowCompleted")
    assert "ActivityCompleted" not in types and "ActivityAttemptFailed" not in types  # the late outcome ignored
    if activity_name == "racing.long_beat":
        assert (key, "cancelled") in app.SEEN  # it really ran in this process, on the node's own worker
    wait_until(lambda: _projected(client, handle.id) == ([("cancelled",)], [("fired",)]), 15, "the projection")


def _projected(client, workflow_id: str) -> tuple[list, list]:
    """Statuses of the workflow's activities and timers in PostgreSQL."""
    with connect(client.postgres, client.namespace) as conn:
        activities = conn.execute("SELECT status FROM activities WHERE workflow_id = %s", (workflow_id,)).fetchall()
        timers = conn.execute("SELECT status FROM timers WHERE workflow_id = %s", (workflow_id,)).fetchall()
    return activities, timers


@pytest.mark.parametrize("activity_name", ["racing.long_beat", "racing.remote_beat"])
def test_cancelling_a_workflow_cancels_its_running_activity(stack, activity_name):
    client, _procs = stack
    key = _key("cancel")
    handle = client.start(app.Busy, activity_name, key)
    wait_until(lambda: "started" in app.marks(key), 20, "the activity to start")
    handle.cancel()
    with pytest.raises(WorkflowCancelled):
        handle.result(timeout=20)
    wait_until(lambda: "cancelled" in app.marks(key), 15, f"{activity_name} to see ActivityCancelled")
    assert app.marks(key) == ["started", "cancelled"]
    time.sleep(0.5)
    assert "ActivityCompleted" not in [e["type"] for e in handle.history()]
    wait_until(lambda: _projected(client, handle.id)[0] == [("cancelled",)], 15, "the activity projected cancelled")
