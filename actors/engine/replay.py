"""The deterministic driver of workflow code.

A run's ``execute`` coroutine is driven by this small loop of our own: no asyncio loop, no threads, no
clock. Awaiting a workflow call yields a :class:`WFuture`; issuing it records a *decision* (an event such
as ActivityScheduled) or, when the run is being replayed, checks it against the decision history recorded
at that point. *Inputs* (an activity result, a fired timer, a signal...) are applied one at a time and the
code runs to quiescence after each, which is exactly how it ran live, so replay reproduces the same
decisions in the same order. A decision that differs from history raises :class:`NondeterminismError`.

The driver knows events as plain dicts ``{"type", "seq", "at", **body}`` and knows nothing of Kafka.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import random as _random
import traceback as _traceback
import uuid as _uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from actors.engine import asyncio_mapping, typed
from actors.engine.definitions import (
    ActivityOptions,
    Workflow,
    activity_definition,
    activity_name,
    check_arguments,
    handler_for,
    seconds,
)
from actors.engine.runtime import DEFAULT_VERSION, ChildHandle, driving
from actors.errors import (
    ActivityFailed,
    ChildWorkflowFailed,
    NondeterminismError,
    VersionNotSupported,
    WorkflowCancelled,
    external_error,
    limited_payload,
)
from eventstore import payloads
from eventstore.events import EventType
from eventstore.statuses import BY_TERMINAL_EVENT

#: Events the code produces, matched one by one on replay.
DECISIONS: frozenset[EventType] = frozenset(
    {
        EventType.ACTIVITY_SCHEDULED, EventType.TIMER_STARTED, EventType.CHILD_STARTED,
        EventType.EXTERNAL_SIGNAL_SENT, EventType.SIDE_EFFECT_RECORDED, EventType.VERSION_MARKER,
        EventType.UPDATE_COMPLETED, EventType.WORKFLOW_COMPLETED, EventType.WORKFLOW_FAILED,
        EventType.WORKFLOW_CONTINUED, EventType.WORKFLOW_CANCELLED, EventType.TIMER_CANCELLED,
        EventType.ACTIVITY_CANCEL_REQUESTED, EventType.CHILD_CANCEL_REQUESTED, EventType.ATTRIBUTES_UPSERTED,
        EventType.STREAM_APPENDED, EventType.EXTERNAL_CANCEL_REQUESTED, EventType.SAGA_COMPENSATED,
    }
)
#: Events that feed the code; after each the code runs until it blocks.
INPUTS: frozenset[EventType] = frozenset(
    {
        EventType.WORKFLOW_STARTED, EventType.ACTIVITY_COMPLETED, EventType.ACTIVITY_FAILED, EventType.TIMER_FIRED,
        EventType.SIGNAL_RECEIVED, EventType.UPDATE_ACCEPTED, EventType.CHILD_COMPLETED, EventType.CHILD_FAILED,
        EventType.CANCEL_REQUESTED, EventType.EXTERNAL_RESOLVED,
    }
)
TERMINAL = frozenset(BY_TERMINAL_EVENT)
#: Events saying the code was not running (a type this node did not know, a replay mismatch). The code
#: never issued them, so a decision is matched against the recorded event after them.
NOT_CODE: frozenset[EventType] = frozenset({EventType.WORKFLOW_BLOCKED, EventType.WORKFLOW_UNBLOCKED})

class _Blocked(BaseException):
    """Thrown into workflow code after a nondeterminism is found; BaseException so user code can't swallow it."""


class _ContinueAsNew(BaseException):
    def __init__(self, args: tuple[Any, ...]) -> None:
        super().__init__("continue-as-new")
        self.args_ = args


