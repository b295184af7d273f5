"""workflow.signal_external / cancel_external (docs/API.md §6-§7 issue 11) end to end on real Kafka.

What only the real stack shows: the command goes through ``<ns>.commands`` to the target's partition (the
two ids live on different partitions here), the target's owner answers through Kafka, and the awaiting
code sees the answer — success, or a catchable WorkflowNotFound / WorkflowNotRunning / ExternalRequestFailed.
Replay: the recorded history replays without sending again, and changed code is a non-determinism.
"""

from __future__ import annotations

import pytest

from actors import NondeterminismError, WorkflowFailed
from actors.testing import replay
from eventstore.topics import partition_for
from tests.apps.external_app import BadTarget, Canceller, Inbox, Prober, Sender, SenderRenamed, Uncaught
from tests.processes import wait_until
from tests.stack import running_stack

PARTITIONS = 4


@pytest.fixture(scope="module")
def stack(kafka_server, pg_server, tmp_path_factory):
    with running_stack(kafka_server.bootstrap, pg_server, tmp_path_factory.mktemp("node"), prefix="xs", partitions=PARTITIONS) as (
        client, node, namespace,
    ):
        yield client, node


def _other_partition(base: str, of: str) -> str:
    """An id derived from ``base`` whose partition differs from ``of``'s: the signal really crosses partitions."""
    return next(f"{base}-{i}" for i in range(100) if partition_for(f"{base}-{i}", PARTITIONS) != partition_for(of, PARTITIONS))


def _retyped(event: dict, type_name: str) -> dict:
    if event["type"] != "WorkflowStarted":
        return event
    event = {**event, "workflow_type": type_name}
    if isinstance(event.get("data"), dict):
        event["data"] = {**event["data"], "workflow_type": type_name}
    return event


def _kinds(history: list[dict]) -> list[str]:
    return [e["type"] for e in history]


def test_signal_external_reaches_a_workflow_on_another_partition_and_replays_without_resending(stack):
    client, node = stack
    inbox = client.start(Inbox, id="xs-inbox-1")
    sender = client.start(Sender, inbox.id, ["a", "b"], id=_other_partition("xs-sender-1", inbox.id))
    assert sender.result(timeout=30) == "sent 2"
    assert inbox.result(timeout=30) == ["a", "b"]
    history = sender.history()
    kinds = _kinds(history)
    assert kinds.count("ExternalSignalSent") == 3 and kinds.count("ExternalResolved") == 3
    # Each send waited for its answer before the next was decided.
    assert kinds[1:7] == ["ExternalSignalSent", "ExternalResolved"] * 3
    received = [e for e in inbox.history() if e["type"] == "SignalReceived"]
    assert [e["data"]["origin_id"] if "data" in e else e.get("origin_id") for e in received] == [sender.id] * 3
    # Replay-safe: the recorded history replays to the same end, and replaying sends nothing (the target
    # still has exactly three signals after the replay).
    assert replay(history, Sender) == "completed"
    renamed = [_retyped(e, "tests.external.SenderRenamed") for e in history]
    with pytest.raises(NondeterminismError) as err:
        replay(renamed, SenderRenamed)
    assert "ExternalSignalSent" in str(err.value)
    assert len([e for e in inbox.history() if e["type"] == "SignalReceived"]) == 3


def test_refusals_are_errors_the_awaiting_workflow_can_catch(stack):
    client, _ = stack
    ended = client.start(Inbox, id="xs-ended")
    ended.signal("finish")
    assert ended.result(timeout=30) == []
    running = client.start(Inbox, id="xs-running")
    prober = client.start(Prober, "xs-nobody", ended.id, running.id, id="xs-prober")
    assert prober.result(timeout=30) == {
        "signal missing": "WorkflowNotFound",
        "signal ended": "completed",
        "unknown signal": "UnknownSignal",
        "cancel missing": "WorkflowNotFound",
        "cancel ended": "completed",
    }
    # The running target recorded the bad signal (exceptions()) and carries on; the ended one is unchanged.
    assert any(x["error_type"] == "UnknownSignal" for x in running.exceptions())
    assert running.status() == "waiting" and ended.status() == "completed"
    running.terminate()


def test_an_uncaught_refusal_fails_the_workflow_with_it(stack):
    client, _ = stack
    h = client.start(Uncaught, "xs-nobody-2", id="xs-uncaught")
    with pytest.raises(WorkflowFailed) as err:
        h.result(timeout=30)
    assert err.value.error_type == "WorkflowNotFound" and "xs-nobody-2" in err.value.message


def test_a_bad_target_id_fails_the_workflow_clearly(stack):
    client, _ = stack
    h = client.start(BadTarget, id="xs-bad-target")
    with pytest.raises(WorkflowFailed) as err:
        h.result(timeout=30)
    assert err.value.error_type == "ValueError" and "non-empty str" in err.value.message


def test_cancel_external_cancels_another_workflow_which_runs_its_cleanup(stack):
    client, _ = stack
    inbox = client.start(Inbox, id="xs-inbox-2")
    inbox.signal("add", "kept")
    wait_until(lambda: "SignalReceived" in _kinds(inbox.history()), 20, "signal recorded")
    canceller = client.start(Canceller, inbox.id, id=_other_partition("xs-canceller", inbox.id))
    assert canceller.result(timeout=30) == "cancel requested"
    wait_until(lambda: inbox.status() == "cancelled", 30, "target cancelled")
    requested = next(e for e in inbox.history() if e["type"] == "CancelRequested")
    data = requested.get("data", requested)
    assert data["reason"] == "no longer needed" and data["origin_id"] == canceller.id
    kinds = _kinds(canceller.history())
    assert kinds.count("ExternalCancelRequested") == 1 and kinds.count("ExternalResolved") == 1
    assert replay(canceller.history(), Canceller) == "completed"


def test_the_in_memory_environment_runs_signal_external_too():
    from actors.testing import WorkflowEnvironment

    env = WorkflowEnvironment()
    inbox = env.start(Inbox, id="env-inbox")
    sender = env.start(Sender, inbox, ["a"], id="env-sender")
    assert env.result(sender) == "sent 1" and env.result(inbox) == ["a"]
    running = env.start(Inbox, id="env-running")
    prober = env.start(Prober, "env-nobody", inbox, running, id="env-prober")
    assert env.result(prober) == {
        "signal missing": "WorkflowNotFound", "signal ended": "completed", "unknown signal": "UnknownSignal",
        "cancel missing": "WorkflowNotFound", "cancel ended": "completed",
    }
