"""Events as the engine and the projector handle them: flat dicts, converted to and from Avro envelopes.

On the wire an event is an EventEnvelope whose ``event`` field is a ``(full name, body)`` union branch.
Everything above the codec works with the flat form ``{"type": "TimerStarted", "seq": 3, "at": ...,
"workflow_id": ..., "run_id": ..., **body}``; keeping the conversion here means there is one place that
knows both shapes.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from . import codec

EVENT_NS = "metamorph.events."
COMMAND_NS = "metamorph.commands."
_ENVELOPE_KEYS = ("workflow_id", "run_id", "seq", "epoch", "at", "status", "node")


class EventType(StrEnum):
    """Every history event type, as the ``type`` of an event dict (a ``str``: compares equal to the text).

    The one list of them; ``tests/test_eventstore.py`` checks it against the EventEnvelope union of the
    Avro schemas, so a new event cannot be added to one and forgotten in the other.
    """

    ACTIVITY_ATTEMPT_FAILED = "ActivityAttemptFailed"
    ACTIVITY_CANCEL_REQUESTED = "ActivityCancelRequested"
    ACTIVITY_COMPLETED = "ActivityCompleted"
    ACTIVITY_FAILED = "ActivityFailed"
    ACTIVITY_RETRIED = "ActivityRetried"
    ACTIVITY_SCHEDULED = "ActivityScheduled"
    ATTRIBUTES_UPSERTED = "AttributesUpserted"
    CANCEL_REQUESTED = "CancelRequested"
    CHILD_CANCEL_REQUESTED = "ChildCancelRequested"
    CHILD_COMPLETED = "ChildCompleted"
    CHILD_FAILED = "ChildFailed"
    CHILD_STARTED = "ChildStarted"
    COMMAND_DEFERRED = "CommandDeferred"
    COMMAND_REJECTED = "CommandRejected"
    EXTERNAL_CANCEL_REQUESTED = "ExternalCancelRequested"
    EXTERNAL_RESOLVED = "ExternalResolved"
    EXTERNAL_SIGNAL_SENT = "ExternalSignalSent"
    OWNERSHIP_MARKER = "OwnershipMarker"
    SAGA_COMPENSATED = "SagaCompensated"
    SIDE_EFFECT_RECORDED = "SideEffectRecorded"
    SIGNAL_RECEIVED = "SignalReceived"
    STREAM_APPENDED = "StreamAppended"
    TIMER_CANCELLED = "TimerCancelled"
    TIMER_FIRED = "TimerFired"
    TIMER_STARTED = "TimerStarted"
    UPDATE_ACCEPTED = "UpdateAccepted"
    UPDATE_COMPLETED = "UpdateCompleted"
    VERSION_MARKER = "VersionMarker"
    WORKFLOW_BLOCKED = "WorkflowBlocked"
    WORKFLOW_CANCELLED = "WorkflowCancelled"
    WORKFLOW_COMPLETED = "WorkflowCompleted"
    WORKFLOW_CONTINUED = "WorkflowContinued"
    WORKFLOW_FAILED = "WorkflowFailed"
    WORKFLOW_PAUSED = "WorkflowPaused"
    WORKFLOW_RESUMED = "WorkflowResumed"
    WORKFLOW_STARTED = "WorkflowStarted"
    WORKFLOW_TERMINATED = "WorkflowTerminated"
    WORKFLOW_TIMED_OUT = "WorkflowTimedOut"
    WORKFLOW_UNBLOCKED = "WorkflowUnblocked"


class CommandType(StrEnum):
    """Every command type on ``<ns>.commands``, checked against the CommandEnvelope union likewise."""

    CANCEL_WORKFLOW = "CancelWorkflow"
    COMPLETE_ACTIVITY = "CompleteActivity"
    FAIL_ACTIVITY = "FailActivity"
    FIRE_TIMER = "FireTimer"
    HEARTBEAT_ACTIVITY = "HeartbeatActivity"
    PAUSE_WORKFLOW = "PauseWorkflow"
    QUERY_WORKFLOW = "QueryWorkflow"
    RESET_WORKFLOW = "ResetWorkflow"
    RESOLVE_CHILD = "ResolveChild"
    RESOLVE_EXTERNAL = "ResolveExternal"
    RESUME_WORKFLOW = "ResumeWorkflow"
    RETRY_WORKFLOW = "RetryWorkflow"
    SIGNAL_WORKFLOW = "SignalWorkflow"
    START_WORKFLOW = "StartWorkflow"
    TERMINATE_WORKFLOW = "TerminateWorkflow"
    UPDATE_WORKFLOW = "UpdateWorkflow"


def _fields(full_name: str) -> list[str]:
    schema = codec.registry().schema("metamorph.EventEnvelope")["__named_schemas"][full_name]
    return [f["name"] for f in schema["fields"]]


_event_fields: dict[str, list[str]] = {}


def event_fields(kind: str) -> list[str]:
    if kind not in _event_fields:
        _event_fields[kind] = _fields(EVENT_NS + kind)
    return _event_fields[kind]


def to_envelope(event: dict, workflow_id: str, epoch: int, node: str = "") -> dict:
    kind = event["type"]
    body = {name: event.get(name) for name in event_fields(kind)}
    return {
        "workflow_id": workflow_id,
        "run_id": event.get("run_id") or "",
        "seq": event.get("seq", 0),
        "epoch": epoch,
        "at": event["at"],
        "status": event.get("status"),
        "node": node,
        "event": (EVENT_NS + kind, body),
    }


def from_envelope(envelope: dict) -> dict:
    full, body = envelope["event"]
    event: dict[str, Any] = {k: envelope.get(k) for k in _ENVELOPE_KEYS}
    event.update(body)
    event["type"] = full.rsplit(".", 1)[1]
    return event


def encode_event(event: dict, workflow_id: str, epoch: int, node: str = "") -> bytes:
    return codec.encode("metamorph.EventEnvelope", to_envelope(event, workflow_id, epoch, node))


def decode_event(data: bytes) -> dict:
    return from_envelope(codec.decode(data, "metamorph.EventEnvelope"))


def ownership_marker(partition: int, epoch: int, node: str, at: datetime) -> dict:
    return {"type": "OwnershipMarker", "seq": 0, "at": at, "run_id": "", "partition": partition, "epoch": epoch, "node": node}


def command(kind: str, workflow_id: str, command_id: str, at: datetime, **body: Any) -> dict:
    """A CommandEnvelope ready to encode; missing optional fields default to None."""
    schema = codec.registry().schema("metamorph.CommandEnvelope")["__named_schemas"][COMMAND_NS + kind]
    full = {}
    for f in schema["fields"]:
        if f["name"] in body:
            full[f["name"]] = body[f["name"]]
        elif "default" in f:
            full[f["name"]] = f["default"].encode() if f["type"] == "bytes" and isinstance(f["default"], str) else f["default"]
        else:
            raise TypeError(f"{kind} needs {f['name']!r}")
    return {"command_id": command_id, "workflow_id": workflow_id, "at": at, "command": (COMMAND_NS + kind, full)}


def flat_command(envelope: dict) -> dict:
    full, body = envelope["command"]
    return {**body, "type": full.rsplit(".", 1)[1], "command_id": envelope["command_id"],
            "workflow_id": envelope["workflow_id"], "at": envelope["at"]}