class WFuture:
    """A deterministic future: resolved only by the driver, awaited only by workflow code."""

    __slots__ = ("_done", "_result", "_exc", "_callbacks", "_canceller", "__weakref__")

    def __init__(self) -> None:
        self._done = False
        self._result: Any = None
        self._exc: BaseException | None = None
        self._callbacks: list[Callable[[WFuture], None]] = []
        #: Stops what the future stands for (records e.g. TimerCancelled); returns True if the future is
        #: then settled by its owner (a task's coroutine sees CancelledError and decides its own outcome).
        self._canceller: Callable[[], bool] | None = None

    def done(self) -> bool:
        return self._done

    def set_result(self, value: Any) -> None:
        if not self._done:
            self._done, self._result = True, value
            self._fire()

    def set_exception(self, exc: BaseException) -> None:
        if not self._done:
            self._done, self._exc = True, exc
            self._fire()

    def _fire(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb(self)

    def add_done_callback(self, cb: Callable[[WFuture], None]) -> None:
        if self._done:
            cb(self)
        else:
            self._callbacks.append(cb)

    def cancel(self) -> bool:
        """Cancel what this future stands for, as ``asyncio.Future.cancel`` does; False if already done.

        A timer stops, an activity is told to stop (its late result is ignored), a child workflow is
        cancelled, a task gets ``CancelledError`` at its await point. Each is a recorded decision, taken
        at the same point of the code on every replay.
        """
        if self._done:
            return False
        canceller, self._canceller = self._canceller, None
        if canceller is not None and canceller():
            return True
        self.set_exception(asyncio.CancelledError())
        return True

    def cancelled(self) -> bool:
        return self._done and isinstance(self._exc, asyncio.CancelledError)

    def remove_done_callback(self, cb: Callable[[WFuture], None]) -> None:
        if cb in self._callbacks:
            self._callbacks.remove(cb)

    def result(self) -> Any:
        if self._exc is not None:
            raise self._exc
        return self._result

    def exception(self) -> BaseException | None:
        return self._exc

    def __await__(self) -> Any:
        if not self._done:
            yield self
        return self.result()


class _Task:
    """A coroutine stepped by the driver; its own future settles with the coroutine's outcome."""

    __slots__ = ("run", "coro", "future", "waiting_on", "_wake")

    def __init__(self, run: WorkflowRun, coro: Any) -> None:
        self.run = run
        self.coro = coro
        self.future = WFuture()
        self.waiting_on: WFuture | None = None
        self._wake = lambda fut: run._ready.append((self, None))
        self.future._canceller = self.cancel

    def step(self, exc: BaseException | None) -> None:
        self.waiting_on = None
        try:
            yielded = self.coro.throw(exc) if exc is not None else self.coro.send(None)
        except StopIteration as stop:
            self.future.set_result(stop.value)
            return
        except _Blocked:
            return
        except BaseException as error:  # the task's outcome, whatever it is, belongs to its awaiter
            self.future.set_exception(error)
            return
        if isinstance(yielded, WFuture):
            self.waiting_on = yielded
            yielded.add_done_callback(self._wake)
        else:
            bad = TypeError(
                f"workflow code awaited {yielded!r}; only workflow.* calls (and asyncio.sleep/gather) may be "
                "awaited inside a workflow, because anything else cannot be replayed"
            )
            self.run._ready.append((self, bad))

    def interrupt(self, exc: BaseException) -> None:
        """Throw ``exc`` in at the task's current await point (cancellation)."""
        if self.future.done():
            return
        if self.waiting_on is not None:
            self.waiting_on.remove_done_callback(self._wake)
            self.waiting_on = None
        ready = self.run._ready
        for i, (task, _exc) in enumerate(ready):
            if task is self:  # already woken (or not yet started): the exception replaces that step
                ready[i] = (self, exc)
                return
        ready.append((self, exc))

    def cancel(self) -> bool:
        """``asyncio.Task.cancel``: the awaited future is cancelled and CancelledError is thrown in at the
        await; the coroutine may catch it, so the task's future settles when the coroutine ends."""
        waiting = self.waiting_on
        self.interrupt(asyncio.CancelledError())
        if waiting is not None:
            waiting.cancel()
        return True


def _to_future(run: WorkflowRun, item: Any) -> WFuture:
    if isinstance(item, WFuture):
        return item
    if asyncio.iscoroutine(item):
        return run.spawn(item).future
    if hasattr(item, "__await__"):
        return run.spawn(_await(item)).future
    raise TypeError(f"workflow.all()/first() take awaitables, got {item!r}")


def _cancel_all(futures: Iterable[WFuture]) -> bool:
    for f in futures:
        f.cancel()
    return False


async def _await(item: Any) -> Any:
    return await item


class WorkflowRun:
    """One run of one workflow, fed history events, producing decision events.

    ``apply(event)`` for every recorded event (replay) and then for every new input (live). New decisions
    accumulate in ``new_events`` for the owner to append; ``status`` says what the run is blocked on.
    """

    def __init__(self, cls: type[Workflow], workflow_id: str, run_id: str, parent_id: str | None = None) -> None:
        self.cls = cls
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.parent_id = parent_id
        self.history: list[dict] = []
        self.new_events: list[dict] = []
        self.instance: Any = None
        self.started_at: datetime | None = None
        self.now: datetime = datetime.now(UTC)
        self.finished: str | None = None  # terminal event type once the run has ended
        self.blocked: NondeterminismError | None = None
        self.cancel_requested = False
        self._held = False  # the first step waits for start_delay
        self._cursor = 0  # index into history of the next recorded event not yet consumed
        self._replaying = False
        # A list, not a deque: it holds a task or two, and an empty deque is a 760-byte block per live workflow.
        self._ready: list[tuple[_Task, BaseException | None]] = []
        self._main: _Task | None = None
        self._pending: dict[tuple[str, int], WFuture] = {}  # ("activity"|"timer"|"child", ref) -> future
        self._pending_names: dict[int, str] = {}
        self._children: dict[int, str] = {}
        self._externals: dict[int, str] = {}  # seq of ExternalSignalSent/ExternalCancelRequested -> target id
        self._conditions: list[tuple[Callable[[], bool], WFuture]] = []
        self._updates: dict[str, WFuture] = {}
        self._applied_commands: dict[str, None] = {}  # a dict as a set: 64 bytes empty instead of 216
        self._rng: _random.Random | None = None
        #: Types awaited results are converted to (typed payloads), by pending key; None until one is.
        self._result_types: dict[tuple[str, int], Any] | None = None
        asyncio_mapping.install()  # workflow code may use asyncio.gather/sleep/wait/wait_for: map them now

    @property
    def type_name(self) -> str:
        return self.cls.name

    def continue_as_new(self, args: tuple[Any, ...]) -> NoReturn:
        """End this run (the driver records WorkflowContinued); raised through the code, never returns."""
        raise _ContinueAsNew(args)

    # -- feeding -----------------------------------------------------------------------------------
    def replay(self, history: Iterable[dict]) -> None:
        """Rebuild the run from its recorded history (a passivated or restored actor)."""
        self.history = list(history)
        self._replaying = True
        try:
            while self._cursor < len(self.history) and not self.blocked:
                event = self.history[self._cursor]
                kind = event["type"]
                if kind in DECISIONS:
                    self._nondeterminism(
                        f"history has {_describe(event)} at seq {event['seq']}, but the code did not issue it",
                        seq=event["seq"], recorded=_describe(event),
                    )
                    break
                self._cursor += 1
                self._absorb(event)
        finally:
            self._replaying = False

    def apply(self, event: dict) -> None:
        """Record a new input event (live) and run the code until it blocks again."""
        self.history.append(event)
        self._cursor = len(self.history)
        self._absorb(event)

    def next_seq(self) -> int:
        return (self.history[-1]["seq"] if self.history else 0) + 1

    def _absorb(self, event: dict) -> None:
        kind = event["type"]
        if event.get("command_id"):
            self._applied_commands[event["command_id"]] = None
        if kind in ("WorkflowTerminated", "WorkflowTimedOut"):
            self.finished = kind
            return
        if kind not in INPUTS or self.blocked or self.finished:
            return
        self.now = event["at"]
        try:
            INPUT_HANDLERS[kind](self, event)
            self._run_until_quiescent()
        except _Blocked:
            pass

    def has_applied(self, command_id: str) -> bool:
        return command_id in self._applied_commands

    # -- inputs ------------------------------------------------------------------------------------
    def _on_WorkflowStarted(self, event: dict) -> None:
        self.started_at = event["at"]
        self.parent_id = event.get("parent_id")
        args = payloads.decode(event["input"]) or []
        with self._active():
            try:
                args = typed.convert_arguments(self.cls.execute, args, skip=1)[0]
                self.instance = self.cls()
                coro = self.instance.execute(*args)
            except Exception as exc:  # bad arguments or a broken __init__ fail the run with the reason
                failed = WFuture()
                failed.set_exception(exc)
                self._finish(failed)
                return
        if event.get("start_signal"):
            # Signal-with-start: the handler sees the signal before execute takes its first step.
            method = handler_for(self.cls, "signal", event["start_signal"])
            if method is not None:
                self._call_handler(getattr(self.instance, method), payloads.decode(event.get("start_signal_input") or b"[]") or [])
        main = self._main = _Task(self, coro)
        if event.get("start_at"):
            # start_delay: the first step waits for the durable start timer (TimerFired of this event's seq).
            self._held = True
            gate = self._pending[("timer", event["seq"])] = WFuture()
            gate.add_done_callback(lambda _f: self._release(main))
        else:
            self._ready.append((main, None))

    def _release(self, main: _Task) -> None:
        self._held = False
        self._ready.append((main, None))

    def _resolve(self, key: tuple[str, int], value: Any = None, exc: BaseException | None = None) -> None:
        fut = self._pending.pop(key, None)
        if fut is None:
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)

    def _on_ActivityCompleted(self, event: dict) -> None:
        self._resolve_typed(("activity", event["activity_id"]), payloads.decode(event["result"]))

    def _resolve_typed(self, key: tuple[str, int], value: Any) -> None:
        """Resolve with ``value`` converted to the type the activity/child declares (typed payloads); a value
        that does not fit raises PayloadTypeError, naming the field, at the workflow's await."""
        tp = self._result_types.pop(key, None) if self._result_types else None
        if tp is None:
            self._resolve(key, value)
            return
        try:
            value = typed.convert(value, tp, f"result of {key[0]} {self._pending_names.get(key[1]) or self._children.get(key[1], '?')}")
        except typed.PayloadTypeError as exc:
            self._resolve(key, exc=exc)
            return
        self._resolve(key, value)

    def _on_ActivityFailed(self, event: dict) -> None:
        name = self._pending_names.get(event["activity_id"], "?")
        error = ActivityFailed(name, event["attempt"], event["error_type"], event["message"], event.get("traceback", ""))
        self._resolve(("activity", event["activity_id"]), exc=error)

    def _on_TimerFired(self, event: dict) -> None:
        self._resolve(("timer", event["timer_id"]), None)

    def _on_ChildCompleted(self, event: dict) -> None:
        self._resolve_typed(("child", event["child_ref"]), payloads.decode(event["result"]))

    def _on_ChildFailed(self, event: dict) -> None:
        child_id = self._children.get(event["child_ref"], "?")
        self._resolve(("child", event["child_ref"]), exc=ChildWorkflowFailed(child_id, event["error_type"], event["message"]))

    def _on_ExternalResolved(self, event: dict) -> None:
        """The target's answer to ``signal_external``/``cancel_external``: the awaiting code goes on, or gets
        the error (``WorkflowNotFound``, ``WorkflowNotRunning``, ...) at its await point."""
        key = ("external", event["ref"])
        if event["ok"]:
            self._resolve(key, None)
        else:
            target = self._externals.get(event["ref"], "?")
            self._resolve(key, exc=external_error(target, event.get("error_type"), event.get("message")))

    def _on_SignalReceived(self, event: dict) -> None:
        method = handler_for(self.cls, "signal", event["name"])
        if method is None:  # the node rejects unknown signals before recording them; stay safe on replay
            return
        self._call_handler(getattr(self.instance, method), payloads.decode(event["input"]) or [])

    def _on_UpdateAccepted(self, event: dict) -> None:
        method = handler_for(self.cls, "update", event["name"])
        fut = WFuture()
        self._updates[event["request_id"]] = fut
        request_id = event["request_id"]
        fut.add_done_callback(lambda f: self._update_done(request_id, f))
        if method is None:
            fut.set_exception(LookupError(f"no update handler named {event['name']!r}"))
            return
        outcome = self._call_handler(getattr(self.instance, method), payloads.decode(event["input"]) or [])
        if isinstance(outcome, WFuture):
            outcome.add_done_callback(lambda f: _settle_from(fut, f))
        elif isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)

    def _update_done(self, request_id: str, fut: WFuture) -> None:
        exc = fut.exception()
        body: dict[str, Any] = {"request_id": request_id, "result": b"", "error_type": None, "message": None}
        if exc is None:
            try:
                body["result"] = limited_payload("update result", fut.result())
            except Exception as error:
                body["error_type"], body["message"] = type(error).__name__, str(error)
        else:
            body["error_type"], body["message"] = type(exc).__name__, str(exc)
        self._decide("UpdateCompleted", body, match=("request_id",))

    def _on_CancelRequested(self, event: dict) -> None:
        self.cancel_requested = True
        if self._main is not None:
            # WorkflowCancelled is an asyncio.CancelledError too: code catching either sees the cancel.
            self._main.interrupt(WorkflowCancelled(self.workflow_id, event.get("reason")))
        # Activities in flight are cancelled with the workflow (docs/API.md §9): the owner tells their workers
        # (dispatch.py, from this same event, so no decision is recorded and histories written before this
        # existed replay unchanged) and ignores their late results; code awaiting one sees CancelledError.
        for key in sorted(k for k in self._pending if k[0] == "activity"):
            fut = self._pending.pop(key)
            fut._canceller = None
            fut.set_exception(asyncio.CancelledError())

    def _call_handler(self, fn: Callable[..., Any], args: list[Any]) -> Any:
        """Run a signal/update handler inside the workflow context; async handlers become tasks."""
        with self._active():
            try:
                result = fn(*typed.convert_call(fn, args))
            except Exception as exc:
                return exc
        if asyncio.iscoroutine(result):
            return self.spawn(result).future
        return result

    # -- the loop ----------------------------------------------------------------------------------
    def spawn(self, coro: Any) -> _Task:
        task = _Task(self, coro)
        self._ready.append((task, None))
        return task

    def _active(self) -> driving:
        return driving(self)

    def _run_until_quiescent(self) -> None:
        with self._active():
            while not self.blocked:
                while self._ready and not self.blocked:
                    task, exc = self._ready.pop(0)
                    task.step(exc)
                if self.blocked or not self._check_conditions():
                    break
            if not self.blocked and self.finished is None and self._main is not None and self._main.future.done():
                try:
                    self._finish(self._main.future)
                except _Blocked:
                    pass

    def _check_conditions(self) -> bool:
        """Resolve every satisfied wait(); True if any did (their tasks then need to run)."""
        progressed = False
        for cond, fut in list(self._conditions):
            if fut.done():
                self._conditions.remove((cond, fut))
                continue
            try:
                ok = bool(cond())
            except Exception as exc:  # a broken condition fails its waiter, like any other error
                self._conditions.remove((cond, fut))
                fut.set_exception(exc)
                progressed = True
                continue
            if ok:
                self._conditions.remove((cond, fut))
                fut.set_result(True)
                progressed = True
        return progressed

    def _finish(self, main: WFuture) -> None:
        exc = main.exception()
        if isinstance(exc, _ContinueAsNew):
            try:
                data = limited_payload("arguments of continue_as_new", list(exc.args_))
            except Exception as error:
                self._decide("WorkflowFailed", _error_body(error))
                return
            new_run = str(self.uuid4())
            self._decide("WorkflowContinued", {"new_run_id": new_run, "input": data})
        elif self.cancel_requested and (exc is None or isinstance(exc, asyncio.CancelledError)):
            self._decide("WorkflowCancelled", {"reason": None})
        elif exc is None:
            try:
                result = limited_payload("workflow result", main.result())
            except Exception as error:
                self._decide("WorkflowFailed", _error_body(error))
            else:
                self._decide("WorkflowCompleted", {"result": result})
        else:
            if isinstance(exc, VersionNotSupported):
                # The code refuses this history outright: record the failure after all of it rather than
                # calling the unmatched remainder nondeterminism.
                self._cursor = len(self.history)
            self._decide("WorkflowFailed", _error_body(exc))

    # -- decisions ---------------------------------------------------------------------------------
    def _decide(self, kind: str, body: dict, match: tuple[str, ...] = ()) -> dict:
        """Record a decision, or on replay check it against the recorded one and return that."""
        if self.blocked:
            raise _Blocked()
        if self._at_recorded():
            recorded = self.history[self._cursor]
            if recorded["type"] != kind or any(recorded.get(k) != body.get(k) for k in match):
                self._nondeterminism(
                    f"at seq {recorded['seq']} history has {_describe(recorded)} but the code issued "
                    f"{_describe({'type': kind, **body})}",
                    seq=recorded["seq"], recorded=_describe(recorded), issued=_describe({"type": kind, **body}),
                )
                raise _Blocked()
            self._cursor += 1
            if kind in TERMINAL:
                self.finished = kind
            return recorded
        event = {"type": kind, "seq": self.next_seq(), "at": self.now, **body}
        self.history.append(event)
        self._cursor = len(self.history)
        self.new_events.append(event)
        if kind in TERMINAL:
            self.finished = kind
        return event

    def _nondeterminism(self, message: str, seq: int | None = None, recorded: str | None = None, issued: str | None = None) -> None:
        if self.blocked is None:
            self.blocked = NondeterminismError(
                f"workflow {self.workflow_id} ({self.cls.__name__}): {message}",
                workflow_id=self.workflow_id, seq=seq, recorded=recorded, issued=issued,
            )

    def schedule_activity(self, ref: Callable[..., Any] | str, args: tuple, kwargs: dict, options: ActivityOptions | None) -> WFuture:
        name = activity_name(ref)
        definition = activity_definition(ref)
        queue = getattr(self.cls, "queue", None) or "default"
        if definition is not None:
            definition = definition.with_options(options)
            check_arguments(definition.fn, args, kwargs)
            if definition.queue != "default" or not getattr(self.cls, "queue", None):
                queue = definition.queue
            tries, backoff = definition.tries, definition.backoff
            timeout, hb, non_retryable = definition.timeout, definition.heartbeat_timeout, definition.non_retryable
        else:
            o = options or ActivityOptions()
            queue = o.queue or queue
            tries = o.tries or 0
            backoff = tuple(o.backoff or (1, 2, 5, 10, 15, 30, 60, 120))
            timeout, hb = seconds(o.timeout), seconds(o.heartbeat_timeout)
            non_retryable = tuple(c if isinstance(c, str) else c.__name__ for c in (o.non_retryable or ()))
        body = {
            "activity_id": 0, "name": name, "queue": queue, "input": limited_payload(f"arguments of activity {name!r}", list(args)),
            "kwargs": limited_payload(f"keyword arguments of activity {name!r}", kwargs), "tries": tries, "backoff": [float(b) for b in backoff],
            "timeout": timeout, "heartbeat_timeout": hb, "non_retryable": list(non_retryable),
            "key": options.key if options else None, "priority": options.priority if options else None,
        }
        body["activity_id"] = self._peek_seq()
        event = self._decide("ActivityScheduled", body, match=("name",))
        fut = WFuture()
        self._pending[("activity", event["seq"])] = fut
        self._pending_names[event["seq"]] = name
        result_type = typed.return_type(definition.fn) if definition is not None else None
        if result_type is not None:
            self._result_types = self._result_types or {}
            self._result_types[("activity", event["seq"])] = result_type
        fut._canceller = lambda: self._cancel_pending(("activity", event["seq"]), "ActivityCancelRequested", {"activity_id": event["seq"]})
        return fut

    def _cancel_pending(self, key: tuple[str, int], kind: str, body: dict) -> bool:
        """Record that a pending activity, timer or child is no longer wanted; its future is then cancelled."""
        if self._pending.pop(key, None) is not None and self.finished is None:
            self._decide(kind, body, match=tuple(body))
        return False

    def start_timer(self, duration: float | timedelta) -> WFuture:
        secs = seconds(duration) or 0.0
        fut = WFuture()
        if secs <= 0:
            fut.set_result(None)
            return fut
        fire_at = int((self.now.timestamp() + secs) * 1000)
        event = self._decide("TimerStarted", {"timer_id": self._peek_seq(), "fire_at": fire_at})
        self._pending[("timer", event["seq"])] = fut
        fut._canceller = lambda: self._cancel_pending(("timer", event["seq"]), "TimerCancelled", {"timer_id": event["seq"]})
        return fut

    def _peek_seq(self) -> int:
        return self.history[self._cursor]["seq"] if self._at_recorded() else self.next_seq()

    def _at_recorded(self) -> bool:
        """True if a recorded event is next to match (a replay); steps over events the code never issued."""
        while self._cursor < len(self.history) and self.history[self._cursor]["type"] in NOT_CODE:
            self._cursor += 1
        return self._cursor < len(self.history)

    def wait(self, condition: Callable[[], bool], timeout: float | timedelta | None) -> WFuture:
        fut = WFuture()
        if condition():
            fut.set_result(True)
            return fut
        self._conditions.append((condition, fut))
        timer = self.start_timer(timeout) if timeout is not None else None
        if timer is not None:
            timer.add_done_callback(lambda _t: fut.set_result(False))

        def cancel() -> bool:
            self._conditions[:] = [(c, f) for c, f in self._conditions if f is not fut]
            if timer is not None:
                timer.cancel()
            return False

        fut._canceller = cancel
        return fut

    def start_child(self, ref: type | str, args: tuple, child_id: str | None) -> ChildHandle:
        from actors.engine.definitions import workflow_class, workflow_type_name

        type_name = workflow_type_name(ref)
        if not isinstance(ref, str):
            check_arguments(workflow_class(ref).execute, (None, *args))
        seq = self._peek_seq()
        child_id = child_id or f"{self.workflow_id}/child-{seq}"
        event = self._decide(
            "ChildStarted",
            {"child_ref": seq, "child_id": child_id, "workflow_type": type_name,
             "input": limited_payload(f"arguments of child workflow {type_name!r}", list(args))},
            match=("workflow_type",),
        )
        fut = WFuture()
        self._pending[("child", event["seq"])] = fut
        self._children[event["seq"]] = event["child_id"]
        result_type = typed.return_type(workflow_class(ref).execute) if not isinstance(ref, str) else None
        if result_type is not None:
            self._result_types = self._result_types or {}
            self._result_types[("child", event["seq"])] = result_type
        body = {"child_ref": event["seq"], "child_id": event["child_id"]}
        fut._canceller = lambda: self._cancel_pending(("child", body["child_ref"]), "ChildCancelRequested", body)
        return ChildHandle(self, event["child_id"], fut)

    def signal_external(self, target_id: str, name: str, args: tuple, ack: bool = False) -> WFuture:
        """Record a signal to another workflow (the owner sends it once the event is durable).

        ``ack=False`` (a child handle's ``signal``, and every history recorded before acks existed) resolves
        at once; ``ack=True`` (``workflow.signal_external``) resolves when the target's owner answers with
        ``ExternalResolved`` — so a missing or ended target is an error the code can catch.
        """
        body = {"target_id": target_id, "name": name, "ack": ack,
                "input": limited_payload(f"arguments of signal {name!r}", list(args))}
        event = self._decide("ExternalSignalSent", body, match=("target_id", "name"))
        if not event.get("ack"):
            fut = WFuture()
            fut.set_result(None)
            return fut
        return self._await_external(event["seq"], target_id)

    def cancel_external(self, target_id: str, reason: str | None) -> WFuture:
        """Record a cancel request to another workflow; resolves when its owner has recorded it."""
        event = self._decide("ExternalCancelRequested", {"target_id": target_id, "reason": reason}, match=("target_id",))
        return self._await_external(event["seq"], target_id)

    def _await_external(self, seq: int, target_id: str) -> WFuture:
        fut = WFuture()
        self._pending[("external", seq)] = fut
        self._externals[seq] = target_id

        def forget() -> bool:  # the request stays sent; only this await stops waiting for the answer
            self._pending.pop(("external", seq), None)
            return False

        fut._canceller = forget
        return fut

    def side_effect(self, fn: Callable[[], Any]) -> WFuture:
        fut = WFuture()
        if self._at_recorded():
            event = self._decide("SideEffectRecorded", {"result": b""})
        else:
            value = fn()
            event = self._decide("SideEffectRecorded", {"result": limited_payload("side_effect result", value)})
        fut.set_result(payloads.decode(event["result"]))
        return fut

    def upsert_attributes(self, search: dict[str, Any] | None, memo: dict[str, Any] | None) -> None:
        """Record new search attributes / memo entries (a decision, so a replay matches it, not re-sends it).

        Only the kind of the step is matched on replay: attributes are not inputs of the code, so code
        that now computes other values replays the recorded ones without blocking.
        """
        from actors.search import check_memo, check_search, dumps

        body = {"search": dumps(check_search(search, removals=True)) if search is not None else None,
                "memo": dumps(check_memo(memo)) if memo is not None else None}
        if body["search"] is None and body["memo"] is None:
            return
        self._decide("AttributesUpserted", body)

    def mark_compensated(self, steps: int) -> None:
        """Record that the saga ran its compensations (``Workflow.compensate``), so a ``retry`` can warn.

        Tolerant like ``get_version``: a history recorded before the marker existed has no such event at
        this point, and replays on without it.
        """
        if self._at_recorded():
            if self.history[self._cursor]["type"] == "SagaCompensated":
                self._cursor += 1
            return
        self._decide("SagaCompensated", {"steps": steps})

    def stream(self, value: Any) -> None:
        """Record a stream item (a decision: on replay the recorded item is matched by kind, not re-sent).

        The value is encoded and size-checked here, so an oversize item raises ``PayloadTooLarge`` at the
        ``workflow.stream`` call in the code, which may catch it.
        """
        data = b"" if self._at_recorded() else limited_payload("stream item", value)
        self._decide("StreamAppended", {"value": data})

    def get_version(self, change_id: str, min_supported: int, max_supported: int) -> int:
        if self._at_recorded():
            recorded = self.history[self._cursor]
            if recorded["type"] == "VersionMarker" and recorded["change_id"] == change_id:
                self._cursor += 1
                version = recorded["version"]
            else:
                version = DEFAULT_VERSION  # history from before this call existed
        else:
            version = max_supported
            self._decide("VersionMarker", {"change_id": change_id, "version": version})
        if not min_supported <= version <= max_supported:
            raise VersionNotSupported(change_id, version, min_supported, max_supported)
        return version

    def all(self, items: Iterable[Any], return_exceptions: bool = False) -> WFuture:
        futures = [_to_future(self, item) for item in items]
        result = WFuture()
        if not futures:
            result.set_result([])
            return result
        remaining = [len(futures)]

        def settled(_f: WFuture) -> None:
            remaining[0] -= 1
            if remaining[0]:
                return
            if not return_exceptions:
                for f in futures:
                    if f.exception() is not None:
                        result.set_exception(f.exception())  # type: ignore[arg-type]
                        return
            result.set_result([f.exception() if f.exception() is not None else f.result() for f in futures])

        for f in futures:
            f.add_done_callback(settled)
        result._canceller = lambda: _cancel_all(futures)
        return result

    def first(self, items: Iterable[Any]) -> WFuture:
        """Settle with ``(index, value)`` of the first awaitable to finish (its exception if it failed) and
        cancel the others. Which one is first is decided by the order inputs are applied (ties: input
        order), so a replay of the history takes the same branch and records the same cancellations."""
        futures = [_to_future(self, item) for item in items]
        if not futures:
            raise ValueError("workflow.first() needs at least one awaitable")
        result = WFuture()
        decided = [False]

        def settled(index: int, f: WFuture) -> None:
            if decided[0]:
                return
            decided[0] = True  # before cancelling: the losers settle (cancelled) inside this call
            for j, other in enumerate(futures):
                if j != index:
                    other.cancel()
            exc = f.exception()
            if exc is not None:
                result.set_exception(exc)
            else:
                result.set_result((index, f.result()))

        for i, f in enumerate(futures):
            f.add_done_callback(functools.partial(settled, i))
            if decided[0]:
                break
        result._canceller = lambda: _cancel_all(futures)
        return result

    def wait_for(self, item: Any, timeout: float | timedelta | None) -> WFuture:
        """``asyncio.wait_for`` in workflow code: a race against a durable timer; on timeout the awaitable
        is cancelled and ``asyncio.TimeoutError`` raised."""
        fut = _to_future(self, item)
        if timeout is None:
            return fut
        raced = self.first([fut, self.start_timer(timeout)])
        result = WFuture()

        def done(r: WFuture) -> None:
            exc = r.exception()
            if exc is not None:
                result.set_exception(exc)
            elif r.result()[0] == 1:
                result.set_exception(TimeoutError())  # asyncio.TimeoutError since 3.11
            else:
                result.set_result(r.result()[1])

        raced.add_done_callback(done)
        result._canceller = lambda: _cancel_all([raced])
        return result

    def wait_set(self, items: Iterable[Any], timeout: float | timedelta | None, return_when: str) -> WFuture:
        """``asyncio.wait`` in workflow code: settles with ``(done, pending)`` sets of futures.

        With ``FIRST_COMPLETED`` it is ``first()``'s machinery: the pending ones are cancelled (docs/API.md §10),
        so a lost race stops its timers, activities and children. ``ALL_COMPLETED`` / ``FIRST_EXCEPTION``
        leave pending futures alone, as asyncio does; a ``timeout`` is a durable timer, stopped if not needed.
        """
        futures = list(dict.fromkeys(_to_future(self, item) for item in items))
        if not futures:
            raise ValueError("asyncio.wait() needs at least one awaitable")
        if return_when not in (asyncio.FIRST_COMPLETED, asyncio.FIRST_EXCEPTION, asyncio.ALL_COMPLETED):
            raise ValueError(f"invalid return_when value: {return_when!r}")
        timer = self.start_timer(timeout) if timeout is not None else None
        result = WFuture()
        finished = [False]

        def check(_f: WFuture | None = None) -> None:
            if finished[0]:
                return
            done = [f for f in futures if f.done()]
            if return_when == asyncio.FIRST_COMPLETED:
                ready = bool(done)
            elif return_when == asyncio.FIRST_EXCEPTION:
                ready = len(done) == len(futures) or any(f.exception() is not None and not f.cancelled() for f in done)
            else:
                ready = len(done) == len(futures)
            if not ready and not (timer is not None and timer.done()):
                return
            finished[0] = True
            pending = [f for f in futures if not f.done()]
            if timer is not None:
                timer.cancel()
            if return_when == asyncio.FIRST_COMPLETED:
                _cancel_all(pending)
            result.set_result((set(done), set(pending)))

        for f in futures:
            f.add_done_callback(check)
        if timer is not None:
            timer.add_done_callback(check)
        check()
        result._canceller = lambda: _cancel_all([*futures, *([timer] if timer is not None else [])])
        return result

    def rng(self) -> _random.Random:
        if self._rng is None:
            seed = int.from_bytes(hashlib.sha256(self.run_id.encode()).digest()[:8], "big")
            self._rng = _random.Random(seed)
        return self._rng

    def uuid4(self) -> _uuid.UUID:
        return _uuid.UUID(int=self.rng().getrandbits(128), version=4)

    # -- queries and status --------------------------------------------------------------------------
    def query(self, name: str, args: list[Any]) -> Any:
        method = handler_for(self.cls, "query", name)
        if method is None:
            raise LookupError(f"workflow type {self.cls.name} has no query named {name!r}")
        fn = getattr(self.instance, method)
        check_arguments(fn, args)
        args = typed.convert_call(fn, args)
        with self._active():
            result = fn(*args)
        if asyncio.iscoroutine(result):
            result.close()
            raise TypeError(f"query {name!r} is async; queries must be plain def and must not await")
        return result

    @property
    def status(self) -> str:
        if self.finished:
            return str(BY_TERMINAL_EVENT[self.finished])
        if self.blocked:
            return "blocked"
        if self._held:
            return "pending"  # accepted, code not yet run (start_delay)
        if any(kind in ("activity", "child") for kind, _ in self._pending):
            return "running"
        return "waiting"

    def pending_activities(self) -> list[int]:
        return [ref for kind, ref in self._pending if kind == "activity"]


