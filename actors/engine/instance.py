"""One workflow id's state machine: commands in, history events (and replies) out.

This is the logic a workflow actor runs, kept free of pykka and Kafka so it can be tested by feeding it
commands. Every handler is idempotent — a re-delivered command (same command id, a result for an attempt
already settled, a timer already fired) produces nothing — because delivery is at-least-once.
Retries, backoff and timeouts are decided here, by the owner, as events and timers, so they survive any
crash of any process.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from actors.engine import typed
from actors.engine.definitions import check_arguments, handler_for, workflow_class
from actors.engine.replay import TERMINAL, WorkflowRun
from eventstore import payloads
from eventstore.events import CommandType
from eventstore.statuses import BY_TERMINAL_EVENT, UNSUCCESSFUL

log = logging.getLogger(__name__)

#: Start policies (docs/API.md §6); the first of each is the default and today's behaviour.
IF_RUNNING = ("use_existing", "fail", "terminate")
IF_CLOSED = ("use_existing", "fail", "allow", "allow_failed")
#: Runs begun in one step by a chain of runs that continue as new at once (a workflow that continues
#: without waiting for anything); the rest of such a chain goes through ``<ns>.commands``, one step per
#: command, so one batch cannot spin for ever.
MAX_INLINE_CONTINUATIONS = 20
#: Commands a paused run keeps for its resume (docs/API.md §7): each would make the code take a step. Queries,
#: heartbeats, terminate, the execution deadline and starts are not steps and are handled as ever.
DEFERRED_WHILE_PAUSED = frozenset(
    {"SignalWorkflow", "UpdateWorkflow", "CancelWorkflow", "CompleteActivity", "FailActivity", "ResolveChild", "FireTimer", "ResolveExternal"}
)
#: Commands a client may send with a ``request_id`` to have the owner confirm that the workflow is running
#: (answered ok, WorkflowNotRunning or WorkflowNotFound on ``<ns>.replies``).
CONFIRMABLE = frozenset({"SignalWorkflow", "CancelWorkflow", "TerminateWorkflow", "PauseWorkflow", "ResumeWorkflow"})
#: Events of the owner's, not of the code's, that a reset or retry does not carry into the new run: the new
#: run is not blocked, not paused, and commands deferred but never applied before the cut are not part of it.
_NOT_CARRIED = frozenset(
    {"WorkflowBlocked", "WorkflowUnblocked", "CommandRejected", "WorkflowPaused", "WorkflowResumed", "CommandDeferred"}
)


def utcnow() -> datetime:
    """Now, truncated to the millisecond that Avro keeps, so live runs and replays see the same time."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


@dataclass
class Reply:
    request_id: str
    ok: bool
    result: bytes = b""
    error_type: str | None = None
    message: str | None = None


@dataclass
class Outcome:
    """What handling a batch of commands produced for one workflow id."""

    events: list[dict] = field(default_factory=list)  # engine events, in order, of possibly several runs
    replies: list[Reply] = field(default_factory=list)
    #: (activity_id, attempt, at) or, from a task still waiting for a queue slot, (..., True)
    heartbeats: list[tuple] = field(default_factory=list)
    rejected: list[tuple[dict, str]] = field(default_factory=list)  # commands with no workflow to apply to
    #: Answers owed to workflows whose code sent a command here (signal_external/cancel_external) that was
    #: not recorded as an event (refused, or already applied): (the command, ok, error_type, message).
    notices: list[tuple[dict, bool, str | None, str | None]] = field(default_factory=list)


