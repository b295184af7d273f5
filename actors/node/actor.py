"""The pykka actor that hosts one live workflow.

Each live workflow is an actor: its suspended coroutine stays in memory between commands, so advancing
it costs one message, not a replay. It is a ``PooledActor``: it has no thread of its own while it waits.
The node creates actors on demand and stops idle ones (passivation);
a stopped workflow is rebuilt by replaying its history when its next command arrives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from actors import tracing
from actors.engine.dispatch import Message, messages_for_history, reply_message, resolve_external_message
from actors.engine.instance import Outcome, WorkflowInstance
from actors.node.pooled import PooledActor
from eventstore.topics import Topics


@dataclass
class Result:
    """What one ask produced: events to append, then messages to send."""

    events: list[dict] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    heartbeats: list[tuple[int, int, Any]] = field(default_factory=list)
    rejected: list[tuple[dict, str]] = field(default_factory=list)
    status: str = "pending"
    run_id: str | None = None
    workflow_type: str | None = None
    replay_seconds: float = 0.0
    replayed_events: int = 0
    #: ``at`` of the current run's WorkflowStarted (the start command's time), for the duration histogram.
    started_at: Any = None


class WorkflowActor(PooledActor):
    """One workflow id; messages are ``("load", history)`` and ``("handle", commands)``."""

    def __init__(self, workflow_id: str, topics: Topics) -> None:
        super().__init__()
        self.workflow_id = workflow_id
        self.topics = topics
        self.instance = WorkflowInstance(workflow_id)
        self.last_used = time.monotonic()

    def on_receive(self, message: Any) -> Result:
        op, payload = message
        self.last_used = time.monotonic()
        if op == "load":
            started = time.perf_counter()
            new = self.instance.load(payload)
            result = self._result(Outcome(events=new))
            result.replay_seconds = time.perf_counter() - started
            result.replayed_events = len(payload)
            return result
        if op == "handle":
            if tracing.enabled():
                return self._traced(payload)
            return self._result(self.instance.handle(payload))
        raise ValueError(f"unknown message {op!r}")

    def _traced(self, commands: list[dict]) -> Result:
        """One step (this decision batch) as a span: a child of the command that caused it (an activity's
        outcome, a traced signal) or else of the run's recorded start context, so the run's steps form one
        trace; what the step sends carries the step's context."""
        history = self.instance.history
        recorded = history[0].get("trace") if history and history[0].get("type") == "WorkflowStarted" else None
        carried = [c["_trace"] for c in commands if c.get("_trace")]
        parent = carried[0] if carried else recorded
        links = [recorded] if carried and recorded and not tracing.same_trace(carried[0], recorded) else []
        kinds = sorted({c["type"] for c in commands})
        with tracing.span(
            "metamorph.step", parent, kind="consumer", links=links,
            attributes={"metamorph.workflow.id": self.workflow_id, "metamorph.workflow.type": self.instance.workflow_type,
                        "metamorph.commands": ",".join(kinds)},
        ) as span:
            here = tracing.current_carrier()
            for c in commands:  # a run started without a trace context records this step's
                if c["type"] == "StartWorkflow" and not c.get("_trace"):
                    c["_trace"] = here
            result = self._result(self.instance.handle(commands), tracing.headers_of(here))
            span.update_name(f"metamorph.step {result.workflow_type or '?'}")
            span.set_attribute("metamorph.workflow.type", result.workflow_type or "?")
            span.set_attribute("metamorph.run.id", result.run_id or "")
            span.set_attribute("metamorph.events", ",".join(e["type"] for e in result.events))
            span.set_attribute("metamorph.status", result.status)
            failed = next((e for e in result.events if e["type"] in ("WorkflowFailed", "WorkflowBlocked")), None)
            if failed is not None:
                tracing.set_error(span, failed.get("error_type") or failed["type"], failed.get("message") or "")
            return result

    def _result(self, outcome: Outcome, headers: list[tuple[str, bytes]] | None = None) -> Result:
        messages = messages_for_history(
            self.topics, self.workflow_id, self.instance.history, outcome.events, self.instance.closed_runs
        )
        if headers:
            messages = [replace(m, headers=headers) for m in messages]
        for reply in outcome.replies:
            messages.append(reply_message(self.topics, reply.request_id, reply.ok, reply.result, reply.error_type, reply.message))
        for command, ok, error_type, message in outcome.notices:
            messages.append(resolve_external_message(self.topics, command, ok, error_type, message))
        history = self.instance.history
        started_at = history[0].get("at") if history and history[0].get("type") == "WorkflowStarted" else None
        return Result(
            events=outcome.events, messages=messages, heartbeats=outcome.heartbeats, rejected=outcome.rejected,
            status=self.instance.status, run_id=self.instance.run_id, workflow_type=self.instance.workflow_type,
            started_at=started_at,
        )
