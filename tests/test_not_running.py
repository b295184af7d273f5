"""WorkflowNotRunning / WorkflowNotFound for signal, cancel, terminate, pause, resume (docs/API.md §14) are the
owning node's decision, not the projection's (issue 11).

The projections can lag: a workflow another process started may have no row yet, and one a retry, a reset
or ``if_closed="allow"`` began again may still show its old run's ``completed``. The test makes the
projection say exactly that (by editing its row) and checks that such workflows are not refused — the
command carries a request id and the node confirms — while workflows that really ended, and ids that do not
exist, still are.
"""

from __future__ import annotations

import pytest

from actors import Client, WorkflowNotFound, WorkflowNotRunning
from projections.db import connect
from tests.apps.external_app import Inbox
from tests.processes import wait_until
from tests.stack import running_stack


@pytest.fixture(scope="module")
def stack(kafka_server, pg_server, tmp_path_factory):
    with running_stack(kafka_server.bootstrap, pg_server, tmp_path_factory.mktemp("node"), prefix="nr") as (
        client, node, namespace,
    ):
        yield client, namespace


def _projected(client: Client, namespace: str, workflow_id: str, sql: str) -> None:
    with connect(client.postgres, namespace, autocommit=True) as conn:
        conn.execute(sql, (workflow_id,))


def test_a_workflow_the_projection_has_not_seen_yet_is_not_refused(stack):
    client, namespace = stack
    h = client.start(Inbox, id="nr-unseen")
    wait_until(lambda: h.status() == "waiting", 20, "waiting")
    _projected(client, namespace, h.id, "DELETE FROM workflows WHERE id = %s")  # as if started elsewhere, unprojected
    with Client(client.kafka, client.postgres, namespace) as other:  # knows nothing of the start
        other.get(h.id).signal("add", "x")
        assert other.get(h.id).query("seen") == ["x"]


def test_a_workflow_the_projection_still_shows_ended_is_not_refused(stack):
    client, namespace = stack
    h = client.start(Inbox, id="nr-restarted")
    wait_until(lambda: h.status() == "waiting", 20, "waiting")
    # What a lagging projection shows after a retry/reset/if_closed="allow" began a new run of an ended id.
    _projected(client, namespace, h.id, "UPDATE workflows SET status = 'completed' WHERE id = %s")
    assert h.status() == "completed"
    h.signal("add", "y")
    h.pause()
    h.resume()
    assert h.query("seen") == ["y"]
    _projected(client, namespace, h.id, "UPDATE workflows SET status = 'completed' WHERE id = %s")
    h.terminate(reason="done")
    wait_until(lambda: h.status() == "terminated", 20, "terminated by the node")


def test_a_workflow_that_really_ended_and_an_unknown_id_are_refused_by_the_node(stack):
    client, namespace = stack
    h = client.start(Inbox, id="nr-ended")
    h.signal("finish")
    assert h.result(timeout=30) == []
    for act, operation in ((lambda: h.signal("add", "z"), "signal 'add'"), (h.cancel, "cancel"),
                           (h.terminate, "terminate"), (h.pause, "pause")):
        with pytest.raises(WorkflowNotRunning) as err:
            act()
        assert err.value.status == "completed" and err.value.operation == operation
    assert h.history()[-1]["type"] == "WorkflowCompleted"  # nothing was applied
    # The projection has no row and the node knows no such id: WorkflowNotFound, from the node.
    with pytest.raises(WorkflowNotFound):
        client.get("nr-nobody").signal("add", "z")
    with pytest.raises(WorkflowNotFound):
        client.get("nr-nobody").cancel()