class WorkflowInstance:
    """The current run of one workflow id, rebuilt from history, advanced by commands."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        self.run: WorkflowRun | None = None
        self.history: list[dict] = []  # the current run's events (the run holds the same list when live)
        self.run_id: str | None = None
        self.workflow_type: str | None = None
        self.terminal: str | None = None
        self.parent: dict[str, Any] = {}
        self._attempts: dict[int, int] = {}  # activity_id -> current attempt
        # Dicts used as sets: an empty set is 216 bytes, an empty dict 64, and a live workflow keeps both.
        self._awaiting_retry: dict[int, None] = {}
        self._scheduled: dict[int, dict] = {}  # activity_id -> ActivityScheduled event
        self._open_timers: dict[int, None] = {}
        self._blocked_recorded = False
        self._paused = False
        self._deferred: list[dict] = []  # CommandDeferred events of the current pause, in arrival order
        #: Histories of the runs that continued as new during the last ``load``/``handle``, by run id: the
        #: messages their events oblige (cancels of their open activities) are derived from them.
        self.closed_runs: dict[str, list[dict]] = {}

    # -- rebuilding ----------------------------------------------------------------------------------
    def load(self, history: list[dict]) -> list[dict]:
        """Replay a run's history; returns decisions the code makes beyond it (a crash cut the batch).

        A history that ends in ``WorkflowContinued`` without its next run (a crash between the two, or a
        history written before runs began at once) begins that run here, like a live continuation.
        """
        self.closed_runs = {}
        new = self._load(history)
        if self.terminal == "WorkflowContinued":
            out = Outcome(events=new)
            self._follow_continuation(utcnow(), out)
            new = self._with_status(out.events)
        return new

    def _load(self, history: list[dict]) -> list[dict]:
        self.history = list(history)
        self._reset_bookkeeping()
        for event in self.history:
            self._track(event)
        if not self.history:
            return []
        start = self.history[0]
        self.run_id = start.get("run_id") or self.run_id
        self.workflow_type = start.get("workflow_type")
        self.parent = {k: start.get(k) for k in ("parent_id", "parent_run_id", "parent_ref")}
        terminal = next((e["type"] for e in reversed(self.history) if e["type"] in TERMINAL), None)
        self.terminal = terminal
        try:
            cls = workflow_class(self.workflow_type or "")
        except LookupError:
            self.run = None
            return []
        if terminal is not None:
            # Read-only: rebuilt so queries see the final state; an ended run decides nothing more.
            run = WorkflowRun(cls, self.workflow_id, self.run_id or "", self.parent.get("parent_id"))
            run.replay(self.history)
            self.run = None if run.blocked else run
            return []
        self.run = WorkflowRun(cls, self.workflow_id, self.run_id or "", self.parent.get("parent_id"))
        self.run.replay(self.history)
        self.history = self.run.history
        new = self._collect()
        if self.run.blocked is None and self._blocked_recorded:
            # After the decisions the replay made beyond history: their seqs were taken first, and events
            # are appended in seq order.
            new = [*new, self._system("WorkflowUnblocked", {})]
            self._blocked_recorded = False
        return self._with_status(new)

    def _reset_bookkeeping(self) -> None:
        self._attempts.clear()
        self._awaiting_retry.clear()
        self._scheduled.clear()
        self._open_timers.clear()
        self._blocked_recorded = False
        self._paused = False
        self._deferred = []

    def _track(self, event: dict) -> None:
        """Keep the owner's view of attempts and timers in step with history (live and on replay)."""
        kind = event["type"]
        if kind == "ActivityScheduled":
            self._attempts[event["seq"]] = 1
            self._scheduled[event["seq"]] = event
        elif kind == "ActivityAttemptFailed":
            self._awaiting_retry[event["activity_id"]] = None
        elif kind == "ActivityRetried":
            self._awaiting_retry.pop(event["activity_id"], None)
            self._attempts[event["activity_id"]] = event["attempt"]
        elif kind in ("ActivityCompleted", "ActivityFailed", "ActivityCancelRequested"):
            # A cancelled activity is settled for the owner: no retry, and a late outcome is ignored.
            self._attempts.pop(event["activity_id"], None)
            self._awaiting_retry.pop(event["activity_id"], None)
        elif kind == "CancelRequested":
            self._attempts.clear()  # a cancelled workflow cancels every activity in flight (docs/API.md §9)
            self._awaiting_retry.clear()
        elif kind == "TimerStarted":
            self._open_timers[event["seq"]] = None
        elif kind == "WorkflowStarted" and event.get("start_at"):
            self._open_timers[event["seq"]] = None  # start_delay: released by TimerFired(timer_id=1)
        elif kind in ("TimerFired", "TimerCancelled"):
            self._open_timers.pop(event["timer_id"], None)
        elif kind == "WorkflowBlocked":
            self._blocked_recorded = True
        elif kind == "WorkflowUnblocked":
            self._blocked_recorded = False
        elif kind == "WorkflowPaused":
            self._paused = True
        elif kind == "CommandDeferred":
            self._deferred.append(event)
        elif kind == "WorkflowResumed":
            # The deferred commands are applied in the same append as this event, so they are settled.
            self._paused = False
            self._deferred = []
        if kind in TERMINAL:
            self.terminal = kind

    # -- handling ------------------------------------------------------------------------------------
    def handle(self, commands: list[dict], now: datetime | None = None) -> Outcome:
        """Apply commands in order; returns the events to append and the replies to send."""
        out = Outcome()
        self.closed_runs = {}
        for command in commands:
            at = now or utcnow()
            before = len(out.events)
            unknown = self.run_id is None
            try:
                self._follow_continuation(at, out)  # a chain cut short by MAX_INLINE_CONTINUATIONS
                self._dispatch(command, at, out)
                self._follow_continuation(at, out)
            except Exception as exc:  # a bug or bad input in one command must not lose the batch
                log.exception("command %s for %s failed", command["type"], self.workflow_id)
                if unknown and len(out.events) == before:
                    # A first start that failed before recording anything: forget it, so the id is not
                    # blocked (a later start of it must run); the command is dead-lettered with the reason.
                    self.run_id = self.workflow_type = self.terminal = None
                    self.run, self.history, self.parent = None, [], {}
                    self._reset_bookkeeping()
                    out.rejected.append((command, f"{type(exc).__name__}: {exc}"))
                elif self.run_id is not None and self.terminal is None:
                    out.events.append(self._system("CommandRejected", _rejection(command, exc)))
                else:
                    out.rejected.append((command, f"{type(exc).__name__}: {exc}"))
            if len(out.events) > before and self.run is not None:
                out.events[-1]["status"] = self.status
        return out

    @property
    def status(self) -> str:
        if self.terminal:
            return _TERMINAL_STATUS[self.terminal]
        if self._paused:
            return "paused"
        if self.run is None:
            return "blocked" if self._blocked_recorded else "pending"
        return self.run.status

    def _with_status(self, events: list[dict]) -> list[dict]:
        if events:
            events[-1]["status"] = self.status
        return events

    def _dispatch(self, command: dict, at: datetime, out: Outcome) -> None:
        """Apply one command, or keep it for the resume when the run is paused.

        Why recorded (CommandDeferred) and not held in memory: the command's offset is committed once this
        batch is appended, so a crash or failover during the pause must find it in history; replay never
        sees these events (the code only ever sees the inputs applied on resume, as ordinary inputs).
        """
        if command.get("request_id") and command["type"] in CONFIRMABLE:
            # The client asks for the owner's word (its projections said the workflow has ended or is
            # unknown, which may only be lag): answered here, where the id's state is known, then applied.
            if self.run_id is None or self.terminal is not None:
                out.replies.append(self._not_running_reply(command["request_id"]))
            else:
                out.replies.append(Reply(command["request_id"], True, payloads.encode(None)))
            command = {**command, "request_id": None}  # answered: a deferred copy must not answer again
        deadline = command["type"] == "FireTimer" and command.get("kind") == "deadline"
        if self._paused and self.terminal is None and command["type"] in DEFERRED_WHILE_PAUSED and not deadline:
            out.events.append(self._system("CommandDeferred", {"command": _freeze(command)}, at))
            return
        COMMAND_HANDLERS[command["type"]](self, command, at, out)

    def _cmd_PauseWorkflow(self, cmd: dict, at: datetime, out: Outcome) -> None:
        if self.run_id is None or self.terminal is not None:
            out.rejected.append((cmd, self._not_running()))
            return
        if self._paused:
            return  # pausing a paused workflow changes nothing
        event = self._system("WorkflowPaused", {"reason": cmd.get("reason")}, at)
        event["status"] = self.status
        out.events.append(event)

    def _cmd_ResumeWorkflow(self, cmd: dict, at: datetime, out: Outcome) -> None:
        """End the pause and apply what it deferred, in arrival order, as if it had arrived now."""
        if not self._paused or self.terminal is not None:
            return
        deferred = [_thaw(e["command"]) for e in self._deferred]
        resumed = self._system("WorkflowResumed", {}, at)
        resumed["status"] = self.status
        out.events.append(resumed)
        for command in deferred:
            before = len(out.events)
            try:
                self._follow_continuation(at, out)
                COMMAND_HANDLERS[command["type"]](self, command, at, out)
            except Exception as exc:  # one bad deferred command must not lose the others
                log.exception("deferred command %s for %s failed", command["type"], self.workflow_id)
                if self._live():
                    out.events.append(self._system("CommandRejected", _rejection(command, exc)))
                else:
                    out.rejected.append((command, f"{type(exc).__name__}: {exc}"))
            if len(out.events) > before:
                out.events[-1]["status"] = self.status

    def _input(self, kind: str, body: dict, at: datetime, out: Outcome) -> None:
        """Record an input event and let the code run; collects the decisions it makes."""
        assert self.run is not None
        event = {"type": kind, "seq": self.run.next_seq(), "at": at, "run_id": self.run_id, **body}
        self._track(event)
        self.run.apply(event)
        out.events.append(event)
        out.events.extend(self._collect())

    def _system(self, kind: str, body: dict, at: datetime | None = None) -> dict:
        """An event outside the code's view (retries, rejections): recorded, never replayed into code."""
        seq = (self.history[-1]["seq"] if self.history else 0) + 1
        event = {"type": kind, "seq": seq, "at": at or utcnow(), "run_id": self.run_id, **body}
        self.history.append(event)
        if self.run is not None and self.run.history is not self.history:
            self.run.history.append(event)
        if self.run is not None:
            self.run._cursor = len(self.run.history)
        self._track(event)
        return event

    def _collect(self) -> list[dict]:
        """Take the run's new decisions; record a block once when replay found a mismatch."""
        assert self.run is not None
        new, self.run.new_events = self.run.new_events, []
        for event in new:
            event["run_id"] = self.run_id
            self._track(event)
        if self.run.blocked is not None and not self._blocked_recorded:
            new.append(self._system("WorkflowBlocked", {"error_type": "NondeterminismError", "message": str(self.run.blocked)}))
        return new

    def _live(self) -> bool:
        return self.run is not None and self.terminal is None

    def _follow_continuation(self, at: datetime, out: Outcome) -> None:
        """Begin the next run as soon as the current one decides ``WorkflowContinued``, in the same batch.

        Why: the next run used to begin only when the StartWorkflow command the old run sent came back
        through ``<ns>.commands`` — behind every signal, update and cancel already queued for the id, which
        then found no live run and were rejected (lost). Begun at once, there is no moment without a run:
        each command after the continuation goes to the new run, in the order the partition delivers
        them (as Temporal does, the new run's start is atomic with the old run's close). The new run's
        WorkflowStarted follows WorkflowContinued in the same append, so the two are durable together;
        a crash between them is repaired by ``load``, and the StartWorkflow message is then sent again
        (``actors.engine.dispatch``), a duplicate of which starts nothing.
        """
        for _ in range(MAX_INLINE_CONTINUATIONS):
            if self.terminal != "WorkflowContinued" or not self.history:
                return
            continued = next((e for e in reversed(self.history) if e["type"] == "WorkflowContinued"), None)
            if continued is None or continued.get("run_id") != self.run_id:
                return
            continued["status"] = _TERMINAL_STATUS["WorkflowContinued"]
            self.closed_runs[self.run_id or ""] = self.history
            start = continuation_start(self.workflow_id, self.history[0], continued, at)
            self._begin_run(start, at, out, payloads.decode(start["input"]) or [])  # our own encoding

    def _cmd_StartWorkflow(self, cmd: dict, at: datetime, out: Outcome) -> None:
        """Start a run, or decide what a start of an id that has runs means (docs/API.md §6).

        The decision is taken here, by the owner of the id's partition, which is the one place that knows
        the id's state: concurrent starts from many clients are serialised by the partition, so exactly one
        of them wins. A start carrying ``request_id`` is answered on ``<ns>.replies`` with the decision.
        """
        continuing = cmd.get("continued_from") and cmd.get("continued_from") == self.run_id and self.terminal == "WorkflowContinued"
        try:
            # Decoded before anything is decided or recorded: a start whose input cannot be read (too deep,
            # too big, not JSON) never creates or replaces a run, so its id stays free for a later valid start.
            args = payloads.decode(cmd["input"]) or []
        except payloads.PayloadError as exc:
            out.rejected.append((cmd, f"undecodable input: {exc}"))
            self._start_reply(cmd, out, "PayloadError", f"undecodable input: {exc}")
            return
        if continuing or self.run_id is None:
            self._begin_run(cmd, at, out, args)
            self._start_reply(cmd, out)
            return
        if self.history and self.history[0].get("command_id") == cmd["command_id"]:
            self._start_reply(cmd, out)  # a re-delivered start of this run: answer again, start nothing
            return
        if_running = cmd.get("if_running") or "use_existing"
        if_closed = cmd.get("if_closed") or "use_existing"
        if if_running not in IF_RUNNING or if_closed not in IF_CLOSED:
            reason = f"unknown start policy if_running={if_running!r} if_closed={if_closed!r}"
            out.rejected.append((cmd, reason))
            self._start_reply(cmd, out, "ValueError", reason)
            return
        if self.terminal is None or self.terminal == "WorkflowContinued":  # open (a continuation is in flight)
            if if_running == "fail":
                self._start_reply(cmd, out, "WorkflowAlreadyStarted", f"workflow {self.workflow_id} is {self.status}")
                return
            if if_running == "terminate":
                if self.terminal is None:
                    ended = self._system("WorkflowTerminated", {"reason": "replaced"}, at)
                    ended["status"] = "terminated"
                    self.run = None
                    out.events.append(ended)
                self._begin_run(cmd, at, out, args)
                self._start_reply(cmd, out)
                return
            if cmd.get("start_signal"):  # signal-with-start of an open run: the signal goes to it
                signal = {"type": "SignalWorkflow", "command_id": f"{cmd['command_id']}:signal", "workflow_id": self.workflow_id,
                          "at": at, "name": cmd["start_signal"], "input": cmd.get("start_signal_input") or payloads.encode([])}
                self._cmd_SignalWorkflow(signal, at, out)
            self._start_reply(cmd, out)
            return
        status = self.status
        if if_closed == "allow" or (if_closed == "allow_failed" and status in UNSUCCESSFUL):
            self._begin_run(cmd, at, out, args)
            self._start_reply(cmd, out)
        elif if_closed == "use_existing":
            self._start_reply(cmd, out)
        else:
            self._start_reply(cmd, out, "WorkflowAlreadyStarted", f"workflow {self.workflow_id} is {status} (if_closed={if_closed})")

    def _start_reply(self, cmd: dict, out: Outcome, error_type: str | None = None, message: str | None = None) -> None:
        """Tell a client that asked (``request_id``) what became of its start: the run it refers to, or why not.

        An accepted update-with-start then goes to that run, like any update (answered when it completes).
        """
        if cmd.get("request_id"):
            result = payloads.encode({"run_id": self.run_id})
            out.replies.append(Reply(cmd["request_id"], error_type is None, result, error_type, message))
        if cmd.get("start_update") and cmd.get("update_request_id"):
            if error_type is not None:
                out.replies.append(Reply(cmd["update_request_id"], False, error_type=error_type, message=message))
                return
            update = {"type": "UpdateWorkflow", "command_id": f"{cmd['command_id']}:update", "workflow_id": self.workflow_id,
                      "at": cmd.get("at"), "request_id": cmd["update_request_id"], "name": cmd["start_update"],
                      "input": cmd.get("start_update_input") or payloads.encode([])}
            self._cmd_UpdateWorkflow(update, cmd.get("at") or utcnow(), out)

    def _begin_run(self, cmd: dict, at: datetime, out: Outcome, args: Any) -> None:
        """A new run of this id: WorkflowStarted, then the code's first decisions (unless it must wait)."""
        self.run_id = cmd.get("run_id") or str(uuid.uuid4())
        self.workflow_type = cmd["workflow_type"]
        self.parent = {k: cmd.get(k) for k in ("parent_id", "parent_run_id", "parent_ref")}
        self.terminal = None
        self.history = []
        self._reset_bookkeeping()
        timeout_at = cmd.get("timeout_at")
        if timeout_at is None and cmd.get("timeout") is not None:
            timeout_at = ms(at + timedelta(seconds=max(0.0, cmd["timeout"])))
        delay = cmd.get("start_delay") or 0.0
        started = {
            "type": "WorkflowStarted", "seq": 1, "at": at, "run_id": self.run_id, "workflow_type": cmd["workflow_type"],
            "input": cmd["input"], "command_id": cmd["command_id"], **self.parent,
            "continued_from": cmd.get("continued_from"), "timeout_at": timeout_at,
            "start_at": ms(at + timedelta(seconds=delay)) if delay > 0 else None,
            "start_signal": None, "start_signal_input": None, "priority": cmd.get("priority"),
            "search": cmd.get("search"), "memo": cmd.get("memo"),
            # The start's trace context (actors.tracing; from the command's Kafka headers): every later step
            # of the run, even after a restart on another node, joins this trace.
            "trace": cmd.get("_trace"),
        }
        rejected_signal = None
        try:
            cls = workflow_class(cmd["workflow_type"])
            if not isinstance(args, list):
                raise TypeError(f"workflow arguments must be a JSON list, got {type(args).__name__}")
            check_arguments(cls.execute, [None, *args])
            typed.convert_arguments(cls.execute, args, skip=1)  # a field that does not fit fails the start, named
        except LookupError as exc:
            # A rolling deploy: this node's code does not have the type (yet). Not the workflow's fault, so
            # not a failure: it waits `blocked`, and the node that owns it with the type runs it (the node
            # retries blocked workflows when it takes a partition).
            log.warning("workflow %s is blocked: %s (no node here knows the type)", self.workflow_id, exc)
            self.run = None
            self.history = [started]
            self._track(started)
            blocked = self._system("WorkflowBlocked", {"error_type": "UnknownWorkflowType", "message": str(exc)}, at)
            blocked["status"] = "blocked"
            out.events.extend([started, blocked])
            return
        except (TypeError, ValueError) as exc:
            self.run = None
            self.history = [started]
            error = type(exc).__name__
            failed = {"type": "WorkflowFailed", "seq": 2, "at": at, "run_id": self.run_id, "error_type": error,
                      "message": str(exc), "traceback": "", "status": "failed"}
            self.history.append(failed)
            self.terminal = "WorkflowFailed"
            out.events.extend([started, failed])
            return
        if cmd.get("start_signal"):
            signal_input = cmd.get("start_signal_input") or payloads.encode([])
            try:
                method = handler_for(cls, "signal", cmd["start_signal"])
                if method is None:
                    raise LookupError(f"workflow type {cmd['workflow_type']} has no signal named {cmd['start_signal']!r}")
                check_arguments(getattr(cls, method), [None, *(payloads.decode(signal_input) or [])])
                started.update(start_signal=cmd["start_signal"], start_signal_input=signal_input)
            except (LookupError, TypeError, ValueError) as exc:
                # As for any signal: the sender's mistake is recorded (exceptions()) and the run goes on.
                log.warning("start signal %r to workflow %s rejected: %s", cmd["start_signal"], self.workflow_id, exc)
                error_type = "UnknownSignal" if isinstance(exc, LookupError) else type(exc).__name__
                rejected_signal = {"command": "StartWorkflow", "error_type": error_type, "message": str(exc), "traceback": ""}
        self.run = WorkflowRun(cls, self.workflow_id, self.run_id, self.parent.get("parent_id"))
        self.history = self.run.history
        self._input("WorkflowStarted", {k: v for k, v in started.items() if k not in ("type", "seq", "at")}, at, out)
        if rejected_signal is not None:
            out.events.append(self._system("CommandRejected", rejected_signal, at))

    def _check_handler(self, kind: str, name: str, input_: bytes) -> str:
        assert self.run is not None
        method = handler_for(self.run.cls, kind, name)
        if method is None:
            raise LookupError(f"workflow type {self.workflow_type} has no {kind} named {name!r}")
        args = payloads.decode(input_) or []
        check_arguments(getattr(self.run.cls, method), [None, *args])
        typed.convert_arguments(getattr(self.run.cls, method), args, skip=1)  # rejected (named field) if it does not fit
        return method

    def _cmd_SignalWorkflow(self, cmd: dict, at: datetime, out: Outcome) -> None:
        if not self._live():
            out.rejected.append((cmd, self._not_running()))
            self._notify_refused(cmd, out)
            return
        if self.run.has_applied(cmd["command_id"]):  # type: ignore[union-attr]
            _notify(cmd, out, True)  # a re-delivered signal_external: answer again (the origin ignores a second)
            return
        try:
            self._check_handler("signal", cmd["name"], cmd["input"])
        except (LookupError, TypeError) as exc:
            # The sender's mistake, not the engine's: recorded (shown by exceptions()) and logged without a
            # traceback; the workflow carries on.
            error_type = "UnknownSignal" if isinstance(exc, LookupError) else type(exc).__name__
            log.warning("signal %r to workflow %s rejected: %s", cmd["name"], self.workflow_id, exc)
            body = {"command": cmd["type"], "error_type": error_type, "message": str(exc), "traceback": ""}
            out.events.append(self._system("CommandRejected", body, at))
            _notify(cmd, out, False, error_type, str(exc))
            return
        body = {"name": cmd["name"], "input": cmd["input"], "command_id": cmd["command_id"], **_origin(cmd)}
        self._input("SignalReceived", body, at, out)  # its origin (if any) is answered from the event

    def _notify_refused(self, cmd: dict, out: Outcome) -> None:
        """Answer a workflow that sent ``cmd`` from its code: no such workflow, or it has ended."""
        if self.run_id is None:
            _notify(cmd, out, False, "WorkflowNotFound", self._not_running())
        else:
            _notify(cmd, out, False, "WorkflowNotRunning", self.status)

    def _cmd_ResolveExternal(self, cmd: dict, at: datetime, out: Outcome) -> None:
        """The answer to this run's signal_external/cancel_external: an input the awaiting code sees."""
        if not self._live() or cmd.get("run_id") != self.run_id or ("external", cmd["ref"]) not in self.run._pending:  # type: ignore[union-attr]
            return  # a duplicate answer, an answer for an ended run, or one the code stopped awaiting
        body = {"ref": cmd["ref"], "ok": cmd["ok"], "error_type": cmd.get("error_type"), "message": cmd.get("message")}
        self._input("ExternalResolved", body, at, out)

    def _not_running_reply(self, request_id: str) -> Reply:
        """An unknown id is ``WorkflowNotFound`` (clients raise it without asking PostgreSQL first)."""
        error_type = "WorkflowNotFound" if self.run_id is None else "WorkflowNotRunning"
        return Reply(request_id, False, error_type=error_type, message=self._not_running())

    def _not_running(self) -> str:
        if self.run_id is None:
            return f"no workflow with id {self.workflow_id!r}"
        return f"workflow {self.workflow_id} is {self.status}"

    def _cmd_QueryWorkflow(self, cmd: dict, at: datetime, out: Outcome) -> None:
        if self.run is None:
            out.replies.append(self._not_running_reply(cmd["request_id"]))
            return
        try:
            result = self.run.query(cmd["name"], payloads.decode(cmd["input"]) or [])
            out.replies.append(Reply(cmd["request_id"], True, payloads.encode(result)))
        except Exception as exc:
            out.replies.append(Reply(cmd["request_id"], False, error_type=type(exc).__name__, message=str(exc)))

    def _cmd_UpdateWorkflow(self, cmd: dict, at: datetime, out: Outcome) -> None:
        if not self._live():
            out.replies.append(self._not_running_reply(cmd["request_id"]))
            return
        done = next((e for e in self.history if e["type"] == "UpdateCompleted" and e["request_id"] == cmd["request_id"]), None)
        if done is not None:  # a re-delivered update: answer again, apply nothing
            out.replies.append(_update_reply(done))
            return
        if any(e["type"] == "UpdateAccepted" and e["request_id"] == cmd["request_id"] for e in self.history):
            return
        try:
            self._check_handler("update", cmd["name"], cmd["input"])
        except (LookupError, TypeError) as exc:
            out.replies.append(Reply(cmd["request_id"], False, error_type=type(exc).__name__, message=str(exc)))
            return
        self._input("UpdateAccepted", {"request_id": cmd["request_id"], "name": cmd["name"], "input": cmd["input"]}, at, out)

    def _cmd_CancelWorkflow(self, cmd: dict, at: datetime, out: Outcome) -> None:
        if not self._live():
            self._notify_refused(cmd, out)
            return
        if self.run.cancel_requested:  # type: ignore[union-attr]
            _notify(cmd, out, True)  # already being cancelled: the request is satisfied
            return
        self._input("CancelRequested", {"reason": cmd.get("reason"), **_origin(cmd)}, at, out)

    def _cmd_TerminateWorkflow(self, cmd: dict, at: datetime, out: Outcome) -> None:
        if self.run_id is None or self.terminal is not None:
            return
        event = self._system("WorkflowTerminated", {"reason": cmd.get("reason")}, at)
        self.run = None
        out.events.append(event)

    def _current_attempt(self, cmd: dict) -> bool:
        """True if a result/failure/timeout is for the attempt in flight (not stale, not settled)."""
        aid = cmd["activity_id"]
        return (
            self._live() and cmd.get("run_id") == self.run_id and aid in self._attempts
            and aid not in self._awaiting_retry and self._attempts[aid] == cmd["attempt"]
        )

    def _cmd_CompleteActivity(self, cmd: dict, at: datetime, out: Outcome) -> None:
        if not self._current_attempt(cmd):
            return
        body = {"activity_id": cmd["activity_id"], "attempt": cmd["attempt"], "result": cmd["result"]}
        self._input("ActivityCompleted", body, at, out)

    def _cmd_FailActivity(self, cmd: dict, at: datetime, out: Outcome) -> None:
        if not self._current_attempt(cmd):
            return
        aid, attempt = cmd["activity_id"], cmd["attempt"]
        scheduled = self._scheduled[aid]
        error = {"error_type": cmd["error_type"], "message": cmd["message"], "traceback": cmd.get("traceback", "")}
        final = (
            cmd.get("non_retryable")
            or cmd["error_type"] in scheduled["non_retryable"]
            or (scheduled["tries"] and attempt >= scheduled["tries"])
        )
        if final:
            self._input("ActivityFailed", {"activity_id": aid, "attempt": attempt, **error}, at, out)
            return
        backoff = scheduled["backoff"] or [1.0]
        delay = backoff[min(attempt - 1, len(backoff) - 1)]
        retry_at = ms(at + timedelta(seconds=delay))
        out.events.append(self._system("ActivityAttemptFailed", {"activity_id": aid, "attempt": attempt, **error, "retry_at": retry_at}, at))

    def _cmd_HeartbeatActivity(self, cmd: dict, at: datetime, out: Outcome) -> None:
        if self._current_attempt(cmd):
            beat = (cmd["activity_id"], cmd["attempt"], at)
            out.heartbeats.append((*beat, True) if cmd.get("waiting") else beat)

    def _cmd_ResolveChild(self, cmd: dict, at: datetime, out: Outcome) -> None:
        if not self._live() or cmd.get("run_id") != self.run_id or ("child", cmd["child_ref"]) not in self.run._pending:  # type: ignore[union-attr]
            return
        if cmd["ok"]:
            self._input("ChildCompleted", {"child_ref": cmd["child_ref"], "result": cmd["result"]}, at, out)
        else:
            body = {"child_ref": cmd["child_ref"], "error_type": cmd.get("error_type") or "Error", "message": cmd.get("message") or ""}
            self._input("ChildFailed", body, at, out)

    def _cmd_FireTimer(self, cmd: dict, at: datetime, out: Outcome) -> None:
        kind = cmd.get("kind", "timer")
        if kind == "deadline":
            # The execution timeout: also ends a run that is blocked (no code to run is no reason to live on).
            if self.run_id is not None and self.terminal is None and cmd.get("run_id") == self.run_id:
                deadline = (self.history[0].get("timeout_at") if self.history else None) or ms(at)
                message = f"the execution timeout elapsed at {datetime.fromtimestamp(deadline / 1000, UTC).isoformat()}"
                ended = self._system("WorkflowTimedOut", {"message": message}, at)
                ended["status"] = "timed_out"
                self.run = None
                out.events.append(ended)
            return
        if not self._live() or cmd.get("run_id") != self.run_id:
            return
        if kind == "timer":
            if cmd["timer_id"] in self._open_timers:
                self._input("TimerFired", {"timer_id": cmd["timer_id"]}, at, out)
        elif kind == "retry":
            aid = cmd["timer_id"]
            if aid in self._awaiting_retry and self._attempts.get(aid) == cmd["attempt"] - 1:
                out.events.append(self._system("ActivityRetried", {"activity_id": aid, "attempt": cmd["attempt"]}, at))
        elif kind in ("timeout", "heartbeat"):
            probe = {"activity_id": cmd["timer_id"], "attempt": cmd["attempt"], "run_id": self.run_id}
            if self._current_attempt(probe):
                scheduled = self._scheduled[cmd["timer_id"]]
                what = (
                    f"start-to-close timeout of {scheduled['timeout']}s" if kind == "timeout"
                    else f"heartbeat timeout of {scheduled['heartbeat_timeout']}s"
                )
                failure = {
                    **probe, "error_type": "ActivityTimeout", "traceback": "",
                    "message": f"attempt {cmd['attempt']} of {scheduled['name']} exceeded its {what}",
                }
                self._cmd_FailActivity(failure, at, out)

    def _code_known(self, cmd: dict, out: Outcome) -> bool:
        """Whether this node has the workflow's code (a retry or reset replays it); rejects ``cmd`` if not."""
        try:
            workflow_class(self.workflow_type or "")
        except LookupError as exc:
            out.rejected.append((cmd, str(exc)))
            return False
        return True

    def _cmd_RetryWorkflow(self, cmd: dict, at: datetime, out: Outcome) -> None:
        """Reset a failed run: a new run replays the history up to the failing input, then goes on."""
        if self.terminal != "WorkflowFailed" or self.run_id is None or len(self.history) < 2:
            out.rejected.append((cmd, f"only a failed workflow can be retried; {self.workflow_id} is {self.status}"))
            return
        if not self._code_known(cmd, out):
            return
        self._restart(_good_prefix(self.history), cmd, at, out)

    def _cmd_ResetWorkflow(self, cmd: dict, at: datetime, out: Outcome) -> None:
        """A new run replays the current run's history up to and including ``seq``, then goes on live.

        The generalisation of retry: any event of the run may be the cut. A run still open ends
        ``terminated`` with reason "reset" first, so exactly one run of the id is open. A seq the run does
        not have changes nothing (the command is dead-lettered with the reason; clients check first).
        """
        if self.run_id is None:
            out.rejected.append((cmd, self._not_running()))
            return
        seq = cmd.get("seq")
        last = self.history[-1]["seq"] if self.history else 0
        if not isinstance(seq, int) or seq < 1 or not any(e["seq"] == seq for e in self.history):
            out.rejected.append((cmd, f"workflow {self.workflow_id} has no event {seq!r} to reset to (1..{last})"))
            return
        if not self._code_known(cmd, out):
            return
        keep = _prefix_to(self.history, seq)
        if self.terminal is None:
            ended = self._system("WorkflowTerminated", {"reason": "reset"}, at)
            ended["status"] = _TERMINAL_STATUS["WorkflowTerminated"]
            out.events.append(ended)
            self.run = None
        self._restart(keep, cmd, at, out)

    def _restart(self, keep: list[dict], cmd: dict, at: datetime, out: Outcome) -> None:
        """Begin a new run of this id from ``keep`` (a prefix of the current run's history)."""
        old_run = self.run_id
        self.run_id = str(uuid.uuid4())
        copied = []
        for event in keep:
            event = {**event, "run_id": self.run_id, "status": None, "copied": True}
            if event["type"] == "WorkflowStarted":
                event.update(continued_from=old_run, command_id=cmd["command_id"])
            copied.append(event)
        self.terminal = None
        new = self._load(copied)
        self.history = self.run.history if self.run is not None else copied
        out.events.extend(copied)
        out.events.extend(new)
        carried = {e["seq"] for e in copied if e["type"] == "ActivityScheduled"}
        for aid in self._attempts:
            if aid in carried and aid not in self._awaiting_retry:
                # Attempts in flight at the cut are dispatched again under the new run (those the code
                # decided just now, beyond the cut, are dispatched as new).
                out.events.append(self._system("ActivityRetried", {"activity_id": aid, "attempt": self._attempts[aid]}, at))


