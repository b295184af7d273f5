"""What an event obliges the owner to send once it is durable: activity tasks, child starts, signals,
parent notifications, replies.

The messages are a pure function of the event and its run's history, which is what makes the owner's
crash window safe: events are appended first, messages sent second, the store checkpoint written third.
A crash in between leaves events after the checkpoint, and restore sends their messages again (every
receiver is idempotent, and message ids are derived from the event, so duplicates collapse).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from actors import tracing
from actors.engine.definitions import queue_limits
from eventstore import codec
from eventstore import events as ev
from eventstore.statuses import BY_TERMINAL_EVENT, Status
from eventstore.topics import Topics


@dataclass(frozen=True)
class Message:
    topic: str
    key: str
    value: bytes
    #: The events partition whose owner decided this message, and the log offset of the event that obliged it:
    #: the node stamps the message with its ownership of that partition when it sends it
    #: (``eventstore.fencing.EPOCH_HEADER``). None: nobody's decision (e.g. a forwarded activity outcome).
    origin: int | None = None
    origin_offset: int = -1
    #: Kafka record headers: the trace context (actors.tracing) of the step or run that owes the message.
    headers: list[tuple[str, bytes]] | None = None


def _command(topics: Topics, kind: str, target: str, command_id: str, at: datetime, **body: object) -> Message:
    envelope = ev.command(kind, target, command_id, at, **body)
    return Message(topics.commands, target, codec.encode("metamorph.CommandEnvelope", envelope))


def task_message(
    topics: Topics, workflow_id: str, workflow_type: str, scheduled: dict, attempt: int, at: datetime,
    priority: int | None = None,
) -> Message:
    """One attempt's task. Its Kafka key is the activity's ``key`` when it has one (one partition, so one
    owner serialises the key, docs/API.md §9), else the workflow id; ``priority`` is the run's (from its start),
    which the activity's own overrides. Tasks of a queue with limits and no key are keyed by activity, so a
    workflow's fan-out spreads over the partitions (and so over every worker's share of the limits)."""
    key = scheduled.get("key")
    record_key = key or (f"{workflow_id}/{scheduled['activity_id']}" if queue_limits(scheduled["queue"]) else workflow_id)
    task = {
        "workflow_id": workflow_id, "run_id": scheduled["run_id"], "workflow_type": workflow_type,
        "activity_id": scheduled["activity_id"], "attempt": attempt, "name": scheduled["name"],
        "queue": scheduled["queue"], "input": scheduled["input"], "kwargs": scheduled.get("kwargs") or b"{}",
        "timeout": scheduled["timeout"], "heartbeat_timeout": scheduled["heartbeat_timeout"], "scheduled_at": at,
        "key": key, "priority": scheduled.get("priority") if scheduled.get("priority") is not None else priority,
    }
    return Message(topics.activities(scheduled["queue"]), record_key, codec.encode("metamorph.ActivityTask", task))


def cancel_message(topics: Topics, workflow_id: str, run_id: str, activity_id: int, reason: str | None = None) -> Message:
    """Tell every worker that this activity's result is no longer wanted (it checks at each heartbeat)."""
    record = {"workflow_id": workflow_id, "run_id": run_id, "activity_id": activity_id, "reason": reason}
    return Message(topics.cancels, workflow_id, codec.encode("metamorph.ActivityCancel", record))


def reply_message(topics: Topics, request_id: str, ok: bool, result: bytes = b"", error_type: str | None = None,
                  message: str | None = None) -> Message:
    reply = {"request_id": request_id, "ok": ok, "result": result, "error_type": error_type, "message": message}
    return Message(topics.replies, request_id, codec.encode("metamorph.Reply", reply))


def result_message(topics: Topics, workflow_id: str, event: dict) -> Message | None:
    """The workflow's outcome for ``<ns>.replies`` (issue 16): sent by the owner once the run-ending event
    is durable, so ``result()`` wakes on it instead of waiting for the projector. None for an event that
    does not end the workflow (continue-as-new: the next run goes on)."""
    status = BY_TERMINAL_EVENT.get(event["type"])
    if status is None or status == Status.CONTINUED:
        return None
    kind = event["type"]
    record = {
        "workflow_id": workflow_id, "run_id": event.get("run_id") or "", "status": str(status),
        "result": event.get("result") if kind == "WorkflowCompleted" else None,
        "error_type": event.get("error_type") if kind == "WorkflowFailed" else "WorkflowTimedOut" if kind == "WorkflowTimedOut" else None,
        "error_message": event.get("message") if kind in ("WorkflowFailed", "WorkflowTimedOut") else event.get("reason"),
        "error_traceback": event.get("traceback") if kind == "WorkflowFailed" else None,
    }
    return Message(topics.replies, workflow_id, codec.encode("metamorph.WorkflowResult", record))


