"""Replay recorded histories against (new) workflow code, before a deploy, without Kafka or a node.

Why: a change to workflow code that makes it issue different decisions than a running workflow's recorded
history blocks that workflow after the deploy (``NondeterminismError``). Replaying exported histories in
CI finds this first. The replay is the node's own driver (``actors.engine.replay.WorkflowRun``), so what passes
here is exactly what a node accepts; decisions the code makes *beyond* the end of an open history are not
reported, because a node accepts them too (they are the workflow's next steps).

The replayable history format (what ``metamorph history ID --json`` writes and ``handle.history()``
returns) is a JSON array of the run's events in ``seq`` order. Every event has ``workflow_id``,
``run_id``, ``seq``, ``type`` and ``at`` (ISO-8601), plus its own fields as in the Avro schema of the
event; user payloads (``input``, ``result``, ...) are the decoded JSON values (``{"$base64": ...}`` when
the payload converter could not decode them). The first event is ``WorkflowStarted`` and carries
``workflow_type``. A JSON object ``{"workflow_id", "workflow_type", "run_id", "events": [...]}`` is
accepted too (values missing from it are taken from the events), as are the engine's own event dicts
(``WorkflowEnvironment.history()``: bytes payloads, datetime ``at``).
"""

from __future__ import annotations

import base64
import inspect
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from actors.engine.definitions import Workflow, workflow_type_name, workflows
from actors.engine.replay import WorkflowRun
from actors.errors import NondeterminismError
from eventstore import codec, payloads
from eventstore.events import EVENT_NS


@dataclass(frozen=True)
class History:
    """One run's recorded history, normalised to the engine's event dicts."""

    workflow_id: str
    workflow_type: str
    run_id: str
    events: list[dict]


@dataclass(frozen=True)
class Finding:
    """One non-determinism: where (workflow id, seq), what history recorded and what the code issued."""

    source: str
    workflow_id: str
    seq: int | None
    recorded: str | None
    issued: str | None
    message: str

    def line(self) -> str:
        issued = self.issued or "nothing"
        return (
            f"{self.source}: workflow {self.workflow_id} seq {self.seq}: recorded {self.recorded}, "
            f"code issued {issued}"
        )


def _bytes_fields(kind: str) -> frozenset[str]:
    """Fields of an event type whose Avro type is bytes (user payloads), from the event's schema."""
    if kind not in _BYTES:
        named = codec.registry().schema("metamorph.EventEnvelope")["__named_schemas"]
        schema = named.get(EVENT_NS + kind)
        found = set()
        for field in (schema or {}).get("fields", []):
            kinds = field["type"] if isinstance(field["type"], list) else [field["type"]]
            if "bytes" in kinds:
                found.add(field["name"])
        _BYTES[kind] = frozenset(found)
    return _BYTES[kind]


_BYTES: dict[str, frozenset[str]] = {}