def continuation_start(workflow_id: str, started: dict, continued: dict, at: datetime) -> dict:
    """The StartWorkflow command of the run that ``continued`` (a WorkflowContinued) begins; ``started`` is
    the continuing run's WorkflowStarted. Its id is derived from the new run, so any copy is one start."""
    return {
        "type": "StartWorkflow", "command_id": f"{workflow_id}:{continued['new_run_id']}:continue",
        "workflow_id": workflow_id, "at": at, "workflow_type": started.get("workflow_type") or "",
        "input": continued["input"], "run_id": continued["new_run_id"], "continued_from": continued.get("run_id"),
        "parent_id": started.get("parent_id"), "parent_run_id": started.get("parent_run_id"),
        "parent_ref": started.get("parent_ref"),
        "timeout_at": started.get("timeout_at"),  # the execution timeout spans the whole chain
        "priority": started.get("priority"),  # as actors.engine.dispatch's StartWorkflow for a continuation carries it
        "_trace": started.get("trace"),  # the chain stays in one trace (actors.tracing)
    }


def _good_prefix(history: list[dict]) -> list[dict]:
    """History up to (not including) the failure, with unfinished activities back at their first attempt."""
    events = [e for e in history if e["type"] != "WorkflowFailed"]
    failures = [i for i, e in enumerate(events) if e["type"] in ("ActivityFailed", "ChildFailed")]
    if failures:
        events = events[: failures[-1]]
    return _carried(events)


