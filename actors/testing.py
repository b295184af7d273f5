"""An in-memory, time-skipping environment for testing workflows without Kafka or PostgreSQL.

It runs the very code a node runs (``WorkflowInstance`` and the replay driver), routes the messages
events oblige exactly as a node would (activity tasks run inline, children and signals go to other
instances), and when nothing is left to do it jumps the clock to the next timer. A day-long timer takes
microseconds, so unit tests of workflow logic stay fast::

    env = WorkflowEnvironment()
    handle = env.start(OrderWorkflow, "A-1")
    env.signal(handle, "approve", "alice")
    assert env.result(handle) == "receipt-A-1"
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import traceback
import uuid
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

from actors.activities.worker import ActivityInfo, _BadArguments, _Context, _context
from actors.engine import typed
from actors.engine.definitions import activities, workflow_class, workflow_type_name
from actors.engine.dispatch import messages_for_history, reply_message, resolve_external_message
from actors.engine.instance import WorkflowInstance
from actors.errors import (
    NonRetryableError,
    PayloadTooLarge,
    QueryFailed,
    WorkflowAlreadyStarted,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowTerminated,
    WorkflowTimedOut,
    limited_payload,
)
from eventstore import codec, payloads, statuses
from eventstore import events as ev
from eventstore.topics import Topics


class _Beats:
    """Stands in for the worker a heartbeat would be sent through."""

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        pass

    class producer:  # noqa: N801 - mimics the attribute heartbeat() uses
        @staticmethod
        def flush() -> None:
            pass


class WorkflowEnvironment:
    """Runs workflows deterministically in one thread with a virtual clock."""

    def __init__(
        self, start: datetime | None = None, activity_overrides: dict[str, Any] | None = None,
        activity_durations: dict[str, float] | None = None,
    ) -> None:
        """``activity_durations``: virtual seconds an activity (by name) takes, so a race against a timer
        can go either way; others finish at once. A task cancelled before its time is up never runs."""
        self.now = start or datetime(2030, 1, 1, tzinfo=UTC)
        self.durations = dict(activity_durations or {})
        #: ``(workflow_id, run_id, activity_id)`` of every activity the workflows cancelled.
        self.cancelled_activities: set[tuple[str, str, int]] = set()
        #: Names of tasks dropped because they were cancelled before they ran.
        self.dropped_activities: list[str] = []
        self._cancelled_timers: set[tuple[str, str, int]] = set()
        self.topics = Topics("test")
        self.instances: dict[str, WorkflowInstance] = {}
        self.histories: dict[str, list[dict]] = {}
        #: Stream items per workflow id, across its runs (position = index + 1), as ``handle.stream`` reads them.
        self.streams: dict[str, list[Any]] = {}
        self.replies: dict[str, dict] = {}
        self.activity_calls: list[tuple[str, int, list[Any]]] = []
        self.overrides = dict(activity_overrides or {})
        self._inbox: deque[dict] = deque()
        self._timers: list[tuple[datetime, int, dict]] = []
        self._seq = itertools.count()

    # -- the client side -----------------------------------------------------------------------------------
    def start(self, wf: type | str, *args: Any, id: str | None = None, **options: Any) -> str:  # noqa: A002
        """Start as ``Client.start`` does, with the same options (policies, start_signal, start_delay, timeout,
        search, memo); a refused start raises ``WorkflowAlreadyStarted``."""
        from actors.client.sync import _START_DEFAULTS, _attributes, _start_options

        workflow_id = id or str(uuid.uuid4())
        attributes = _attributes(options.pop("search", None), options.pop("memo", None))
        body = {**_start_options(**{**_START_DEFAULTS, **options}), **attributes}
        request_id = str(uuid.uuid4())
        self._command("StartWorkflow", workflow_id, workflow_type=workflow_type_name(wf), input=limited_payload("arguments", list(args)),
                      request_id=request_id, **body)
        self.run_until_idle()
        reply = self.replies.pop(request_id, None)
        if reply is not None and not reply["ok"]:
            run_id = (payloads.decode(reply["result"]) or {}).get("run_id") if reply["result"] else None
            if reply["error_type"] == "WorkflowAlreadyStarted":
                raise WorkflowAlreadyStarted(workflow_id, run_id, reply["message"])
            raise ValueError(reply["message"])
        return workflow_id

    def signal(self, workflow_id: str, name: str, *args: Any) -> None:
        self._command("SignalWorkflow", workflow_id, name=name, input=limited_payload(f"arguments of signal {name!r}", list(args)))
        self.run_until_idle()

    def query(self, workflow_id: str, name: str, *args: Any) -> Any:
        return self._request("QueryWorkflow", workflow_id, name, args)

    def update(self, workflow_id: str, name: str, *args: Any) -> Any:
        return self._request("UpdateWorkflow", workflow_id, name, args)

    def cancel(self, workflow_id: str) -> None:
        self._command("CancelWorkflow", workflow_id, reason=None)
        self.run_until_idle()

    def terminate(self, workflow_id: str, reason: str | None = None) -> None:
        self._command("TerminateWorkflow", workflow_id, reason=reason)
        self.run_until_idle()

    def retry(self, workflow_id: str) -> None:
        self._command("RetryWorkflow", workflow_id)
        self.run_until_idle()

    def pause(self, workflow_id: str, reason: str | None = None) -> None:
        self._command("PauseWorkflow", workflow_id, reason=reason)
        self.run_until_idle()

    def resume(self, workflow_id: str) -> None:
        self._command("ResumeWorkflow", workflow_id)
        self.run_until_idle()

    def reset(self, workflow_id: str, seq: int) -> None:
        """A new run from the current run's history up to and including ``seq`` (as ``handle.reset``)."""
        self._command("ResetWorkflow", workflow_id, seq=seq)
        self.run_until_idle()

    def status(self, workflow_id: str) -> str:
        return self.instances[workflow_id].status

    def history(self, workflow_id: str) -> list[dict]:
        return list(self.instances[workflow_id].history)

    def stream(self, workflow_id: str, after: int = 0) -> list[Any]:
        """The items ``workflow.stream`` appended (all runs of the id), after position ``after`` (1-based)."""
        return list(self.streams.get(workflow_id, [])[after:])

    def search_attributes(self, workflow_id: str) -> dict[str, Any]:
        """The current run's search attributes, as the projections would show them."""
        from actors.search import fold

        return fold(self.instances[workflow_id].history)[0]

    def memo(self, workflow_id: str) -> dict[str, Any]:
        from actors.search import fold

        return fold(self.instances[workflow_id].history)[1]

    def result(self, workflow_id: str, max_time: timedelta = timedelta(days=3650), *, result_type: Any = None) -> Any:
        """Skip time until the workflow (following continue-as-new) ends; return its output or raise.

        The output is converted to ``result_type``, or by default to the type the workflow's ``execute``
        declares (typed payloads: a dataclass or Pydantic model comes back as one)."""
        deadline = self.now + max_time
        while self.status(workflow_id) not in statuses.FINAL:
            if not self.advance_to_next_timer() or self.now > deadline:
                raise TimeoutError(f"workflow {workflow_id} is {self.status(workflow_id)} and nothing is scheduled")
        inst = self.instances[workflow_id]
        last = inst.history[-1]
        if inst.status == "completed":
            value = payloads.decode(last["result"])
            if result_type is None:
                try:
                    result_type = typed.return_type(workflow_class(inst.workflow_type or "").execute)
                except LookupError:
                    result_type = None
            return typed.convert(value, result_type, f"result of workflow {workflow_id}") if result_type is not None else value
        if inst.status == "failed":
            raise WorkflowFailed(workflow_id, last.get("error_type", "Error"), last.get("message", ""), last.get("traceback", ""))
        if inst.status == "cancelled":
            raise WorkflowCancelled(workflow_id)
        if inst.status == "timed_out":
            raise WorkflowTimedOut(workflow_id, last.get("message"))
        raise WorkflowTerminated(workflow_id, last.get("reason"))

    def sleep(self, duration: float | timedelta) -> None:
        """Let virtual time pass, firing every timer due on the way."""
        end = self.now + (duration if isinstance(duration, timedelta) else timedelta(seconds=duration))
        while self._timers and self._timers[0][0] <= end:
            self.advance_to_next_timer()
        self.now = max(self.now, end)

    def replay(self, workflow_id: str) -> WorkflowInstance:
        """Rebuild a workflow from its history, as a restarted node would (raises nothing; check .status)."""
        fresh = WorkflowInstance(workflow_id)
        fresh.load(self.instances[workflow_id].history)
        return fresh

    def reload(self, workflow_id: str) -> None:
        """Rebuild a workflow from its history and carry on, as a node taking over its partition does.

        This is how a test deploys new code: a workflow ``blocked`` on a type or a replay mismatch that
        the code now handles resumes by itself.
        """
        inst = WorkflowInstance(workflow_id)
        new = inst.load(self.instances[workflow_id].history)
        self.instances[workflow_id] = inst
        self._emitted(workflow_id, inst, new)
        self.run_until_idle()

    # -- the engine side -----------------------------------------------------------------------------------
    def _command(self, kind: str, workflow_id: str, **body: Any) -> None:
        envelope = ev.command(kind, workflow_id, str(uuid.uuid4()), self.now, **body)
        self._inbox.append(ev.flat_command(envelope))

    def _request(self, kind: str, workflow_id: str, name: str, args: tuple) -> Any:
        request_id = str(uuid.uuid4())
        self._command(kind, workflow_id, request_id=request_id, name=name, input=limited_payload(f"arguments of {name!r}", list(args)))
        self.run_until_idle()
        reply = self.replies.pop(request_id)
        if not reply["ok"]:
            raise QueryFailed(reply["error_type"] or "Error", reply["message"] or "")
        return payloads.decode(reply["result"])

    def run_until_idle(self) -> None:
        """Deliver commands until none are left (timers in the future stay scheduled)."""
        while self._inbox:
            command = self._inbox.popleft()
            wid = command["workflow_id"]
            inst = self.instances.setdefault(wid, WorkflowInstance(wid))
            out = inst.handle([command], now=self.now)
            for reply in out.replies:
                self._deliver_reply(reply_message(self.topics, reply.request_id, reply.ok, reply.result, reply.error_type, reply.message))
            self._emitted(wid, inst, out.events)
            for request, ok, error_type, message in out.notices:  # answers to signal_external/cancel_external
                self._route(resolve_external_message(self.topics, request, ok, error_type, message))

    def _emitted(self, wid: str, inst: WorkflowInstance, events: list[dict]) -> None:
        """Act on new events as a node does: schedule their timers, send what they oblige."""
        for event in events:
            event["workflow_id"] = wid
            self._schedule_timers(wid, event)
            if event["type"] == "StreamAppended":
                self.streams.setdefault(wid, []).append(payloads.decode(event["value"]))
        for message in messages_for_history(self.topics, wid, inst.history, events, inst.closed_runs):
            self._route(message)

    def advance_to_next_timer(self) -> bool:
        while self._timers:
            at, _, command = heapq.heappop(self._timers)
            timer_key = (command["workflow_id"], command.get("run_id"), command.get("timer_id"))
            if command["type"] == "FireTimer" and command.get("kind") == "timer" and timer_key in self._cancelled_timers:
                continue  # a stopped timer: no time passes for it
            self.now = max(self.now, at)
            if command["type"] == "_RunActivity":
                self._run_activity(command["task"], delayed=True)
            else:
                command["at"] = self.now
                self._inbox.append(command)
            self.run_until_idle()
            return True
        return False

    def _schedule_timers(self, wid: str, e: dict) -> None:
        kind = e["type"]
        if kind == "WorkflowStarted":  # the durable timers of the start options, as the node's store keeps them
            if e.get("start_at"):
                self._timer(datetime.fromtimestamp(e["start_at"] / 1000, UTC), wid, e["run_id"], "timer", e["seq"], 0)
            if e.get("timeout_at"):
                self._timer(datetime.fromtimestamp(e["timeout_at"] / 1000, UTC), wid, e["run_id"], "deadline", 0, 0)
        elif kind == "TimerStarted":
            at = datetime.fromtimestamp(e["fire_at"] / 1000, UTC)
            self._timer(at, wid, e["run_id"], "timer", e["timer_id"], 0)
        elif kind == "ActivityAttemptFailed":
            at = datetime.fromtimestamp(e["retry_at"] / 1000, UTC)
            self._timer(at, wid, e["run_id"], "retry", e["activity_id"], e["attempt"] + 1)
        elif kind == "TimerCancelled":
            self._cancelled_timers.add((wid, e["run_id"], e["timer_id"]))

    def _timer(self, at: datetime, wid: str, run: str, kind: str, timer_id: int, attempt: int) -> None:
        command = {"type": "FireTimer", "command_id": f"t{next(self._seq)}", "workflow_id": wid, "at": at,
                   "run_id": run, "timer_id": timer_id, "kind": kind, "attempt": attempt}
        heapq.heappush(self._timers, (at, next(self._seq), command))

    def _deliver_reply(self, message: Any) -> None:
        reply = codec.decode(message.value, "metamorph.Reply")
        self.replies[reply["request_id"]] = reply

    def _route(self, message: Any) -> None:
        name = codec.registry().decode(message.value)[0]
        if name == "metamorph.CommandEnvelope":
            self._inbox.append(ev.flat_command(codec.decode(message.value)))
        elif name == "metamorph.Reply":
            self._deliver_reply(message)
        elif name == "metamorph.ActivityTask":
            self._run_activity(codec.decode(message.value))
        elif name == "metamorph.ActivityCancel":
            c = codec.decode(message.value)
            self.cancelled_activities.add((c["workflow_id"], c["run_id"], c["activity_id"]))

    def _run_activity(self, task: dict, delayed: bool = False) -> None:
        if not delayed and self.durations.get(task["name"]):
            at = self.now + timedelta(seconds=self.durations[task["name"]])
            heapq.heappush(self._timers, (at, next(self._seq), {"type": "_RunActivity", "workflow_id": task["workflow_id"], "task": task}))
            return
        if (task["workflow_id"], task["run_id"], task["activity_id"]) in self.cancelled_activities:
            self.dropped_activities.append(task["name"])
            return
        args = payloads.decode(task["input"]) or []
        kwargs = payloads.decode(task["kwargs"] or b"{}") or {}
        self.activity_calls.append((task["name"], task["attempt"], args))
        body = {"run_id": task["run_id"], "activity_id": task["activity_id"], "attempt": task["attempt"]}
        fn = self.overrides.get(task["name"])
        definition = activities().get(task["name"])
        if fn is None and definition is not None:
            fn = definition.fn
        info = ActivityInfo(
            task["workflow_id"], task["run_id"], task["workflow_type"], task["activity_id"], task["attempt"], task["name"], task["queue"]
        )
        token = _context.set(_Context(info, _Beats(), task.get("heartbeat_timeout")))  # type: ignore[arg-type]
        try:
            if fn is None:
                raise NonRetryableError(f"no activity named {task['name']!r}")
            args, kwargs = _typed_arguments(definition.fn if definition is not None else fn, args, kwargs)
            value = fn(*args, **kwargs)
            if asyncio.iscoroutine(value):
                value = asyncio.run(value)
            result = limited_payload("activity result", value)  # the same limit as a worker's
        except Exception as exc:
            self._command(
                "FailActivity", task["workflow_id"], **body,
                error_type="TypeError" if isinstance(exc, _BadArguments) else type(exc).__name__, message=str(exc),
                traceback="".join(traceback.format_exception(exc)),
                non_retryable=isinstance(exc, NonRetryableError | PayloadTooLarge),
            )
        else:
            self._command("CompleteActivity", task["workflow_id"], **body, result=result)
        finally:
            _context.reset(token)


def replay(history: Any, workflow_class: type) -> str:
    """Replay a recorded history against ``workflow_class`` (new code) and raise on a non-determinism.

    ``history`` is what ``metamorph history ID --json`` wrote (the parsed JSON), what
    ``handle.history()`` or ``WorkflowEnvironment.history()`` return, or a History object; see
    ``actors.engine.replayer`` for the format. Raises ``NondeterminismError`` with ``workflow_id``, ``seq``,
    ``recorded`` and ``issued`` when the code would block on this history after a deploy; returns the
    run's status at the end of the history otherwise.
    """
    from actors.engine.replayer import replay as _replay

    return _replay(history, workflow_class)



def _typed_arguments(fn: Any, args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """The activity's arguments converted to its annotations, as a worker does (a misfit is not retried)."""
    try:
        return typed.convert_arguments(fn, args, kwargs)
    except TypeError as exc:
        raise _BadArguments(str(exc)) from None
