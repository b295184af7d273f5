"""Activity workers: consume ``<ns>.activities.<queue>``, run the function, report the outcome.

Sync functions run on pykka actor threads (a pool of ``concurrency`` actors), async ones on one shared event
loop, so I/O-bound activities need no thread each. Outcomes go back to the owning node as commands;
retries, backoff and timeouts are the owner's decisions, not ours, so a worker can crash at any point and
the owner simply schedules the attempt again. Offsets are committed only up to the oldest task still
running, so a crash re-delivers exactly the tasks whose outcome was not yet sent (at-least-once).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import logging
import os
import queue
import socket
import threading
import time
import traceback
import uuid
from collections import OrderedDict, defaultdict, deque
from dataclasses import dataclass
from typing import Any

import pykka
from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from actors import tracing
from actors.engine import typed
from actors.engine.definitions import (
    ActivityDefinition,
    QueueLimits,
    activities,
    check_arguments,
    queue_limits,
    share,
)
from actors.engine.instance import utcnow
from actors.errors import ActivityCancelled, NonRetryableError, PayloadTooLarge, limited_payload
from eventstore import codec, fetchhold, groups, metrics, payloads, settings
from eventstore import events as ev
from eventstore.backoff import Backoff
from eventstore.deadletter import DeadLetters
from eventstore.fencing import MessageFence
from eventstore.log import producer
from eventstore.topics import Topics, leave_group, partition_for

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ActivityInfo:
    workflow_id: str
    run_id: str
    workflow_type: str
    activity_id: int
    attempt: int
    name: str
    queue: str


@dataclass
class _Context:
    info: ActivityInfo
    worker: _QueueWorker
    heartbeat_timeout: float | None
    last_beat: float = 0.0
    #: Set (from another thread) when the owner cancels this activity; the next heartbeat() raises.
    cancelled: bool = False


_context: contextvars.ContextVar[_Context | None] = contextvars.ContextVar("metamorph_activity", default=None)


def activity_info() -> ActivityInfo:
    """Who is running: workflow id, activity id, attempt (1-based), name."""
    ctx = _context.get()
    if ctx is None:
        raise RuntimeError("activity_info() is only available inside an activity")
    return ctx.info


def heartbeat(details: Any = None) -> None:
    """Report progress; resets the heartbeat timeout. Throttled, so calling it in a tight loop is cheap.

    Raises ``ActivityCancelled`` once the workflow no longer wants the result (it lost a ``first`` race, or
    the workflow was cancelled or ended): the activity may clean up and stop; what it returns is ignored.
    """
    ctx = _context.get()
    if ctx is None:
        raise RuntimeError("heartbeat() is only available inside an activity")
    if ctx.cancelled:
        info = ctx.info
        raise ActivityCancelled(info.workflow_id, info.activity_id, info.name)
    now = time.monotonic()
    spacing = min(1.0, (ctx.heartbeat_timeout or 4.0) / 4)
    if now - ctx.last_beat < spacing:
        return
    ctx.last_beat = now
    info = ctx.info
    ctx.worker.send_command(
        info.workflow_id, "HeartbeatActivity", f"{info.workflow_id}:{info.run_id}:{info.activity_id}:{info.attempt}:hb:{uuid.uuid4().hex[:8]}",
        run_id=info.run_id, activity_id=info.activity_id, attempt=info.attempt, details=payloads.encode(details),
    )
    ctx.worker.producer.flush()


class _Outcome:
    __slots__ = ("tp", "offset", "task", "ok", "result", "error", "seconds", "sink", "gated", "beat_at", "trace")

    def __init__(self, tp: TopicPartition | None, offset: int, task: dict, sink: Any = None) -> None:
        self.tp, self.offset, self.task, self.sink = tp, offset, task, sink
        self.gated = False  # went through the flow-control gate (queue limits, key): holds a slot while running
        self.beat_at = 0.0  # last "still waiting" heartbeat sent for it (monotonic)
        self.ok = False
        self.result: bytes = b""
        self.error: tuple[str, str, str, bool] | None = None  # type, message, traceback, non-retryable
        self.seconds = 0.0
        self.trace: dict[str, str] | None = None  # the attempt span's context, sent with the outcome


def _run_sync(definition: ActivityDefinition, task: dict, ctx: _Context, out: _Outcome) -> None:
    if tracing.enabled():
        with _attempt_span(task, out):
            return _run_sync_untraced(definition, task, ctx, out)
    return _run_sync_untraced(definition, task, ctx, out)


@contextlib.contextmanager
def _attempt_span(task: dict, out: _Outcome) -> Any:
    """One attempt as a span, child of the step that scheduled it (the task's trace context)."""
    with tracing.span(
        f"metamorph.activity {task['name']}", task.get("_trace"), kind="consumer",
        attributes={"metamorph.workflow.id": task["workflow_id"], "metamorph.workflow.type": task["workflow_type"],
                    "metamorph.activity.name": task["name"], "metamorph.activity.id": task["activity_id"],
                    "metamorph.activity.attempt": task["attempt"], "metamorph.activity.queue": task["queue"]},
    ) as span:
        out.trace = tracing.current_carrier()
        yield span
        if out.error is not None:
            tracing.set_error(span, out.error[0], out.error[1])


def _run_sync_untraced(definition: ActivityDefinition, task: dict, ctx: _Context, out: _Outcome) -> None:
    token = _context.set(ctx)
    started = time.perf_counter()
    try:
        args, kwargs = _arguments(definition, task)
        _succeed(out, definition.fn(*args, **kwargs))
    except BaseException as exc:  # every failure is reported; the owner decides what happens next
        _fail(out, exc)
    finally:
        out.seconds = time.perf_counter() - started
        _context.reset(token)


async def _run_async(definition: ActivityDefinition, task: dict, ctx: _Context, out: _Outcome) -> None:
    if tracing.enabled():
        with _attempt_span(task, out):
            return await _run_async_untraced(definition, task, ctx, out)
    return await _run_async_untraced(definition, task, ctx, out)


async def _run_async_untraced(definition: ActivityDefinition, task: dict, ctx: _Context, out: _Outcome) -> None:
    _context.set(ctx)
    started = time.perf_counter()
    try:
        args, kwargs = _arguments(definition, task)
        coro = definition.fn(*args, **kwargs)
        timeout = task.get("timeout")
        _succeed(out, await (asyncio.wait_for(coro, timeout) if timeout else coro))
    except TimeoutError:
        out.error = (
            "ActivityTimeout",
            f"attempt {task['attempt']} of {task['name']} exceeded its start-to-close timeout of {task['timeout']}s", "", False,
        )
    except BaseException as exc:
        _fail(out, exc)
    finally:
        out.seconds = time.perf_counter() - started


def _arguments(definition: ActivityDefinition, task: dict) -> tuple[list[Any], dict[str, Any]]:
    args = payloads.decode(task["input"]) or []
    kwargs = payloads.decode(task.get("kwargs") or b"{}") or {}
    try:
        check_arguments(definition.fn, args, kwargs)
        # Typed payloads: parameters annotated with dataclasses/Pydantic models get those types.
        args, kwargs = typed.convert_arguments(definition.fn, args, kwargs)
    except TypeError as exc:
        raise _BadArguments(str(exc)) from None
    return args, kwargs


class _BadArguments(NonRetryableError):
    """Arguments that cannot be bound never will be: retrying would only repeat the error."""


def _succeed(out: _Outcome, value: Any) -> None:
    try:
        data = limited_payload("activity result", value)
    except PayloadTooLarge as exc:
        out.error = ("PayloadTooLarge", str(exc), "", True)
        return
    except payloads.PayloadError as exc:
        out.error = ("PayloadError", str(exc), "", True)
        return
    out.ok, out.result = True, data


def _fail(out: _Outcome, exc: BaseException) -> None:
    error_type = "TypeError" if isinstance(exc, _BadArguments) else type(exc).__name__
    out.error = (error_type, str(exc), "".join(traceback.format_exception(exc)), isinstance(exc, NonRetryableError))


class ActivityActor(pykka.ThreadingActor):
    """Runs sync activity functions one at a time on its own thread."""

    def __init__(self, done: queue.Queue) -> None:
        super().__init__()
        self.done = done

    def on_receive(self, message: Any) -> None:
        definition, task, ctx, out = message
        _run_sync(definition, task, ctx, out)
        ctx.worker.report(out)
        if out.tp is None:
            ctx.worker.local_done(self.actor_ref)
        else:
            self.done.put((out, self.actor_ref))


class _QueueWorker(threading.Thread):
    """One queue: a consumer, a pool of activity actors, and offset bookkeeping."""

    def __init__(self, worker: ActivityWorker, queue_name: str) -> None:
        super().__init__(name=f"metamorph-activities-{queue_name}", daemon=True)
        self.worker = worker
        self.queue_name = queue_name
        self.topics = worker.topics
        self.producer = worker.producer
        self.dead = DeadLetters(worker.producer, worker.topics.deadletter, "worker")
        self.done: queue.Queue = queue.Queue()
        self.idle: list[pykka.ActorRef] = []
        self.in_flight = 0
        self.pending: dict[TopicPartition, set[int]] = defaultdict(set)
        self.seen: dict[TopicPartition, int] = {}
        self._gauged = 0.0
        self._broker = groups.BrokerWatch("worker")
        self.started = threading.Event()
        self.instance_id = f"{worker.name}-activities-{queue_name}"
        self.local_in_flight = 0
        self._local_lock = threading.Lock()
        self.local_idle: list[pykka.ActorRef] = []
        self.gate = _Gate(self, queue_limits(queue_name))
        self.max_held = int(settings.get("METAMORPH_MAX_HELD_TASKS"))  # tasks held while they wait for a slot

    def send_command(self, workflow_id: str, kind: str, command_id: str, _trace: dict[str, str] | None = None, **body: Any) -> None:
        envelope = ev.command(kind, workflow_id, command_id, utcnow(), **body)
        self.producer.send(
            self.topics.commands, key=workflow_id.encode(), value=codec.encode("metamorph.CommandEnvelope", envelope),
            partition=partition_for(workflow_id, self.worker.partitions), headers=tracing.headers_of(_trace),
        )

    def run(self) -> None:
        self.idle = [ActivityActor.start(self.done) for _ in range(self.worker.concurrency)]
        self.local_idle = [ActivityActor.start(self.done) for _ in range(self.worker.concurrency)]
        local_actors = list(self.local_idle)
        self.started.set()
        backoff = Backoff()
        while not self.worker.stopping.is_set():
            try:
                self._consume()
            except Exception:
                log.exception("activity worker for queue %s failed; retrying in %.1fs", self.queue_name, backoff.peek())
                metrics.dependency_errors.labels("worker", "kafka").inc()
                self.worker.stopping.wait(backoff.next())
        for ref in self.idle + local_actors:
            ref.stop(block=False)

    def _consume(self) -> None:
        consumer = groups.member(
            self.worker.kafka,
            self.topics.activity_group(self.queue_name),
            self.instance_id,
            session_timeout_s=self.worker.session_timeout,
            max_poll_records=self.worker.concurrency,
            fetch_max_wait_ms=settings.get("METAMORPH_FETCH_WAIT_MS"),
        )
        consumer.subscribe([self.topics.activities(self.queue_name)], listener=_Rebalance(self))
        self.pending.clear()
        self.seen.clear()
        try:
            while not self.worker.stopping.is_set():
                # Tasks held by the gate are not running: they must not stop us from reading the tasks of
                # other keys and priorities behind them (up to a bound on what is held in memory).
                full = self.in_flight - self.gate.held >= self.worker.concurrency or self.gate.held >= self.max_held
                assigned = consumer.assignment()
                if full:
                    consumer.pause(*assigned)
                elif consumer.paused():
                    consumer.resume(*consumer.paused())
                wait = 0 if not self.done.empty() else (50 if self.in_flight else 100)
                wait = self.gate.poll_wait_ms(wait)
                for tp, records in groups.poll(consumer, wait).items():
                    for rec in records:
                        self._submit(tp, rec)
                self.gate.admit()
                self.gate.keep_alive()
                now = time.monotonic()
                if now - self._gauged > 1.0:
                    self._gauged = now
                    metrics.report_lag(consumer, "worker")
                    self._broker.check(consumer)
                self._drain(consumer, block=self.in_flight > 0 and full)
        finally:
            self._drain(consumer, block=False)
            self.gate.forget_held()  # the next consumer reads them again from the committed offsets
            metrics.forget_lag(consumer, "worker")
            consumer.close(autocommit=False)
            if self.worker.stopping.is_set():
                leave_group(self.worker.kafka, self.topics.activity_group(self.queue_name), self.instance_id)

    def _submit(self, tp: TopicPartition, rec: Any) -> None:
        self.seen[tp] = rec.offset
        if not self.worker.fence.admit(tp.topic, rec.headers):
            return  # a zombie's task: its attempt is not history (the real owner dispatches its own)
        try:
            task = codec.decode(rec.value, "metamorph.ActivityTask")
        except codec.DecodeError as exc:
            self.dead.add(tp.topic, tp.partition, rec.offset, f"undecodable activity task: {exc}", rec.key, rec.value, "undecodable")
            return
        if rec.headers:
            trace = tracing.carrier_of(rec.headers)
            if trace:
                task["_trace"] = trace
        self.pending[tp].add(rec.offset)
        self.in_flight += 1
        out = _Outcome(tp, rec.offset, task)
        if self.gate.limits is not None or task.get("key"):
            self.gate.hold(out)
        else:
            self._execute(out)

    def submit_local(self, task: dict, sink: Any) -> bool:
        """Run a task handed over by the node in this process (eager dispatch); False when saturated."""
        definition = activities().get(task["name"])
        sync = definition is not None and not definition.is_async
        with self._local_lock:
            if self.local_in_flight >= self.worker.concurrency or (sync and not self.local_idle):
                return False
            self.local_in_flight += 1
            actor = self.local_idle.pop() if sync else None
        self._execute(_Outcome(None, -1, task, sink), actor)
        return True

    def local_done(self, actor: pykka.ActorRef) -> None:
        with self._local_lock:
            self.local_idle.append(actor)

    def _execute(self, out: _Outcome, local_actor: pykka.ActorRef | None = None) -> None:
        task = out.task
        definition = activities().get(task["name"])
        if definition is None:
            known = ", ".join(sorted(n for n, d in activities().items() if d.queue == self.queue_name)) or "none"
            out.error = (
                "ActivityNotRegistered",
                f"no activity named {task['name']!r} on queue {self.queue_name!r} (this worker has: {known})", "", True,
            )
            self.report(out)
            if out.tp is not None:
                self.done.put((out, None))
            return
        key = _key(task)
        if self.worker.was_cancelled(key):
            self._drop(out, local_actor)
            return
        info = ActivityInfo(
            task["workflow_id"], task["run_id"], task["workflow_type"], task["activity_id"], task["attempt"], task["name"], task["queue"]
        )
        ctx = _Context(info, self, task.get("heartbeat_timeout"))
        self.worker.running(key, ctx)
        if definition.is_async:
            future = asyncio.run_coroutine_threadsafe(_run_async(definition, task, ctx, out), self.worker.loop)
            future.add_done_callback(lambda _f: self._finished_async(out))
        elif local_actor is not None:
            local_actor.tell((definition, task, ctx, out))
        elif self.idle:
            self.idle.pop().tell((definition, task, ctx, out))
        else:  # more sync tasks than actors (async ones share the count): start one more
            ActivityActor.start(self.done).tell((definition, task, ctx, out))

    def _drop(self, out: _Outcome, local_actor: pykka.ActorRef | None) -> None:
        """A task cancelled before it started: run nothing, report nothing (the owner expects nothing)."""
        task = out.task
        log.info("dropping cancelled task %s of %s (activity %s)", task["name"], task["workflow_id"], task["activity_id"])
        metrics.activity_attempts.labels(task["name"], self.queue_name, "cancelled").inc()
        if out.tp is not None:
            self.done.put((out, None))  # its offset may be committed
            return
        with self._local_lock:
            self.local_in_flight -= 1
        if local_actor is not None:
            self.local_done(local_actor)

    def _finished_async(self, out: _Outcome) -> None:
        self.report(out)
        if out.tp is not None:
            self.done.put((out, None))

    def _drain(self, consumer: KafkaConsumer, block: bool) -> None:
        finished: list[_Outcome] = []
        try:
            item = self.done.get(timeout=0.05) if block else self.done.get_nowait()
        except queue.Empty:
            item = None
        while item is not None:
            out, ref = item
            if ref is not None:
                self.idle.append(ref)
            finished.append(out)
            try:
                item = self.done.get_nowait()
            except queue.Empty:
                item = None
        if not finished:
            return
        self.producer.flush()  # outcomes were sent by the threads that finished them; make them durable
        commits = {}
        for out in finished:
            self.in_flight -= 1
            self.pending[out.tp].discard(out.offset)
            if out.gated:
                self.gate.release(out)
        self.gate.admit()
        for tp, pending in self.pending.items():
            nxt = min(pending) if pending else self.seen.get(tp, -1) + 1
            if nxt > 0:
                commits[tp] = OffsetAndMetadata(nxt, "", -1)
        # Dead letters acknowledged before the commit moves past their records; if one was not, this raises
        # and the consumer is replaced, so the records are read (and dead-lettered) again.
        self.dead.flush()
        try:
            consumer.commit(commits)
        except Exception as exc:  # rebalanced away: the next owner re-runs these tasks (at-least-once)
            log.warning("activity offset commit failed: %s", exc)

    def report(self, out: _Outcome) -> None:
        """Send the outcome now, from the finishing thread, so the owner hears of it without delay."""
        task = out.task
        wid, run, aid, attempt = task["workflow_id"], task["run_id"], task["activity_id"], task["attempt"]
        command_id = f"{wid}:{run}:{aid}:{attempt}:outcome"
        # Still sent when cancelled: the owner ignores it (the attempt is settled), and the local path
        # counts its slot back in the sender.
        cancelled = self.worker.finished(_key(task))
        outcome = "cancelled" if cancelled else "completed" if out.ok else "failed"
        metrics.activity_attempts.labels(task["name"], self.queue_name, outcome).inc()
        if attempt > 1:
            metrics.activity_retries.labels(task["name"]).inc()
        metrics.activity_duration.labels(task["name"], self.queue_name).observe(out.seconds)
        send = self.send_command if out.sink is None else self._local_command(out)
        if out.ok:
            send(wid, "CompleteActivity", command_id, out.trace, run_id=run, activity_id=aid, attempt=attempt, result=out.result)
        else:
            assert out.error is not None
            error_type, message, tb, non_retryable = out.error
            send(
                wid, "FailActivity", command_id, out.trace, run_id=run, activity_id=aid, attempt=attempt, error_type=error_type,
                message=message[:8000], traceback=tb[:32000], non_retryable=non_retryable,
            )

    def _local_command(self, out: _Outcome) -> Any:
        """Hand the outcome straight to the node that dispatched the task: no broker round trip."""

        def send(workflow_id: str, kind: str, command_id: str, trace: dict[str, str] | None = None, **body: Any) -> None:
            with self._local_lock:
                self.local_in_flight -= 1
            command = ev.flat_command(ev.command(kind, workflow_id, command_id, utcnow(), **body))
            if trace:
                command["_trace"] = trace
            out.sink(command)

        return send


#: How many tasks one queue worker holds in memory while they wait for a slot or their key; beyond it the
#: consumer pauses and further tasks wait in the topic (where, as for any unread task, the owner's
#: start-to-close timer already runs).
_DEFAULT_PRIORITY = 5


class _Gate:
    """Flow control of one queue worker (docs/API.md §9): cluster-wide queue limits, per-key exclusion, priority.

    The queue's limits are split by partition (``definitions.share``): this worker may run ``concurrency``
    share attempts at once and start at most ``rate`` share attempts in any window of the rate's unit
    (a sliding-window log rather than a token bucket, because the shares of a bucket's bursts add up to more
    than the limit in one window; the log's cannot). Shares are re-computed on every rebalance.

    Keyed tasks run one at a time per key, in arrival order: the first of a key waits here for a slot, the
    others wait behind it. Among tasks waiting for a slot, lower priority runs first (FIFO within one).
    A held task is not an attempt: it is sent no timeout, and the owner is told by "waiting" heartbeats,
    which move its start-to-close deadline (``PartitionStore.heartbeat``); one more such heartbeat when it
    starts makes the deadline count from its real start (one command per gated task with a timeout; tasks
    of unlimited, unkeyed queues never come here and send none). Everything here runs on the
    queue worker's consumer thread (rebalance callbacks included), so it needs no lock.
    """

    def __init__(self, worker: _QueueWorker, limits: QueueLimits | None) -> None:
        self.worker = worker
        self.limits = limits
        self.ready: list[tuple[int, int, _Outcome]] = []  # heap of (priority, arrival, task) free to start
        self.behind: dict[str, deque[_Outcome]] = {}  # key -> tasks waiting for the one holding the key
        self.running = 0
        self._running_keys: set[str] = set()
        self.starts: deque[float] = deque()  # start times inside the current rate window
        self.arrival = 0
        self.owned: set[int] = set()
        self.concurrency: int | None = None
        self.rate: int | None = None
        self._shares(set())

    def forget_held(self) -> None:
        self.revoked({out.tp.partition for out in self._held() if out.tp is not None})

    def _held(self) -> list[_Outcome]:
        return [entry[2] for entry in self.ready] + [o for q in self.behind.values() for o in q]

    @property
    def held(self) -> int:
        return len(self.ready) + sum(len(q) for q in self.behind.values())

    def _shares(self, owned: set[int]) -> None:
        self.owned = owned
        if self.limits is None:
            return
        routed = self.limits.routed_partitions(self.worker.worker.partitions)
        if self.limits.concurrency is not None:
            self.concurrency = share(self.limits.concurrency, owned, routed)
        if self.limits.rate is not None:
            self.rate = share(self.limits.rate, owned, routed)

    def assigned(self, partitions: set[int]) -> None:
        self._shares(partitions)
        if self.limits is not None:
            log.info(
                "activity worker %s owns partitions %s of queue %s: concurrency share %s of %s, rate share %s of %s per %gs",
                self.worker.worker.name, sorted(partitions), self.limits.name, self.concurrency, self.limits.concurrency,
                self.rate, self.limits.rate, self.limits.per,
            )

    def revoked(self, partitions: set[int]) -> None:
        """Tasks held for revoked partitions are forgotten: their offsets were never committed past them,
        so the partitions' next owner reads and runs them (running ones finish here, at-least-once)."""
        def gone(out: _Outcome) -> bool:
            return out.tp is not None and out.tp.partition in partitions

        dropped = [out for _, _, out in self.ready if gone(out)]
        self.ready = [entry for entry in self.ready if not gone(entry[2])]
        heapq.heapify(self.ready)
        for key, waiting in list(self.behind.items()):
            dropped.extend(out for out in waiting if gone(out))
            self.behind[key] = deque(out for out in waiting if not gone(out))
        for out in dropped:
            task_key = out.task.get("key")
            if task_key and task_key in self.behind and not self.behind[task_key] and not self._key_running(task_key):
                del self.behind[task_key]
            self.worker.in_flight -= 1
            self.worker.pending[out.tp].discard(out.offset)
        self._shares(self.owned - partitions)

    def _key_running(self, key: str) -> bool:
        return any(out.task.get("key") == key for _, _, out in self.ready) or key in self._running_keys

    def hold(self, out: _Outcome) -> None:
        out.gated = True
        key = out.task.get("key")
        if key:
            if key in self.behind:  # the key is taken (waiting for a slot or running): wait behind it
                self.behind[key].append(out)
                return
            self.behind[key] = deque()
        self._ready(out)

    def _ready(self, out: _Outcome) -> None:
        priority = out.task.get("priority")
        self.arrival += 1
        heapq.heappush(self.ready, (_DEFAULT_PRIORITY if priority is None else priority, self.arrival, out))

    def release(self, out: _Outcome) -> None:
        """``out`` finished (or was dropped): its slot is free, and the next task of its key may go."""
        self.running -= 1
        key = out.task.get("key")
        if key:
            self._running_keys.discard(key)
            waiting = self.behind.get(key)
            if waiting:
                self._ready(waiting.popleft())
            else:
                self.behind.pop(key, None)

    def _rate_room(self, now: float) -> bool:
        if self.rate is None or self.limits is None:
            return True
        while self.starts and self.starts[0] <= now - self.limits.per:
            self.starts.popleft()
        return len(self.starts) < self.rate

    def admit(self) -> None:
        """Start waiting tasks, lowest priority number first, while this worker's shares allow."""
        started = False
        while self.ready:
            if self.concurrency is not None and self.running >= self.concurrency:
                break
            if self.worker.in_flight - self.held >= self.worker.worker.concurrency:
                break  # --activity-concurrency still caps what runs in this process
            out = self.ready[0][2]
            cancelled = self.worker.worker.was_cancelled(_key(out.task))
            now = time.monotonic()
            if not cancelled and not self._rate_room(now):
                break
            heapq.heappop(self.ready)
            self.running += 1
            key = out.task.get("key")
            if key:
                self._running_keys.add(key)
            if not cancelled:
                if self.rate is not None:
                    self.starts.append(now)
                # Its start-to-close timeout counts from now. Told for every gated task, not only those that
                # waited here: the owner timed it from dispatch, and the time it sat unread in the topic
                # (a loaded worker's pickup delay) is no more part of the attempt than a wait for a slot.
                started = self._beat(out, flush=False) or started
            self.worker._execute(out)
        if started:
            self.worker.producer.flush()  # once for all started now: at the broker before they could finish

    def poll_wait_ms(self, wait: int) -> int:
        """Wake up when the rate window lets the next waiting task start."""
        if self.ready and self.rate is not None and self.limits is not None and self.starts and len(self.starts) >= self.rate:
            until = self.starts[0] + self.limits.per - time.monotonic()
            return max(0, min(wait, int(until * 1000) + 1))
        return wait

    def keep_alive(self) -> None:
        """Tell owners that held tasks are waiting, not running, before their timeouts could fire."""
        now = time.monotonic()
        sent = False
        for out in self._held():
            limits = [t for t in (out.task.get("timeout"), out.task.get("heartbeat_timeout")) if t]
            if not limits:
                continue
            if now - out.beat_at >= max(0.2, min(limits) / 3):
                self._beat(out, flush=False)
                sent = True
        if sent:
            self.worker.producer.flush()

    def _beat(self, out: _Outcome, flush: bool = True) -> bool:
        """Tell the owner the attempt has not started yet, or starts now: its start-to-close (and heartbeat)
        deadline moves to now + timeout. False when it has no timeout, so there is nothing to tell."""
        task = out.task
        if not (task.get("timeout") or task.get("heartbeat_timeout")):
            return False
        out.beat_at = time.monotonic()
        wid, run, aid, attempt = task["workflow_id"], task["run_id"], task["activity_id"], task["attempt"]
        self.worker.send_command(
            wid, "HeartbeatActivity", f"{wid}:{run}:{aid}:{attempt}:wait:{uuid.uuid4().hex[:8]}",
            run_id=run, activity_id=aid, attempt=attempt, details=payloads.encode(None), waiting=True,
        )
        if flush:
            self.worker.producer.flush()
        return True


class _Rebalance(ConsumerRebalanceListener):
    """Re-shares the queue's limits whenever the group moves partitions (called inside ``poll``)."""

    def __init__(self, worker: _QueueWorker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.worker.gate.revoked({tp.partition for tp in revoked})

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.worker.gate.assigned({tp.partition for tp in assigned})


def _key(task: dict) -> tuple[str, str, int]:
    return (task["workflow_id"], task["run_id"], task["activity_id"])


#: How many cancelled activity keys a worker remembers, to drop tasks that arrive after their cancel.
_REMEMBERED_CANCELS = 10_000


class ActivityWorker:
    """Activity actors for some queues of a namespace (``metamorph worker``, or inside a node)."""

    def __init__(
        self, kafka: str, namespace: str = "default", queues: tuple[str, ...] = ("default",), concurrency: int = 32,
        name: str | None = None,
        session_timeout: float | None = None,
    ) -> None:
        self.kafka = kafka
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.session_timeout = groups.session_timeout(session_timeout)  # failover time, see eventstore.groups
        self.topics = Topics(namespace)
        self.queues = tuple(queues)
        self.concurrency = max(1, concurrency)
        self.stopping = threading.Event()
        self.producer = producer(kafka)
        self.partitions = len(self.producer.partitions_for(self.topics.commands) or [0]) or 1
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self.loop.run_forever, name="metamorph-activities-loop", daemon=True)
        self._threads: list[_QueueWorker] = []
        self._by_queue: dict[str, _QueueWorker] = {}
        # Cancellation (docs/API.md §9): contexts of the attempts running here, and the recently cancelled keys
        # (bounded) so that a task read after its cancel is dropped instead of run.
        self._cancel_lock = threading.Lock()
        self._running: dict[tuple[str, str, int], list[_Context]] = {}
        self._cancelled: OrderedDict[tuple[str, str, int], None] = OrderedDict()
        self._cancels_ready = threading.Event()
        # Tasks and cancellations a zombie node sent (about events fenced out of history) are dropped.
        self.fence = MessageFence("worker")
        self._cancel_thread = threading.Thread(target=self._listen_cancels, name="metamorph-activity-cancels", daemon=True)

    def start(self) -> ActivityWorker:
        tracing.configure_from_env()
        self._loop_thread.start()
        self._cancel_thread.start()
        if not self._cancels_ready.wait(15):  # positioned before any task runs, so no cancel is missed
            log.warning("activity cancellations topic %s not readable yet; carrying on", self.topics.cancels)
        self._threads = [_QueueWorker(self, q) for q in self.queues]
        self._by_queue = {t.queue_name: t for t in self._threads}
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        for t in self._threads:
            t.join(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.producer.close(timeout=5)

    def try_local(self, value: bytes, sink: Any, headers: list[tuple[str, bytes]] | None = None) -> bool:
        """Run an encoded ActivityTask here if this worker serves its queue and has room (eager dispatch)."""
        task = codec.decode(value, "metamorph.ActivityTask")
        if headers:
            trace = tracing.carrier_of(headers)
            if trace:
                task["_trace"] = trace
        worker = self._by_queue.get(task["queue"])
        if worker is None or not worker.started.is_set():
            return False
        if task.get("key") or queue_limits(task["queue"]) is not None:
            # Flow control is the partition owner's (docs/API.md §9): a limited queue's or a keyed task goes
            # through the topic, so the worker that owns its partition counts it against its share.
            return False
        return worker.submit_local(task, sink)

    # -- cancellation --------------------------------------------------------------------------------------
    def cancel(self, workflow_id: str, run_id: str, activity_id: int) -> None:
        """The owner cancelled this activity: its running attempts see ActivityCancelled at their next
        heartbeat(), and a task for it that arrives later is dropped. Idempotent."""
        key = (workflow_id, run_id, activity_id)
        with self._cancel_lock:
            self._cancelled[key] = None
            while len(self._cancelled) > _REMEMBERED_CANCELS:
                self._cancelled.popitem(last=False)
            running = list(self._running.get(key, ()))
        for ctx in running:
            ctx.cancelled = True

    def was_cancelled(self, key: tuple[str, str, int]) -> bool:
        with self._cancel_lock:
            return key in self._cancelled

    def running(self, key: tuple[str, str, int], ctx: _Context) -> None:
        with self._cancel_lock:
            self._running.setdefault(key, []).append(ctx)
            ctx.cancelled = key in self._cancelled

    def finished(self, key: tuple[str, str, int]) -> bool:
        """Forget a finished attempt; True if it had been cancelled."""
        with self._cancel_lock:
            contexts = self._running.pop(key, None)
            if contexts and len(contexts) > 1:
                self._running[key] = contexts[1:]
            return key in self._cancelled

    def _listen_cancels(self) -> None:
        """Read ``<ns>.cancels`` from its end, for as long as the worker runs (no group: every worker reads
        every cancellation, and only the one running the activity acts on it)."""
        tp = TopicPartition(self.topics.cancels, 0)
        position: int | None = None
        backoff = Backoff()
        while not self.stopping.is_set():
            consumer = None
            try:
                consumer = KafkaConsumer(
                    bootstrap_servers=self.kafka, enable_auto_commit=False, client_id=f"metamorph-cancels-{self.name}",
                    fetch_max_wait_ms=settings.get("METAMORPH_FETCH_WAIT_MS"),
                )
                # Off the latency path: a long hold, so an idle reader does not spin on noida-db.
                fetchhold.hold_empty_fetches(consumer, fetchhold.background_hold_ms())
                consumer.assign([tp])
                if position is None:
                    consumer.seek_to_end(tp)
                    position = consumer.position(tp)
                else:
                    consumer.seek(tp, position)
                self._cancels_ready.set()
                backoff.reset()
                while not self.stopping.is_set():
                    for records in consumer.poll(timeout_ms=200).values():
                        for rec in records:
                            position = rec.offset + 1
                            if not self.fence.admit(rec.topic, rec.headers):
                                continue  # a zombie's: the activity may well be wanted by the real owner
                            try:
                                c = codec.decode(rec.value, "metamorph.ActivityCancel")
                            except codec.DecodeError as exc:
                                log.warning("undecodable activity cancellation at offset %d: %s", rec.offset, exc)
                                continue
                            self.cancel(c["workflow_id"], c["run_id"], c["activity_id"])
            except Exception:
                log.exception("reading activity cancellations failed; retrying in %.1fs", backoff.peek())
                self.stopping.wait(backoff.next())
            finally:
                if consumer is not None:
                    consumer.close()

    def local_in_flight(self) -> int:
        return sum(t.local_in_flight for t in self._threads)