def _prefix_to(history: list[dict], seq: int) -> list[dict]:
    """History up to and including ``seq``, without the run's end: the new run's code decides its own."""
    return _carried([e for e in history if e["seq"] <= seq and e["type"] not in TERMINAL])


def _carried(events: list[dict]) -> list[dict]:
    """What a new run keeps of ``events``: the code's inputs and decisions, unfinished activities back at
    their first attempt (they are dispatched again under the new run)."""
    completed = {e["activity_id"] for e in events if e["type"] == "ActivityCompleted"}
    return [
        e for e in events
        if e["type"] not in _NOT_CARRIED
        and not (e["type"] in ("ActivityAttemptFailed", "ActivityRetried") and e["activity_id"] not in completed)
    ]


def _freeze(command: dict) -> bytes:
    """A flat command as JSON bytes (bytes as base64, times as epoch ms), to be kept in CommandDeferred."""
    def default(value: Any) -> Any:
        if isinstance(value, bytes | bytearray):
            return {"$bytes": base64.b64encode(bytes(value)).decode()}
        if isinstance(value, datetime):
            return {"$ms": ms(value)}
        raise TypeError(f"cannot keep {type(value).__name__} in a deferred command")
    return json.dumps(command, default=default, separators=(",", ":")).encode()


def _thaw(data: bytes) -> dict:
    def hook(obj: dict) -> Any:
        if obj.keys() == {"$bytes"}:
            return base64.b64decode(obj["$bytes"])
        if obj.keys() == {"$ms"}:
            return datetime.fromtimestamp(obj["$ms"] / 1000, UTC)
        return obj
    return json.loads(data, object_hook=hook)