def _describe(event: dict) -> str:
    kind = event["type"]
    detail = event.get("name") or event.get("change_id") or event.get("target_id") or event.get("workflow_type") or ""
    return f"{kind}({detail})" if detail else kind


def _error_body(exc: BaseException) -> dict:
    return {"error_type": type(exc).__name__, "message": str(exc), "traceback": "".join(_traceback.format_exception(exc))}




def _settle_from(target: WFuture, source: WFuture) -> None:
    """Give ``target`` the outcome of ``source`` (which is done)."""
    error = source.exception()
    if error is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())


#: Input event type → the ``WorkflowRun`` method that feeds it to the code: every one of ``INPUTS``.
INPUT_HANDLERS: dict[str, Callable[[WorkflowRun, dict], None]] = {
    EventType.WORKFLOW_STARTED: WorkflowRun._on_WorkflowStarted,
    EventType.ACTIVITY_COMPLETED: WorkflowRun._on_ActivityCompleted,
    EventType.ACTIVITY_FAILED: WorkflowRun._on_ActivityFailed,
    EventType.TIMER_FIRED: WorkflowRun._on_TimerFired,
    EventType.CHILD_COMPLETED: WorkflowRun._on_ChildCompleted,
    EventType.CHILD_FAILED: WorkflowRun._on_ChildFailed,
    EventType.EXTERNAL_RESOLVED: WorkflowRun._on_ExternalResolved,
    EventType.SIGNAL_RECEIVED: WorkflowRun._on_SignalReceived,
    EventType.UPDATE_ACCEPTED: WorkflowRun._on_UpdateAccepted,
    EventType.CANCEL_REQUESTED: WorkflowRun._on_CancelRequested,
}
