"""Events as the engine and the projector handle them: flat dicts, converted to and from Avro envelopes.

On the wire an event is an EventEnvelope whose ``event`` field is a ``(full name, body)`` union branch.
Everything above the codec works with the flat form ``{"type": "TimerStarted", "seq": 3, "at": ...,
"workflow_id": ..., "run_id": ..., **body}``; keeping the conversion here means there is one place that
knows both shapes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from . import codec

EVENT_NS = "metamorph.events."
COMMAND_NS = "metamorph.commands."
_ENVELOPE_KEYS = ("workflow_id", "run_id", "seq", "epoch", "at", "status", "node")


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