def messages_for(
    topics: Topics, workflow_id: str, event: dict, started: dict | None, scheduled: Callable[[int], dict | None]
) -> list[Message]:
    """Messages owed for ``event``; ``started`` is its run's WorkflowStarted, ``scheduled`` finds an
    ActivityScheduled by activity id. They carry the run's recorded trace context, if it has one (a traced
    step replaces it by its own), so tasks re-sent after a restore still join the run's trace."""
    out = _owed(topics, workflow_id, event, started, scheduled)
    trace = started.get("trace") if started else None
    if trace and out:
        headers = tracing.headers_of(trace)
        return [replace(m, headers=headers) for m in out]
    return out


def _owed(
    topics: Topics, workflow_id: str, event: dict, started: dict | None, scheduled: Callable[[int], dict | None]
) -> list[Message]:
    kind = event["type"]
    run = event.get("run_id") or ""
    at = event["at"]
    wf_type = (started or {}).get("workflow_type", "")
    priority = (started or {}).get("priority")
    if kind == "ActivityScheduled":
        return [task_message(topics, workflow_id, wf_type, event, 1, at, priority)]
    if kind == "ActivityRetried":
        original = scheduled(event["activity_id"])
        return [task_message(topics, workflow_id, wf_type, original, event["attempt"], at, priority)] if original else []
    if kind == "ActivityCancelRequested":
        return [cancel_message(topics, workflow_id, run, event["activity_id"], "the workflow no longer awaits it")]
    if kind == "ChildCancelRequested":
        return [_command(
            topics, "CancelWorkflow", event["child_id"], f"{workflow_id}:{run}:{event['seq']}:cancel", at,
            reason=f"parent {workflow_id} no longer awaits it",
        )]
    if kind == "ChildStarted":
        return [_command(
            topics, "StartWorkflow", event["child_id"], f"{workflow_id}:{run}:{event['seq']}:start", at,
            workflow_type=event["workflow_type"], input=event["input"], parent_id=workflow_id, parent_run_id=run,
            parent_ref=event["child_ref"],
        )]
    if kind == "ExternalSignalSent":
        origin = _origin(workflow_id, run, event) if event.get("ack") else {}
        return [_command(
            topics, "SignalWorkflow", event["target_id"], f"{workflow_id}:{run}:{event['seq']}:signal", at,
            name=event["name"], input=event["input"], **origin,
        )]
    if kind == "ExternalCancelRequested":
        return [_command(
            topics, "CancelWorkflow", event["target_id"], f"{workflow_id}:{run}:{event['seq']}:xcancel", at,
            reason=event.get("reason") or f"cancelled by workflow {workflow_id}", **_origin(workflow_id, run, event),
        )]
    if kind in ("SignalReceived", "CancelRequested") and event.get("origin_id"):
        return [resolve_external_message(topics, event, True, at=at)]
    if kind == "UpdateCompleted":
        ok = not event.get("error_type")
        return [reply_message(topics, event["request_id"], ok, event["result"] if ok else b"", event.get("error_type"), event.get("message"))]
    parent = (started or {}).get("parent_id")
    if kind == "WorkflowContinued":
        return [_command(
            topics, "StartWorkflow", workflow_id, f"{workflow_id}:{event['new_run_id']}:continue", at,
            workflow_type=wf_type, input=event["input"], run_id=event["new_run_id"], continued_from=run,
            parent_id=parent, parent_run_id=(started or {}).get("parent_run_id"), parent_ref=(started or {}).get("parent_ref"),
            timeout_at=(started or {}).get("timeout_at"),  # the execution timeout spans the whole chain
            priority=priority,
        )]
    if parent and kind in ("WorkflowCompleted", "WorkflowFailed", "WorkflowCancelled", "WorkflowTerminated", "WorkflowTimedOut"):
        body: dict[str, object] = {"run_id": (started or {}).get("parent_run_id") or "", "child_ref": started.get("parent_ref") or 0}  # type: ignore[union-attr]
        if kind == "WorkflowCompleted":
            body.update(ok=True, result=event["result"])
        else:
            error_type = event.get("error_type") or kind.removeprefix("Workflow")
            body.update(ok=False, result=b"", error_type=error_type,
                        message=event.get("message") or event.get("reason")
                        or f"child workflow {workflow_id} {kind.removeprefix('Workflow').lower()}")
        return [_command(topics, "ResolveChild", parent, f"{workflow_id}:{run}:resolve", at, **body)]
    return []


def _origin(workflow_id: str, run: str, event: dict) -> dict:
    return {"origin_id": workflow_id, "origin_run_id": run, "origin_ref": event["seq"]}


def resolve_external_message(topics: Topics, request: dict, ok: bool, error_type: str | None = None,
                             message: str | None = None, at: datetime | None = None) -> Message:
    """Answer the workflow whose code sent ``request`` (a command or the event recording it, with its
    ``origin_*``); the command id is derived from the request, so every copy of the answer is one."""
    origin, run, ref = request["origin_id"], request.get("origin_run_id") or "", request["origin_ref"]
    return _command(
        topics, "ResolveExternal", origin, f"{origin}:{run}:{ref}:resolved", at or request["at"],
        run_id=run, ref=ref, ok=ok, error_type=error_type, message=message,
    )