def _origin(cmd: dict) -> dict:
    """The sender of a command sent from workflow code (signal_external/cancel_external), kept on its event
    so the answer is derived from durable history (a restore sends it again)."""
    return {k: cmd.get(k) for k in ("origin_id", "origin_run_id", "origin_ref")}


def _notify(cmd: dict, out: Outcome, ok: bool, error_type: str | None = None, message: str | None = None) -> None:
    if cmd.get("origin_id"):
        out.notices.append((cmd, ok, error_type, message))


def _update_reply(done: dict) -> Reply:
    if done.get("error_type"):
        return Reply(done["request_id"], False, error_type=done["error_type"], message=done.get("message"))
    return Reply(done["request_id"], True, done["result"])


def _rejection(command: dict, exc: Exception) -> dict:
    return {"command": command["type"], "error_type": type(exc).__name__, "message": str(exc), "traceback": ""}


_TERMINAL_STATUS = {kind: str(status) for kind, status in BY_TERMINAL_EVENT.items()}


#: Command type → the ``WorkflowInstance`` method that handles it: every ``CommandType`` (a test checks).
COMMAND_HANDLERS: dict[str, Callable[[WorkflowInstance, dict, datetime, Outcome], None]] = {
    CommandType.PAUSE_WORKFLOW: WorkflowInstance._cmd_PauseWorkflow,
    CommandType.RESUME_WORKFLOW: WorkflowInstance._cmd_ResumeWorkflow,
    CommandType.START_WORKFLOW: WorkflowInstance._cmd_StartWorkflow,
    CommandType.SIGNAL_WORKFLOW: WorkflowInstance._cmd_SignalWorkflow,
    CommandType.RESOLVE_EXTERNAL: WorkflowInstance._cmd_ResolveExternal,
    CommandType.QUERY_WORKFLOW: WorkflowInstance._cmd_QueryWorkflow,
    CommandType.UPDATE_WORKFLOW: WorkflowInstance._cmd_UpdateWorkflow,
    CommandType.CANCEL_WORKFLOW: WorkflowInstance._cmd_CancelWorkflow,
    CommandType.TERMINATE_WORKFLOW: WorkflowInstance._cmd_TerminateWorkflow,
    CommandType.COMPLETE_ACTIVITY: WorkflowInstance._cmd_CompleteActivity,
    CommandType.FAIL_ACTIVITY: WorkflowInstance._cmd_FailActivity,
    CommandType.HEARTBEAT_ACTIVITY: WorkflowInstance._cmd_HeartbeatActivity,
    CommandType.RESOLVE_CHILD: WorkflowInstance._cmd_ResolveChild,
    CommandType.FIRE_TIMER: WorkflowInstance._cmd_FireTimer,
    CommandType.RETRY_WORKFLOW: WorkflowInstance._cmd_RetryWorkflow,
    CommandType.RESET_WORKFLOW: WorkflowInstance._cmd_ResetWorkflow,
}
