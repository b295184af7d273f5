"""The pykka actor that hosts one live workflow.

Each live workflow is an actor: its suspended coroutine stays in memory between commands, so advancing
it costs one message, not a replay. It is a ``PooledActor``: it has no thread of its own while it waits. The node creates actors on demand and stops idle ones (passivation);
a stopped workflow is rebuilt by replaying its history when its next command arrives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from eventstore.topics import Topics

from .dispatch import Message, messages_for_history, reply_message, resolve_external_message
from .instance import Outcome, WorkflowInstance
from .pooled import PooledActor


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
            return self._result(self.instance.handle(payload))
        raise ValueError(f"unknown message {op!r}")

    def _result(self, outcome: Outcome) -> Result:
        messages = messages_for_history(
            self.topics, self.workflow_id, self.instance.history, outcome.events, self.instance.closed_runs
        )
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