def _payload_bytes(value: Any) -> bytes | None:
    """A payload as the engine holds it: bytes as they are, base64 kept by the projector, else encoded."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, dict) and set(value) == {"$base64"}:
        return base64.b64decode(value["$base64"])
    if isinstance(value, dict) and set(value) == {"$encrypted"}:  # the projector's form of encrypted bytes
        return base64.b64decode(value["$encrypted"])
    return payloads.encode(value)


def _event(raw: dict) -> dict:
    if not isinstance(raw, dict) or "type" not in raw or "seq" not in raw:
        raise ValueError(f"not a history event (needs at least 'type' and 'seq'): {str(raw)[:120]}")
    event = dict(raw)
    at = event.get("at")
    if isinstance(at, str):
        event["at"] = datetime.fromisoformat(at)
    elif not isinstance(at, datetime):
        raise ValueError(f"event seq {event['seq']} has no valid 'at' timestamp: {at!r}")
    event["seq"] = int(event["seq"])
    for name in _bytes_fields(event["type"]):
        if name in event:
            event[name] = _payload_bytes(event[name])
    return event


def load_history(doc: Any, workflow_id: str | None = None) -> History:
    """Normalise a recorded history (see the module docstring for the accepted shapes)."""
    meta: dict[str, Any] = {}
    if isinstance(doc, dict):
        if not isinstance(doc.get("events"), list):
            raise ValueError("a history object needs an 'events' list")
        meta, raw_events = doc, doc["events"]
    elif isinstance(doc, list):
        raw_events = doc
    else:
        raise ValueError(f"a history is a JSON array of events (or an object with 'events'), not {type(doc).__name__}")
    events = sorted((_event(e) for e in raw_events), key=lambda e: e["seq"])
    started = next((e for e in events if e["type"] == "WorkflowStarted"), None)
    if started is None:
        raise ValueError("the history has no WorkflowStarted event")
    wid = workflow_id or meta.get("workflow_id") or started.get("workflow_id")
    if not wid:
        raise ValueError("the history does not say its workflow id (no 'workflow_id' on its events)")
    wtype = meta.get("workflow_type") or started.get("workflow_type")
    run_id = meta.get("run_id") or started.get("run_id") or ""
    # Only the run's own events: an export may hold several runs, the replay is per run.
    events = [e for e in events if not e.get("run_id") or not run_id or e["run_id"] == run_id]
    return History(str(wid), str(wtype), str(run_id), events)


def replay(history: Any, workflow_class: type, workflow_id: str | None = None) -> str:
    """Replay ``history`` against ``workflow_class``; return the run's status at the end of the history.

    Raises ``NondeterminismError`` (with ``workflow_id``, ``seq``, ``recorded``, ``issued``) when the code
    issues a decision other than the one recorded, or does not issue a recorded one. Raises ValueError for
    a document that is not a history, or one of another workflow type than the class.
    """
    h = history if isinstance(history, History) else load_history(history, workflow_id)
    type_name = workflow_type_name(workflow_class)
    if h.workflow_type and h.workflow_type != type_name:
        raise ValueError(f"history of {h.workflow_id} is of workflow type {h.workflow_type!r}, not {type_name!r}")
    started = next(e for e in h.events if e["type"] == "WorkflowStarted")
    run = WorkflowRun(workflow_class, h.workflow_id, h.run_id, started.get("parent_id"))
    run.replay(h.events)
    if run.blocked is not None:
        raise run.blocked
    return run.status


def app_workflows(modules: Iterable[ModuleType]) -> dict[str, type]:
    """Workflow classes by type name, as the app modules define them.

    Taken from the modules' own namespaces (and registered classes defined in them or below), not from the
    process-wide registry alone, so that two versions of an app defining the same type name can be
    checked one after the other in one process.
    """
    found: dict[str, type] = {}
    for module in modules:
        prefix = module.__name__
        for name, cls in workflows().items():
            if cls.__module__ == prefix or cls.__module__.startswith(prefix + "."):
                found[name] = cls
        for value in vars(module).values():
            if inspect.isclass(value) and issubclass(value, Workflow) and value is not Workflow:
                if inspect.iscoroutinefunction(value.__dict__.get("execute")):
                    found[workflow_type_name(value)] = value
    return found


def check(source: str, history: History, classes: dict[str, type]) -> Finding | None:
    """Replay one history against the class of its type; a Finding for a non-determinism, else None.

    LookupError if no class of the history's type is known.
    """
    cls = classes.get(history.workflow_type)
    if cls is None:
        known = ", ".join(sorted(classes)) or "none"
        raise LookupError(f"unknown workflow type {history.workflow_type!r} (the app defines: {known})")
    try:
        replay(history, cls)
    except NondeterminismError as exc:
        return Finding(source, exc.workflow_id or history.workflow_id, exc.seq, exc.recorded, exc.issued, str(exc))
    return None


def read_files(paths: Iterable[str]) -> list[tuple[str, Any]]:
    """``(file name, parsed JSON)`` of each file, and of every ``*.json`` in each directory (sorted).

    ValueError naming the file when one cannot be read or is not JSON.
    """
    out: list[tuple[str, Any]] = []
    for given in paths:
        path = Path(given)
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        if path.is_dir() and not files:
            raise ValueError(f"{given}: no *.json files in this directory")
        for file in files:
            try:
                out.append((str(file), json.loads(file.read_text(encoding="utf-8"))))
            except OSError as exc:
                raise ValueError(f"{file}: cannot read: {exc.strerror or exc}") from None
            except ValueError as exc:
                raise ValueError(f"{file}: not JSON: {exc}") from None
    return out