def messages_for_history(
    topics: Topics, workflow_id: str, history: list[dict], events: list[dict],
    earlier: Mapping[str, list[dict]] | None = None,
) -> list[Message]:
    """Messages owed for ``events`` of a workflow whose current-run history is ``history``.

    ``events`` may span runs: a run that continues as new is followed at once by the next one in the same
    batch (``WorkflowInstance.closed_runs``); ``earlier`` gives the histories of such runs, so what their
    events oblige is derived from their own history. A continuation whose next run is among ``events``
    has begun already, so its StartWorkflow command is not sent.
    """
    begun = {e["run_id"] for e in events if e["type"] == "WorkflowStarted"}
    current = history[0].get("run_id") if history else None
    out: list[Message] = []
    segment: list[dict] = []
    for i, e in enumerate(events):
        segment.append(e)
        if i + 1 < len(events) and events[i + 1].get("run_id") == e.get("run_id"):
            continue
        run = e.get("run_id")
        run_history = earlier[run] if earlier and run is not None and run != current and run in earlier else history
        out.extend(_messages_for_run(topics, workflow_id, run_history, segment, begun))
        segment = []
    return out


def _messages_for_run(topics: Topics, workflow_id: str, history: list[dict], events: list[dict], begun: set[str]) -> list[Message]:
    runs_started = {e["run_id"]: e for e in history if e["type"] == "WorkflowStarted"}
    for e in events:
        if e["type"] == "WorkflowStarted":
            runs_started[e["run_id"]] = e
    by_activity = {e["activity_id"]: e for e in history if e["type"] == "ActivityScheduled"}
    by_activity.update({e["activity_id"]: e for e in events if e["type"] == "ActivityScheduled"})
    out: list[Message] = []
    for e in events:
        owed = not e.get("copied")  # history carried into a reset run owes nothing that was not owed before
        if e["type"] == "WorkflowContinued" and e.get("new_run_id") in begun:
            owed = False  # the next run began in the same batch: nothing to start
        if owed:
            out.extend(messages_for(topics, workflow_id, e, runs_started.get(e.get("run_id")), by_activity.get))
        if e["type"] in ("WorkflowCancelled", "WorkflowTerminated", "WorkflowTimedOut"):
            out.extend(_close_children(topics, workflow_id, history, e))
        if (e["type"] == "CancelRequested" or e["type"] in BY_TERMINAL_EVENT) and not e.get("copied"):
            out.extend(_cancel_open_activities(topics, workflow_id, history, events, e))
            # A run ended and no other run begins in this batch (a reset or retry goes on): the outcome.
            result = None if begun - {e.get("run_id")} else result_message(topics, workflow_id, e)
            if result is not None:
                out.append(result)
    return out


def _cancel_open_activities(topics: Topics, workflow_id: str, history: list[dict], events: list[dict], at: dict) -> list[Message]:
    """A cancelled (or ended) run cancels its activities still in flight: scheduled before ``at`` and
    neither settled nor cancelled since. Derived from history, so a restore sends the same again."""
    run = at.get("run_id")
    same_run = {e["seq"]: e for e in (*history, *events) if e.get("run_id") == run}
    open_: dict[int, None] = {}
    for seq in sorted(same_run):
        if seq >= at["seq"]:
            break
        e = same_run[seq]
        if e["type"] == "ActivityScheduled":
            open_[e["activity_id"]] = None
        elif e["type"] in ("ActivityCompleted", "ActivityFailed", "ActivityCancelRequested"):
            open_.pop(e["activity_id"], None)
        elif e["type"] == "CancelRequested":
            open_.clear()
    reason = f"workflow {workflow_id}: {at['type']}"
    return [cancel_message(topics, workflow_id, run or "", aid, reason) for aid in open_]


def _close_children(topics: Topics, workflow_id: str, history: list[dict], closed: dict) -> list[Message]:
    """A cancelled parent cancels its open children (they may clean up); a terminated or timed-out one
    terminates them (the deadline is the whole execution's, children included)."""
    resolved = {e["child_ref"] for e in history if e["type"] in ("ChildCompleted", "ChildFailed")}
    kind = "CancelWorkflow" if closed["type"] == "WorkflowCancelled" else "TerminateWorkflow"
    reason = f"parent {workflow_id} was {closed['type'].removeprefix('Workflow').lower()}"
    return [
        _command(topics, kind, e["child_id"], f"{workflow_id}:{closed.get('run_id')}:{e['seq']}:close", closed["at"], reason=reason)
        for e in history
        if e["type"] == "ChildStarted" and e["child_ref"] not in resolved and e.get("run_id") == closed.get("run_id")
    ]
