"""Continue-as-new loses nothing on a real broker: signals, updates and cancels sent while a run continues
reach the next run, in the order they were sent (issue 15, item 1).

A run that decides ``WorkflowContinued`` used to end there, and the next run began only when the
StartWorkflow command it sent came back through ``<ns>.commands``, behind every command already queued:
those found no live run and were rejected, so a workflow that counts signals waited for ever.
"""

from __future__ import annotations

import uuid

import pytest

from actors import WorkflowCancelled
from tests.apps import runtime_app as app
from tests.stack import running_stack


@pytest.fixture(scope="module")
def stack(kafka_server, pg_server, tmp_path_factory):
    with running_stack(kafka_server.bootstrap, pg_server, tmp_path_factory.mktemp("cannew"), prefix="can", partitions=2) as (client, _node, _ns):
        yield client


def _runs(handle) -> list[str]:
    return sorted({e["run_id"] for e in handle.history()})


def test_23_signals_back_to_back_across_continue_as_new_arrive_all_and_in_order(stack):
    client = stack
    handle = client.start(app.SignalCounter, 23, 5, [], id=f"count-{uuid.uuid4().hex[:8]}")
    sent = [f"s{i}" for i in range(23)]
    for value in sent:
        handle.signal("bump", value)
    assert handle.result(timeout=60) == sent
    assert handle.history()[0]["continued_from"], "the workflow must have continued as new"


def test_signals_and_updates_mixed_across_continue_as_new_keep_their_order(stack):
    client = stack
    handle = client.start(app.SignalCounter, 23, 5, [], id=f"mixed-{uuid.uuid4().hex[:8]}")
    sent = [f"v{i}" for i in range(23)]
    for i, value in enumerate(sent):
        if i % 4 == 3:  # an update waits for its answer; the signals before it are queued behind nothing
            assert handle.update("note", value, timeout=30) >= 1
        else:
            handle.signal("bump", value)
    assert handle.result(timeout=60) == sent


def test_a_cancel_sent_right_after_a_continuing_signal_cancels_the_next_run(stack):
    client = stack
    handle = client.start(app.SignalCounter, 100, 5, [], id=f"cancel-{uuid.uuid4().hex[:8]}")
    for i in range(5):  # the fifth makes the run continue; the cancel is queued right behind it
        handle.signal("bump", f"c{i}")
    handle.cancel()
    with pytest.raises(WorkflowCancelled):
        handle.result(timeout=60)


def test_a_history_cut_between_the_continuation_and_the_next_run_begins_that_run_on_load():
    """A crash may append ``WorkflowContinued`` without the next run's start: rebuilding begins it."""
    from actors.engine.instance import WorkflowInstance
    from eventstore import payloads

    first = WorkflowInstance("cut")
    start = {"type": "StartWorkflow", "command_id": "c0", "workflow_id": "cut", "at": None,
             "workflow_type": "rt.SignalCounter", "input": payloads.encode([7, 2, []])}  # fmt: skip
    signals = [{"type": "SignalWorkflow", "command_id": f"c{i}", "workflow_id": "cut", "at": None, "name": "bump",
                "input": payloads.encode([f"x{i}"])} for i in range(1, 4)]  # fmt: skip
    out = first.handle([start, *signals])
    kinds = [e["type"] for e in out.events]
    assert kinds.count("WorkflowStarted") == 2 and "WorkflowContinued" in kinds
    assert [e["run_id"] for e in out.events if e["type"] == "SignalReceived"][-1] == first.run_id  # x3: new run
    old_run = out.events[0]["run_id"]
    cut = [e for e in out.events if e["run_id"] == old_run]
    assert cut[-1]["type"] == "WorkflowContinued"
    rebuilt = WorkflowInstance("cut")
    begun = rebuilt.load(cut)
    assert begun[0]["type"] == "WorkflowStarted" and begun[0]["run_id"] == cut[-1]["new_run_id"]
    assert begun[0]["continued_from"] == old_run and old_run in rebuilt.closed_runs
