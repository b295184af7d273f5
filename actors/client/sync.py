"""The client: start and steer workflows through Kafka, read their state from the Postgres projections.

Writes go to ``<ns>.commands`` and return once the broker has them (acks=all), which is what "started" has
to mean for a durable engine. Reads come from the projections; ``result()`` waits on LISTEN/NOTIFY, not a
polling loop. Queries and updates travel as commands and are answered on ``<ns>.replies``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from actors import search as _search
from actors import tracing
from actors.client.pending import PendingWriter
from actors.engine import typed
from actors.engine.definitions import check_priority, seconds, workflow_class, workflow_type_name
from actors.engine.instance import IF_CLOSED, IF_RUNNING, utcnow
from actors.errors import (
    NotConfigured,
    QueryFailed,
    WorkflowAlreadyStarted,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowNotRunning,
    WorkflowTerminated,
    WorkflowTimedOut,
    check_not_compensated,
    limited_payload,
)
from eventstore import codec, fetchhold, payloads, settings, statuses
from eventstore import events as ev
from eventstore.backoff import Backoff
from eventstore.fencing import MessageFence
from eventstore.log import check_size, producer
from eventstore.topics import Topics, partition_for

if TYPE_CHECKING:
    from actors.schedules import ScheduleHandle

log = logging.getLogger(__name__)

#: Statuses after which ``result()`` has an answer (``continued`` is followed to the newest run).
TERMINAL = tuple(str(s) for s in statuses.ALL if s in statuses.FINAL)
#: How long result() waits for a workflow id to appear in the projections before calling it unknown.
_NOT_FOUND_GRACE = 5.0
#: How many ids a client remembers having started (to answer ``pending`` before the projector has them).
_REMEMBERED_STARTS = 10_000
#: How long an existence check before a command may wait for PostgreSQL, and how long after it did not
#: answer commands skip the check altogether (they need only Kafka): a signal while PostgreSQL is down
#: costs at most this once per backoff period, and a start never waits for it (actors.client.pending).
_CHECK_TIMEOUT = 0.5
_CHECK_BACKOFF = 5.0
#: How long a command the projections doubted (ended or unknown workflow) waits for the owning node to
#: confirm or refuse it (``Client._send_checked``).
_CONFIRM_TIMEOUT = 10.0
#: After the replies consumer could not be built (Kafka down), result() waits on the projection alone this long.
_REPLIES_RETRY_S = 30.0
#: How many recent workflow results the replies listener keeps for a result() called after they arrived.
_RECENT_RESULTS = 10_000
#: How long reads through a handle whose result() came from <ns>.replies wait for the projection to have it.
_SETTLE_S = 5.0


@dataclass(frozen=True)
class WorkflowSummary:
    id: str
    type: str
    status: str
    created_at: datetime | None
    updated_at: datetime | None
    search: dict[str, Any] = field(default_factory=dict)
    memo: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    parent_id: str | None = None
    closed_at: datetime | None = None

    @classmethod
    def from_row(cls, r: dict) -> WorkflowSummary:
        return cls(r["id"], r["type"], r["status"], r.get("created_at"), r.get("updated_at"), r.get("search") or {},
                   r.get("memo") or {}, r.get("run_id"), r.get("parent_id"), r.get("closed_at"))


class WorkflowPage(list):  # noqa: FURB189 - a list that also carries the cursor of the next page
    """One page of ``client.list``: a ``list[WorkflowSummary]`` with ``.next_cursor`` (None on the last page)."""

    def __init__(self, items: Any = (), next_cursor: str | None = None) -> None:
        super().__init__(items)
        self.next_cursor = next_cursor

#: Batch actions (docs/API.md §7).
BATCH_ACTIONS = ("cancel", "terminate", "signal", "pause", "resume")


class Client:
    """``Client(kafka=None, postgres=None, namespace=None)``; None falls back to METAMORPH_* variables."""

    def __init__(self, kafka: str | None = None, postgres: str | None = None, namespace: str | None = None) -> None:
        self.kafka = kafka or settings.get("METAMORPH_KAFKA")
        self.postgres = postgres or settings.get("METAMORPH_POSTGRES")
        self.namespace = namespace or settings.get("METAMORPH_NAMESPACE")
        self.topics = Topics(self.namespace)
        tracing.configure_from_env()
        self._producer: Any = None
        self._partitions: int | None = None
        self._pg_pool: Any = None
        self._replies: _Replies | None = None
        self._terminal_listener: _Terminals | None = None
        self._stream_listener: _Terminals | None = None
        self._lock = threading.Lock()
        # Ids this client started, with when and as what: the start is durable in Kafka, so until the
        # projector has the row these ids are `pending` (accepted), not unknown. Bounded, oldest dropped.
        self._started: OrderedDict[str, tuple[str, datetime]] = OrderedDict()
        self._pg_unanswered_until = 0.0
        self._pending = PendingWriter(self._record_pending)
        self._replies_failed_until = 0.0
        #: Ids whose outcome result() took from <ns>.replies, with until when reads wait for the projection.
        self._unsettled: OrderedDict[str, tuple[float, str | None]] = OrderedDict()

    # -- plumbing ----------------------------------------------------------------------------------------
    def _kafka(self) -> Any:
        with self._lock:
            if self._producer is None:
                try:
                    self._producer = producer(self.kafka, linger_ms=0, bootstrap_timeout_ms=5_000, max_block_ms=5_000)
                except KafkaError as exc:
                    raise ConnectionError(f"Kafka broker at {self.kafka} is unreachable: {exc}") from exc
                try:
                    parts = self._producer.partitions_for(self.topics.commands)
                except KafkaError:
                    parts = None
                if not parts:
                    raise NotConfigured(
                        f"namespace {self.namespace!r} has no topics on {self.kafka}; run `metamorph init` first"
                    )
                self._partitions = len(parts)
            return self._producer

    def _send(self, kind: str, workflow_id: str, command_id: str | None = None, **body: Any) -> None:
        kafka_producer = self._kafka()
        value = command_record(kind, workflow_id, command_id, **body)
        future = kafka_producer.send(
            self.topics.commands, key=workflow_id.encode(), value=value, partition=partition_for(workflow_id, self._partitions or 1),
            headers=tracing.outgoing_headers(),  # the trace context of the start/signal span (actors.tracing)
        )
        try:
            # Wait for this record's acknowledgement only (acks=all): concurrent callers share the
            # producer's batches instead of each flushing everyone's records.
            future.get(timeout=30)
        except KafkaError as exc:
            raise ConnectionError(f"Kafka did not accept the {kind} command: {exc}") from exc

    @staticmethod
    def _payload(what: str, args: tuple | list) -> bytes:
        """Encode user arguments, refusing here what a node could not decode or PostgreSQL could not store.

        The converter raises ``PayloadError`` (a ValueError) for lone surrogates and excessive nesting;
        anything above ``METAMORPH_MAX_PAYLOAD`` raises ``PayloadTooLarge``. Refused before any send, so a
        bad payload never reaches Kafka to be dead-lettered later.
        """
        return limited_payload(what, list(args))

    def _pool(self) -> Any:
        """A small connection pool, so concurrent callers (threads, the HTTP API) read in parallel."""
        with self._lock:
            if self._pg_pool is None:
                if not self.postgres:
                    raise NotConfigured("this call reads the projections: pass postgres= or set METAMORPH_POSTGRES")
                from projections.db import pool

                self._pg_pool = pool(self.postgres, self.namespace, min_size=1, max_size=8,
                                     connect_kwargs={"connect_timeout": 5}, timeout=5)
            return self._pg_pool

    def _with_conn(self, fn: Any, *args: Any, _timeout: float | None = None, **kwargs: Any) -> Any:
        """Run ``fn(conn, ...)`` on a pooled connection (waiting at most ``_timeout`` s for one, if given).

        Connections are not checked on checkout (a round trip per read); a read that fails on a dead one
        (PostgreSQL restarted) makes the pool check all its idle connections and is tried once more.
        """
        from psycopg_pool import PoolTimeout

        for attempt in (1, 2):
            try:
                with self._pool().connection(timeout=_timeout) as conn:
                    return fn(conn, *args, **kwargs)
            except PoolTimeout as exc:
                raise ConnectionError(f"PostgreSQL at {_redact(self.postgres or '')} is unreachable: {exc}") from exc
            except Exception as exc:
                if attempt == 2 or not _is_connection_error(exc):
                    if _is_connection_error(exc):
                        raise ConnectionError(f"PostgreSQL at {_redact(self.postgres or '')} is unreachable: {exc}") from exc
                    raise
                self._pool().check()  # drop every connection the restart killed, not just this one
        return None  # pragma: no cover - the loop always returns or raises

    def _read(self, fn_name: str, *args: Any, **kwargs: Any) -> Any:
        from projections import read

        if self._unsettled and fn_name != "get_workflow" and args and args[0] in self._unsettled:
            self._settle([args[0]])  # a read about an id whose result came from <ns>.replies
        return self._with_conn(getattr(read, fn_name), *args, **kwargs)

    def _reply_listener(self) -> _Replies:
        with self._lock:
            if self._replies is None:
                self._replies = _Replies(self.kafka, self.topics)
            return self._replies

    def _result_replies(self) -> _Replies | None:
        """The replies listener for result(), or None while Kafka cannot give one (result() then waits on
        the projection alone, as it always could); a failure is not retried for ``_REPLIES_RETRY_S``."""
        if self._replies is not None:
            return self._replies
        if time.monotonic() < self._replies_failed_until:
            return None
        try:
            return self._reply_listener()
        except Exception as exc:
            log.warning("result(): no replies consumer (%s); waiting on the projection instead", exc)
            self._replies_failed_until = time.monotonic() + _REPLIES_RETRY_S
            return None

    def _request(self, kind: str, workflow_id: str, name: str, args: tuple, timeout: float) -> Any:
        # No existence check against the projections first: the owning node knows every id of its
        # partition and answers an unknown one with WorkflowNotFound, which saves a read per query.
        data = self._payload(f"arguments of {kind} {name!r}", args)
        replies = self._reply_listener()
        request_id = str(uuid.uuid4())
        waiter = replies.expect(request_id)
        self._send(kind, workflow_id, request_id=request_id, name=name, input=data)
        reply = replies.wait(request_id, waiter, timeout)
        if reply is None:
            raise TimeoutError(f"no answer to {kind} {name!r} of {workflow_id} within {timeout}s")
        return _reply_value(workflow_id, kind, name, reply)

    def _terminals(self) -> _Terminals:
        with self._lock:
            if self._terminal_listener is None:
                if not self.postgres:
                    raise NotConfigured("result() reads the projections: pass postgres= or set METAMORPH_POSTGRES")
                self._terminal_listener = _Terminals(self.postgres, self.namespace)
            return self._terminal_listener

    def _unsettle(self, workflow_id: str, run_id: str | None = None) -> None:
        """result() gave ``workflow_id``'s outcome (of ``run_id``) from ``<ns>.replies``, maybe before the
        projection has it: this client's reads of that id wait for the projection (read your results)."""
        with self._lock:
            self._unsettled[workflow_id] = (time.monotonic() + _SETTLE_S, run_id)
            self._unsettled.move_to_end(workflow_id)
            while len(self._unsettled) > _RECENT_RESULTS:
                self._unsettled.popitem(last=False)

    def _settle(self, ids: list[str] | None = None) -> None:
        """Wait (on the projector's NOTIFY, up to ``_SETTLE_S`` after each result) until the projection has
        the outcomes result() took from ``<ns>.replies`` (``ids``, or all) -- that run's, not an earlier
        run's of a reused id: what result() said and the reads after it (describe, history, list, runs,
        the checks before a command) agree. Free when nothing is unsettled."""
        if not self._unsettled:
            return
        with self._lock:
            pending = [(w, d) for w, d in self._unsettled.items() if ids is None or w in ids]
        if not pending:
            return
        terminals = self._terminals()
        for workflow_id, (deadline, run_id) in pending:
            while time.monotonic() < deadline:
                wake = terminals.expect(workflow_id)
                try:
                    row = self._read("get_workflow", workflow_id)
                    if row is not None and row["status"] in statuses.FINAL and run_id in (None, row.get("run_id")):
                        break
                    wake.wait(max(0.0, min(0.5, deadline - time.monotonic())))
                finally:
                    terminals.forget(workflow_id, wake)
            with self._lock:
                self._unsettled.pop(workflow_id, None)

    def _streams(self) -> _Terminals:
        """The client's one LISTEN connection for stream readers (the projector's stream channel)."""
        with self._lock:
            if self._stream_listener is None:
                if not self.postgres:
                    raise NotConfigured("stream() reads the projections: pass postgres= or set METAMORPH_POSTGRES")
                from projections.db import notify_channel, stream_channel

                self._stream_listener = _Terminals(self.postgres, self.namespace,
                                                   stream_channel(notify_channel(self.namespace)))
            return self._stream_listener

    def _check_running(self, workflow_id: str, operation: str) -> bool:
        """Whether the projections say the workflow can take a command (True: send it as it is).

        False when they say it has ended or is unknown — which may only be lag (a run that a retry, a reset
        or ``if_closed="allow"`` began since, an id started by another process that the projector has not
        seen yet): the command then goes with a request id and the owning node decides (``_send_checked``).
        Never waits for PostgreSQL: an id this client started and the projector has not seen yet counts as
        ``pending``, and when PostgreSQL does not answer within ``_CHECK_TIMEOUT`` the command is sent
        unchecked (and for ``_CHECK_BACKOFF`` seconds after, without asking) — commands need only Kafka
        (issue 15); the owning node dead-letters a command for an id it does not know.
        """
        if not self.postgres or time.monotonic() < self._pg_unanswered_until:
            return True
        self._settle([workflow_id])
        try:
            status = self._require(workflow_id, _timeout=_CHECK_TIMEOUT)["status"]
        except WorkflowNotFound:
            return False
        except ConnectionError as exc:
            self._pg_unanswered_until = time.monotonic() + _CHECK_BACKOFF
            log.warning("sending a command to %s unchecked: %s", workflow_id, exc)
            return True
        return status not in statuses.FINAL

    def _send_checked(self, kind: str, workflow_id: str, operation: str, **body: Any) -> None:
        """Send a signal/cancel/terminate/pause/resume; WorkflowNotRunning / WorkflowNotFound if it can do nothing.

        The refusal is the owning node's (docs/API.md §14): when the projections doubt, the command carries a
        request id, the node answers before applying it, and only its answer refuses — so a projection that
        lags never refuses a workflow that is running. ``continued`` is not refused: the command goes to
        the run that continues it.
        """
        if self._check_running(workflow_id, operation):
            self._send(kind, workflow_id, **body)
            return
        replies = self._reply_listener()
        request_id = str(uuid.uuid4())
        waiter = replies.expect(request_id)
        self._send(kind, workflow_id, request_id=request_id, **body)
        reply = replies.wait(request_id, waiter, _CONFIRM_TIMEOUT)
        if reply is None:
            raise TimeoutError(
                f"no answer from the node owning {workflow_id} within {_CONFIRM_TIMEOUT}s to confirm {operation} "
                "(the command stays queued and is applied when a node owns the workflow)"
            )
        _refusal(workflow_id, operation, reply)

    def _require(self, workflow_id: str, _timeout: float | None = None) -> dict:
        self._settle([workflow_id])
        row = self._read("get_workflow", workflow_id, _timeout=_timeout)
        if row is not None:
            with self._lock:
                self._started.pop(workflow_id, None)  # projected: the row is the truth from now on
            return row
        with self._lock:
            started = self._started.get(workflow_id)
        if started is None:
            raise WorkflowNotFound(workflow_id)
        return _pending_row(workflow_id, *started)

    # -- the API -----------------------------------------------------------------------------------------
    def start(
        self,
        wf: type | str,
        *args: Any,
        id: str | None = None,  # noqa: A002 - API name
        if_running: str = "use_existing",
        if_closed: str = "use_existing",
        start_signal: str | None = None,
        start_signal_args: Any = (),
        start_delay: float | timedelta | None = None,
        timeout: float | timedelta | None = None,
        search: dict[str, Any] | None = None,
        memo: dict[str, Any] | None = None,
        decision_timeout: float = 30.0,
        priority: int | None = None,
    ) -> WorkflowHandle:
        """Start a workflow; returns once the start command is durably in Kafka (docs/API.md §3, §6).

        With a policy other than the defaults, the owning node decides (the one place that knows the id's
        state, so concurrent starts have one winner) and this waits for its answer on ``<ns>.replies`` (up
        to ``decision_timeout`` seconds): ``WorkflowAlreadyStarted`` when refused. ``start_signal`` travels
        in the same command (signal-with-start, atomic); ``start_delay`` and ``timeout`` become durable
        timers of the owner. ``priority`` (0 first .. 9; default 5) orders the run's activity tasks against
        others waiting on the same queue (docs/API.md §6, §9). ``search`` (indexed attributes: str, int, float,
        bool, ISO datetime string; a ValueError naming the key otherwise) and ``memo`` (any JSON object)
        are recorded in WorkflowStarted.
        """
        options = _start_options(if_running, if_closed, start_signal, start_signal_args, start_delay, timeout, priority)
        if tracing.enabled():
            with tracing.span(f"metamorph.start {workflow_type_name(wf)}", kind="producer",
                              attributes={"metamorph.workflow.type": workflow_type_name(wf), "metamorph.workflow.id": id}):
                return self._start(wf, args, id, options, decision_timeout, attributes=_attributes(search, memo))[0]
        return self._start(wf, args, id, options, decision_timeout, attributes=_attributes(search, memo))[0]

    def _start(
        self, wf: type | str, args: tuple, id: str | None, options: dict[str, Any], decision_timeout: float,  # noqa: A002
        _update: tuple[str, tuple, float] | None = None, attributes: dict[str, str] | None = None,
    ) -> tuple[WorkflowHandle, dict | None]:
        """Send the start; wait for the node's decision when it matters (and for a start update's answer).

        ``attributes`` (search/memo JSON) travel with the start but are not a policy: a plain start that
        carries them keeps the id-derived command id, so its re-sends still collapse.
        """
        update_reply = None
        type_name = workflow_type_name(wf)
        workflow_id = id or str(uuid.uuid4())
        data = self._payload(f"arguments of {type_name}", args)
        decide = "if_running" in options or "if_closed" in options or _update is not None
        # Every start with options is its own command (a second signal-with-start is a second signal); a
        # plain start keeps the id-derived command id that makes its re-sends collapse.
        command_id = f"start:{workflow_id}:{uuid.uuid4()}" if options or _update else f"start:{workflow_id}"
        options = {**options, **(attributes or {})}
        sent_at = time.monotonic()  # before the send: an outcome read after this is of this start or later
        if not decide:
            self._send("StartWorkflow", workflow_id, command_id, workflow_type=type_name, input=data, **options)
            run_id = None
        else:
            replies = self._reply_listener()
            request_id = str(uuid.uuid4())
            waiter = replies.expect(request_id)
            if _update is not None:
                update_id = str(uuid.uuid4())
                update_waiter = replies.expect(update_id)
                options.update(start_update=_update[0], start_update_input=self._payload(f"arguments of update {_update[0]!r}", _update[1]),
                               update_request_id=update_id)
            self._send("StartWorkflow", workflow_id, command_id, workflow_type=type_name, input=data,
                       request_id=request_id, **options)
            reply = replies.wait(request_id, waiter, decision_timeout)
            if reply is None:
                raise TimeoutError(f"no decision on the start of {workflow_id} within {decision_timeout}s (is a node running?)")
            run_id = (payloads.decode(reply["result"]) or {}).get("run_id") if reply["result"] else None
            if not reply["ok"]:
                if _update is not None:
                    replies.wait(update_id, update_waiter, 0)  # no update will run: stop listening for it
                if reply.get("error_type") == "WorkflowAlreadyStarted":
                    raise WorkflowAlreadyStarted(workflow_id, run_id, reply.get("message"))
                raise ValueError(reply.get("message") or reply.get("error_type") or "start refused")
            if _update is not None:
                update_reply = replies.wait(update_id, update_waiter, _update[2])
                if update_reply is None:
                    raise TimeoutError(f"no answer to update {_update[0]!r} of {workflow_id} within {_update[2]}s")
        # Started once Kafka has it: PostgreSQL is not needed (issue 15). This client answers `pending` for the
        # id until the projector has the row; other clients (the CLI, the HTTP API) see it sooner through a
        # `pending` row, written in the background (actors.client.pending), so a start never waits for PostgreSQL.
        with self._lock:
            self._started[workflow_id] = (type_name, utcnow())
            self._started.move_to_end(workflow_id)
            while len(self._started) > _REMEMBERED_STARTS:
                self._started.popitem(last=False)
        if self.postgres:
            self._pending.add(workflow_id, type_name, list(args))
        handle = WorkflowHandle(self, workflow_id, run_id, result_type_of(wf))
        handle._sent_at = sent_at
        return handle, update_reply

    def _record_pending(self, workflow_id: str, type_name: str, args: list) -> None:
        """Write a `pending` row (the PendingWriter's thread), unless PostgreSQL just failed to answer."""
        if time.monotonic() < self._pg_unanswered_until:
            return
        from projections.migrate import record_pending

        try:
            self._with_conn(record_pending, workflow_id, type_name, args, _timeout=_CHECK_TIMEOUT)
        except Exception as exc:  # the projector writes the row anyway; this only makes it visible sooner
            if isinstance(exc, ConnectionError):
                self._pg_unanswered_until = time.monotonic() + _CHECK_BACKOFF
            log.warning("could not record %s as pending: %s", workflow_id, exc)

    def update_with_start(
        self,
        wf: type | str,
        *args: Any,
        id: str,  # noqa: A002 - API name
        update: str,
        update_args: Any = (),
        timeout: float = 10,
        **start_options: Any,
    ) -> tuple[WorkflowHandle, Any]:
        """Start (under ``start_options``' policies) and run the update ``update`` on the open or new run,
        in one command; returns the handle and the update's result (docs/API.md §6)."""
        if not isinstance(update, str) or not update:
            raise ValueError("update must be an update handler name (a non-empty string)")
        if isinstance(update_args, str | bytes) or not isinstance(update_args, list | tuple):
            raise ValueError("update_args must be a list or tuple of arguments")
        decision_timeout = start_options.pop("decision_timeout", 30.0)
        attributes = _attributes(start_options.pop("search", None), start_options.pop("memo", None))
        options = _start_options(**{**_START_DEFAULTS, **start_options})
        handle, reply = self._start(wf, args, id, options, decision_timeout, (update, tuple(update_args), timeout),
                                    attributes=attributes)
        assert reply is not None
        return handle, _reply_value(id, "UpdateWorkflow", update, reply)

    def get(self, id: str, *, result_type: Any = None) -> WorkflowHandle:  # noqa: A002
        """A handle by id; ``result_type`` converts ``result()`` (typed payloads, e.g. a dataclass)."""
        return WorkflowHandle(self, id, result_type=result_type)

    # -- schedules (docs/API.md §8; the logic lives in schedules.py) -------------------------------------------
    def schedule(
        self, schedule_id: str, wf: type | str, *args: Any, cron: str | None = None, every: float | timedelta | None = None,
        timezone: str = "UTC", overlap: str = "skip", catchup_window: float | timedelta = 3600.0,
        jitter: float | timedelta = 0, start_at: datetime | None = None, end_at: datetime | None = None, paused: bool = False,
    ) -> ScheduleHandle:
        """Create (or, for an existing id, update) a schedule (docs/API.md §8): exactly one of ``cron`` (5 fields,
        in ``timezone``) or ``every`` (seconds). Bad input raises ValueError before anything is sent."""
        from actors.schedules import create

        return create(self, schedule_id, wf, args, paused=paused, cron=cron, every=every, timezone=timezone, overlap=overlap,
                      catchup_window=catchup_window, jitter=jitter, start_at=start_at, end_at=end_at)

    def get_schedule(self, schedule_id: str) -> ScheduleHandle:
        from actors.schedules import ScheduleHandle, check_schedule_id

        return ScheduleHandle(self, check_schedule_id(schedule_id))

    def list_schedules(self) -> list[dict]:
        """Every schedule not deleted, as ``describe()`` dicts, by id."""
        from actors.schedules import list_all

        return list_all(self)

    def list(
        self,
        status: str | None = None,
        type: str | None = None,  # noqa: A002 - API name
        limit: int = 100,
        *,
        search: dict[str, Any] | None = None,
        started_after: datetime | str | None = None,
        started_before: datetime | str | None = None,
        cursor: str | None = None,
    ) -> WorkflowPage:
        """One page of workflows, newest first (docs/API.md §7); ``.next_cursor`` fetches the next, None on the last.

        Keyset pagination on (created_at, id): a page does not shift when new workflows arrive. Filters:
        ``search={"customer": "c-7", "amount": (">", 100)}`` (operators ``=``, ``!=``, ``<``, ``<=``,
        ``>``, ``>=``, ``in``), ``started_after`` (inclusive) / ``started_before`` (exclusive) on the
        workflow's creation time. Unknown statuses or operators, and a cursor that is not the
        ``next_cursor`` of the same query, raise ValueError before anything is read.
        """
        return self._list_page(status, type, limit, search=search, started_after=started_after,
                               started_before=started_before, cursor=cursor)

    def _list_page(
        self, status: str | None, type: str | None, limit: int, *, search: dict[str, Any] | None = None,  # noqa: A002
        started_after: datetime | str | None = None, started_before: datetime | str | None = None,
        cursor: str | None = None, parent_id: str | None = None, offset: int = 0, raw: bool = False,
    ) -> WorkflowPage:
        """``list`` plus what the HTTP API also offers (``parent_id``, the older ``offset`` paging, ``raw``
        rows with every summary column)."""
        filters = _filters(status, type, search, started_after, started_before, parent_id)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, not {limit!r}")
        scope = _cursor_scope(filters)
        after = _search.decode_cursor(cursor, scope) if cursor is not None else None
        self._settle()  # results this client returned from <ns>.replies are in the projection first
        rows = self._read("list_workflows", limit=limit + 1, offset=offset, after=after, **filters)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = _search.encode_cursor(rows[-1]["created_at"], rows[-1]["id"], scope) if more else None
        return WorkflowPage(rows if raw else [WorkflowSummary.from_row(r) for r in rows], next_cursor)

    def count(
        self,
        status: str | None = None,
        type: str | None = None,  # noqa: A002 - API name
        *,
        search: dict[str, Any] | None = None,
        started_after: datetime | str | None = None,
        started_before: datetime | str | None = None,
    ) -> int:
        """How many workflows match the filters of ``list`` (all pages)."""
        filters = _filters(status, type, search, started_after, started_before, None)
        self._settle()
        return self._read("count_workflows", **filters)

    def batch(
        self,
        action: str,
        *,
        status: str | None = None,
        type: str | None = None,  # noqa: A002 - API name
        search: dict[str, Any] | None = None,
        reason: str | None = None,
        signal: str | None = None,
        args: Any = (),
    ) -> int:
        """Cancel, terminate, signal, pause or resume every open workflow matching the filters; returns how
        many were sent the command. Workflows that have already ended are skipped (not counted): acting on
        them would do nothing; so are, for the same reason, paused ones for ``"pause"`` and all but paused
        ones for ``"resume"``. ``signal`` names the signal of the ``"signal"`` action and ``args`` its arguments.
        """
        plan = _batch_plan(action, status, type, search, reason, signal, args)
        if plan is None:
            return 0
        kind, body, filters = plan
        kafka_producer = self._kafka()
        sent, after = 0, None
        while True:
            rows = self._read("list_workflows", limit=500, after=after, **filters)
            futures = [
                kafka_producer.send(self.topics.commands, key=r["id"].encode(), value=command_record(kind, r["id"], **body),
                                    partition=partition_for(r["id"], self._partitions or 1))
                for r in rows
            ]
            for future in futures:
                try:
                    future.get(timeout=30)
                except KafkaError as exc:
                    raise ConnectionError(f"Kafka did not accept a batch {action} command ({sent} sent): {exc}") from exc
                sent += 1
            if len(rows) < 500:
                return sent
            after = (datetime.fromisoformat(rows[-1]["created_at"]), rows[-1]["id"])

    def close(self) -> None:
        self._pending.close(2 * _CHECK_TIMEOUT + 1.0)  # before the pool goes: a short-lived process leaves its rows
        if self._replies is not None:
            self._replies.close()
        if self._terminal_listener is not None:
            self._terminal_listener.close()
        if self._stream_listener is not None:
            self._stream_listener.close()
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None
        if self._pg_pool is not None:
            self._pg_pool.close()
            self._pg_pool = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WorkflowHandle:
    """A workflow by id; follows continue-as-new to the newest run.

    A handle from a start that the node decided (``run_id``) knows the run it started: until the projector
    has that run, the handle reports it ``pending`` instead of the id's previous (perhaps ended) run, so
    ``result()`` of a replaced or re-run id waits for the new run rather than answering with the old one.
    """

    def __init__(self, client: Client, workflow_id: str, run_id: str | None = None, result_type: Any = None) -> None:
        self._client = client
        self.id = workflow_id
        #: What ``result()`` converts the output to (typed payloads): the started class's ``execute`` return
        #: annotation, or ``result_type=``; None returns the JSON value as it is.
        self.result_type = result_type
        self.run_id = run_id
        #: When this client sent the start command (monotonic), for handles start() returns: result() may
        #: then take an outcome the replies listener read before result() was called.
        self._sent_at: float | None = None
        #: The outcome result() took from <ns>.replies: what this handle reads until the projection has it.
        self._final: dict | None = None
        self._run_seen = run_id is None

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.id!r})"

    def describe(self) -> dict:
        self._settle()
        row = self._client._require(self.id)
        if not self._run_seen:
            if row.get("run_id") == self.run_id:
                self._run_seen = True
            elif self._client._read("run_known", self.id, self.run_id):
                # The projector committed our run after ``row`` was read: that row is an older run's.
                self._run_seen = True
                row = self._client._require(self.id)
            else:
                row = {**row, "run_id": self.run_id, "status": "pending", "output": None, "error_type": None,
                       "error_message": None, "error_traceback": None, "closed_at": None}
        return _with_final(row, self._final)

    def status(self) -> str:
        return self.describe()["status"]

    def running(self) -> bool:
        return self.status() not in statuses.TERMINAL

    def completed(self) -> bool:
        return self.status() == "completed"

    def failed(self) -> bool:
        return self.status() == "failed"

    def output(self) -> Any:
        row = self.describe()
        return row.get("output") if row["status"] == "completed" else None

    def result(self, timeout: float | None = None, *, result_type: Any = None) -> Any:
        """Wait for the end (any run of the continue-as-new chain) and return the output or raise.

        The owning node publishes the outcome on ``<ns>.replies`` once it is durable; the client's one shared
        replies consumer (reading from its end) hands it over, so the usual wait skips the projector and
        PostgreSQL. The projection is read once after subscribing (the workflow may have ended before the
        consumer listened), and the projector's NOTIFY, through the client's one shared LISTEN connection,
        still wakes the waiter, so a thousand waiting handles cost a thousand events, not connections.
        """
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        terminals = self._client._terminals()
        replies = self._client._result_replies()
        box: list[dict] = []
        while True:
            wake = terminals.expect(self.id)
            if replies is not None:
                replies.expect_result(self.id, wake, box, self.run_id, self._sent_at)
            try:
                if box:
                    self._final = _result_row(box[0])
                    self._client._unsettle(self.id, self._final.get("run_id"))
                    return typed_output(self.id, _outcome(self.id, self._final), result_type or self.result_type)
                try:
                    row = self.describe()
                except WorkflowNotFound:
                    # Started by another client, the projector may not have it yet: give it a moment.
                    if time.monotonic() - started > _NOT_FOUND_GRACE or (deadline is not None and time.monotonic() > deadline):
                        raise
                    wake.wait(0.05)
                    continue
                status = row["status"]
                if status in TERMINAL:
                    return typed_output(self.id, _outcome(self.id, row), result_type or self.result_type)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"workflow {self.id} is still {status} after {timeout}s")
                wake.wait(5.0 if remaining is None else min(remaining, 5.0))
                if box:
                    self._final = _result_row(box[0])
                    self._client._unsettle(self.id, self._final.get("run_id"))
                    return typed_output(self.id, _outcome(self.id, self._final), result_type or self.result_type)
            finally:
                if replies is not None:
                    replies.forget_result(self.id, wake)
                terminals.forget(self.id, wake)

    def stream(self, after: int = 0, timeout: float | None = None) -> Iterator[Any]:
        """Yield the items the workflow streams (``workflow.stream``), live, from position ``after`` on.

        Positions count from 1 per workflow id, across continue-as-new: the k-th item yielded has position
        ``after + k``, so a reader that reconnects passes the last one it saw. Ends when the workflow has
        ended (not merely continued) and every item was read; ``TimeoutError`` if ``timeout`` seconds pass
        first; ``WorkflowNotFound`` for an unknown id; ``ValueError`` for a bad ``after`` or ``timeout``.
        """
        from actors.client.streams import check_after, check_timeout, follow

        after, timeout = check_after(after), check_timeout(timeout)  # now, not at the first next()
        client = self._client
        iterator = follow(lambda wid, pos, n: client._read("stream_items", wid, pos, n), client._require,
                          client._streams(), self.id, after, timeout)
        return (item["value"] for item in iterator)

    def signal(self, name: str, *args: Any) -> None:
        """Send a signal; WorkflowNotRunning if the workflow has ended (nothing would handle it)."""
        data = self._client._payload(f"arguments of signal {name!r}", args)
        with tracing.span(f"metamorph.signal {name}", kind="producer", attributes={"metamorph.workflow.id": self.id}):
            self._client._send_checked("SignalWorkflow", self.id, f"signal {name!r}", name=name, input=data)

    def query(self, name: str, *args: Any, timeout: float = 10) -> Any:
        return self._client._request("QueryWorkflow", self.id, name, args, timeout)

    def update(self, name: str, *args: Any, timeout: float = 10) -> Any:
        """Run an update handler and return its result; WorkflowNotRunning (the owning node's answer) if
        the workflow has ended."""
        return self._client._request("UpdateWorkflow", self.id, name, args, timeout)

    def cancel(self) -> None:
        """Ask the workflow to cancel; WorkflowNotRunning if it has already ended."""
        self._client._send_checked("CancelWorkflow", self.id, "cancel", reason=None)

    def terminate(self, reason: str | None = None) -> None:
        """End the workflow now, running no more code; WorkflowNotRunning if it has already ended."""
        self._client._send_checked("TerminateWorkflow", self.id, "terminate", reason=reason)

    def retry(self, force: bool = False) -> None:
        """Reset a failed workflow: a new run replays history up to the failure and goes on from there.

        ``AlreadyCompensated`` (nothing sent) if its saga already ran its compensations, unless ``force``.
        """
        row = self._client._require(self.id)
        if row["status"] != "failed":
            raise ValueError(f"only a failed workflow can be retried; {self.id} is {row['status']}")
        if not force:
            check_not_compensated(self.id, self.history())
        self._client._send("RetryWorkflow", self.id)

    def pause(self, reason: str | None = None) -> None:
        """Stop the workflow taking steps until ``resume()``: signals, timers and activity results wait (kept
        in order), no new activity task is sent. WorkflowNotRunning if it has ended; pausing a paused
        workflow changes nothing."""
        if reason is not None and not isinstance(reason, str):
            raise ValueError("reason must be a string")
        self._client._send_checked("PauseWorkflow", self.id, "pause", reason=reason)

    def resume(self) -> None:
        """End a pause: what waited is applied in arrival order, then the workflow carries on."""
        self._client._send_checked("ResumeWorkflow", self.id, "resume")

    def reset(self, seq: int) -> None:
        """Start a new run that replays the current run's history up to and including event ``seq`` with
        today's code, then goes on live; the old run ends ``terminated`` with reason "reset".

        ValueError, and nothing is sent, for a seq the current run's history does not have.
        """
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise ValueError(f"seq must be a positive integer (an event of the run's history), not {seq!r}")
        events = self.history()
        if not any(e["seq"] == seq for e in events):
            last = max((e["seq"] for e in events), default=0)
            raise ValueError(f"workflow {self.id} has no event {seq} to reset to (its history has seq 1..{last})")
        self._client._send("ResetWorkflow", self.id, seq=seq)

    def history(self) -> list[dict]:
        self._settle()
        self._client._require(self.id)
        return self._client._read("history", self.id)

    def exceptions(self) -> list[dict]:
        self._settle()
        self._client._require(self.id)
        return self._client._read("exceptions", self.id)

    def _settle(self) -> None:
        """Reads through this handle after its result() came from ``<ns>.replies`` (``Client._settle``)."""
        if self._final is not None:
            self._client._settle([self.id])


def command_record(kind: str, workflow_id: str, command_id: str | None = None, **body: Any) -> bytes:
    """A command as it goes to ``<ns>.commands``: a CommandEnvelope, Avro single-object encoded, size-checked.

    The one place commands are built, for the Client and for the JSON ingress forwarder alike, so a start
    or signal that came in as JSON is the very record ``Client.start``/``signal`` would have sent.
    PayloadTooLargeError above the record limit.
    """
    envelope = ev.command(kind, workflow_id, command_id or str(uuid.uuid4()), utcnow(), **body)
    return check_size(f"{kind} command for {workflow_id}", codec.encode("metamorph.CommandEnvelope", envelope))


def _batch_plan(
    action: str, status: Any, type: str | None, search: dict[str, Any] | None,  # noqa: A002
    reason: str | None, signal: str | None, args: Any,
) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """``batch``'s arguments checked (ValueError) and turned into the command kind, its body and the list
    filters of the open workflows it goes to; None when no status asked for can be open (nothing to do).
    Shared by ``Client.batch`` and ``AsyncClient.batch``."""
    if action not in BATCH_ACTIONS:
        raise ValueError(f"unknown batch action {action!r}; expected one of: {', '.join(BATCH_ACTIONS)}")
    if action == "signal":
        if not isinstance(signal, str) or not signal:
            raise ValueError("batch action 'signal' needs signal= (the signal name)")
        if isinstance(args, str | bytes) or not isinstance(args, list | tuple):
            raise ValueError("args must be a list or tuple of the signal's arguments")
        body: dict[str, Any] = {"name": signal, "input": limited_payload(f"arguments of signal {signal!r}", list(args))}
        kind = "SignalWorkflow"
    elif signal is not None or args:
        raise ValueError(f"signal and args are only for the 'signal' action, not {action!r}")
    elif action == "resume":
        if reason is not None:
            raise ValueError("reason is not for the 'resume' action")
        kind, body = "ResumeWorkflow", {}
    else:
        kind = {"cancel": "CancelWorkflow", "terminate": "TerminateWorkflow", "pause": "PauseWorkflow"}[action]
        body = {"reason": reason}
    if reason is not None and not isinstance(reason, str):
        raise ValueError("reason must be a string")
    open_statuses = [str(s) for s in statuses.ALL if s not in statuses.FINAL]
    if action == "resume":
        open_statuses = [str(statuses.Status.PAUSED)]
    elif action == "pause":
        open_statuses.remove(str(statuses.Status.PAUSED))
    wanted = [s for s in (statuses.parse_many(status) if status is not None else open_statuses) if str(s) in open_statuses]
    if not wanted:
        return None
    return kind, body, _filters([str(s) for s in wanted], type, search, None, None, None)


def _pending_row(workflow_id: str, type_name: str, at: datetime) -> dict:
    """A ``workflows`` row as the projection will show it before the run starts: status ``pending``."""
    return {
        "id": workflow_id, "run_id": None, "type": type_name, "status": "pending", "input": None, "output": None,
        "error_type": None, "error_message": None, "error_traceback": None, "parent_id": None,
        "parent_run_id": None, "continued_from": None, "created_at": at, "updated_at": at, "started_at": None,
        "closed_at": None,
    }


def result_type_of(wf: type | str) -> Any:
    """The type ``handle.result()`` converts to for a start of ``wf`` (its ``execute`` return annotation)."""
    return typed.return_type(workflow_class(wf).execute) if isinstance(wf, type) else None


def typed_output(workflow_id: str, value: Any, result_type: Any) -> Any:
    return typed.convert(value, result_type, f"result of workflow {workflow_id}") if result_type is not None else value


def _result_row(result: dict) -> dict:
    """A WorkflowResult from ``<ns>.replies`` as the projection row ``_outcome`` reads: the output decoded
    exactly as the projector stores it and a read reveals it (JSON values, encrypted payloads decrypted)."""
    from projections.apply import payload
    from projections.read import reveal

    data = result.get("result")
    return {**result, "output": reveal(payload(bytes(data))) if data is not None else None}


def _with_final(row: dict, final: dict | None) -> dict:
    """``row`` as this handle reads it: once its result() took the outcome from ``<ns>.replies``, a row the
    projector has not brought up to date yet shows that outcome, so ``result()`` then ``status()`` agree."""
    if final is None or row.get("status") in statuses.FINAL:
        return row
    return {**row, **{k: final.get(k) for k in ("run_id", "status", "output", "error_type", "error_message", "error_traceback")}}


def _outcome(workflow_id: str, row: dict) -> Any:
    status = row["status"]
    if status == "completed":
        return row.get("output")
    if status == "failed":
        raise WorkflowFailed(workflow_id, row.get("error_type") or "Error", row.get("error_message") or "", row.get("error_traceback") or "")
    if status == "cancelled":
        raise WorkflowCancelled(workflow_id)
    if status == "timed_out":
        raise WorkflowTimedOut(workflow_id, row.get("error_message"))
    raise WorkflowTerminated(workflow_id, row.get("error_message"))


def _refusal(workflow_id: str, operation: str, reply: dict) -> None:
    """Raise what the owning node's answer to a confirmed command (``_send_checked``) says, if it refused."""
    if reply["ok"]:
        return
    if reply.get("error_type") == "WorkflowNotFound":
        raise WorkflowNotFound(workflow_id)
    status = (reply.get("message") or "").rsplit(" ", 1)[-1]  # "workflow <id> is <status>"
    raise WorkflowNotRunning(workflow_id, status, operation)


def _reply_value(workflow_id: str, kind: str, name: str, reply: dict) -> Any:
    """The result of a query/update reply, or the error the owning node answered, raised."""
    if not reply["ok"]:
        if reply.get("error_type") == "WorkflowNotFound":
            raise WorkflowNotFound(workflow_id)
        if reply.get("error_type") == "WorkflowNotRunning":
            # The owning node's answer, so no race with the projections: "workflow <id> is <status>".
            status = (reply.get("message") or "").rsplit(" ", 1)[-1]
            operation = f"{kind.removesuffix('Workflow').lower()} {name!r}"
            raise WorkflowNotRunning(workflow_id, status, operation)
        if reply.get("error_type") == "WorkflowAlreadyStarted":
            raise WorkflowAlreadyStarted(workflow_id, None, reply.get("message"))
        raise QueryFailed(reply.get("error_type") or "Error", reply.get("message") or "")
    return payloads.decode(reply["result"])


#: start()'s option defaults, for callers that pass options as a mapping (update_with_start, the test env).
_START_DEFAULTS: dict[str, Any] = {"if_running": "use_existing", "if_closed": "use_existing", "start_signal": None,
                                   "start_signal_args": (), "start_delay": None, "timeout": None, "priority": None}


def _start_options(
    if_running: str, if_closed: str, start_signal: str | None, start_signal_args: Any,
    start_delay: float | timedelta | None, timeout: float | timedelta | None, priority: int | None = None,
) -> dict[str, Any]:
    """The StartWorkflow fields for ``start()``'s options (only those not at their default), checked here so
    a typo fails at the caller with ValueError instead of travelling to a node."""
    if if_running not in IF_RUNNING:
        raise ValueError(f"unknown if_running policy {if_running!r}; expected one of: {', '.join(IF_RUNNING)}")
    if if_closed not in IF_CLOSED:
        raise ValueError(f"unknown if_closed policy {if_closed!r}; expected one of: {', '.join(IF_CLOSED)}")
    options: dict[str, Any] = {}
    if if_running != "use_existing":
        options["if_running"] = if_running
    if if_closed != "use_existing":
        options["if_closed"] = if_closed
    if start_signal is not None:
        if not isinstance(start_signal, str) or not start_signal:
            raise ValueError("start_signal must be a signal name (a non-empty string)")
        if isinstance(start_signal_args, str | bytes) or not isinstance(start_signal_args, list | tuple):
            raise ValueError("start_signal_args must be a list or tuple of arguments")
        options["start_signal"] = start_signal
        options["start_signal_input"] = limited_payload("start_signal_args", list(start_signal_args))
    elif start_signal_args:
        raise ValueError("start_signal_args given without start_signal")
    check_priority(priority)
    if priority is not None:
        options["priority"] = priority
    for name, value, zero_ok in (("start_delay", start_delay, True), ("timeout", timeout, False)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float | timedelta):
            raise ValueError(f"{name} must be seconds (a number) or a timedelta, not {type(value).__name__}")
        secs = seconds(value)
        if secs is None or secs != secs or secs in (float("inf"), float("-inf")) or secs < 0 or (secs == 0 and not zero_ok):
            raise ValueError(f"{name} must be {'zero or more' if zero_ok else 'more than zero'} seconds, not {value!r}")
        if secs > 0:
            options[name] = secs
    return options


def _attributes(search: dict[str, Any] | None, memo: dict[str, Any] | None) -> dict[str, str]:
    """The StartWorkflow fields for ``search`` and ``memo`` (JSON text), checked at the caller."""
    out = {}
    if search is not None:
        text = _search.dumps(_search.check_search(search))
        if text:
            out["search"] = text
    if memo is not None:
        text = _search.dumps(_search.check_memo(memo))
        if text:
            out["memo"] = text
    return out


def _when(name: str, value: datetime | str | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        if value is not None and value.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware")
        return value
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
        except ValueError:
            raise ValueError(f"{name} must be an ISO-8601 time, not {value!r}") from None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    raise ValueError(f"{name} must be a datetime or an ISO-8601 string, not {type(value).__name__}")


def _filters(
    status: Any, type: str | None, search: dict[str, Any] | None,  # noqa: A002
    started_after: datetime | str | None, started_before: datetime | str | None, parent_id: str | None,
) -> dict[str, Any]:
    """list/count/batch filters, checked (ValueError) before anything is read."""
    if status is not None:
        statuses.parse_many(status)
    if type is not None and not isinstance(type, str):
        raise ValueError("type must be a workflow type name")
    return {"status": status, "type": type, "search": _search.parse_filters(search),
            "started_after": _when("started_after", started_after),
            "started_before": _when("started_before", started_before), "parent_id": parent_id}


def _cursor_scope(filters: dict[str, Any]) -> list[Any]:
    """What a cursor is bound to: the filters of the query it pages."""
    status = filters["status"]
    status = sorted(str(s) for s in statuses.parse_many(status)) if status is not None else None
    return [status, filters["type"], filters["search"], filters["started_after"], filters["started_before"],
            filters["parent_id"]]


def _redact(conninfo: str) -> str:
    """Hide passwords in both URI and key=value connection strings before they reach an error message."""
    import re

    conninfo = re.sub(r"://([^:@/]+):[^@/]*@", r"://\1:***@", conninfo)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", conninfo, flags=re.IGNORECASE)


def _is_connection_error(exc: Exception) -> bool:
    import psycopg

    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


class _Replies:
    """Listens on every ``<ns>.replies`` partition from the moment it starts; hands replies to waiters."""

    def __init__(self, kafka: str, topics: Topics) -> None:
        import projections.apply
        import projections.read  # noqa: F401 - _result_row needs them: imported here, off an asyncio loop

        self._consumer = KafkaConsumer(
            bootstrap_servers=kafka, enable_auto_commit=False, fetch_max_wait_ms=50, allow_auto_create_topics=False
        )
        fetchhold.hold_empty_fetches(self._consumer, fetchhold.latency_hold_ms())  # no spin on noida-db
        parts = self._consumer.partitions_for_topic(topics.replies) or {0}
        tps = [TopicPartition(topics.replies, p) for p in sorted(parts)]
        self._consumer.assign(tps)
        self._consumer.seek_to_end(*tps)
        for tp in tps:
            self._consumer.position(tp)  # resolve "end" now, before any request is sent
        self._waiters: dict[str, tuple[threading.Event, list]] = {}
        #: result() waiters by workflow id: (wake, box); a WorkflowResult is appended to box, then wake.set().
        self._results: dict[str, list[tuple[Any, list]]] = {}
        #: The last results read, by workflow id (bounded): for a result() called after its reply arrived.
        self._recent: OrderedDict[str, tuple[dict, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # A zombie node's answer (to an update whose events are fenced out of history) is dropped.
        self.fence = MessageFence("client")
        self._thread = threading.Thread(target=self._run, name="metamorph-replies", daemon=True)
        self._thread.start()

    def expect(self, request_id: str) -> tuple[threading.Event, list]:
        waiter: tuple[threading.Event, list] = (threading.Event(), [])
        with self._lock:
            self._waiters[request_id] = waiter
        return waiter

    def wait(self, request_id: str, waiter: tuple[threading.Event, list], timeout: float) -> dict | None:
        try:
            return waiter[1][0] if waiter[0].wait(timeout) else None
        finally:
            with self._lock:
                self._waiters.pop(request_id, None)

    def expect_result(self, workflow_id: str, wake: Any, box: list, run_id: str | None = None,
                      since: float | None = None) -> None:
        """Until ``forget_result``: the next WorkflowResult of ``workflow_id`` is appended to ``box``, then
        ``wake.set()`` is called (on the listener thread).

        One read before this call (the workflow ended while the caller was still between start() and
        result()) is handed over at once if it is of ``run_id``, or was read after ``since`` (the monotonic
        time the caller's start command was sent): anything older may be an earlier run of a reused id, and
        is left to the projection."""
        with self._lock:
            self._results.setdefault(workflow_id, []).append((wake, box))
            seen = self._recent.get(workflow_id)
        if seen is None or box:
            return
        result, read_at = seen
        if (run_id is not None and result["run_id"] == run_id) or (since is not None and read_at >= since):
            box.append(result)
            wake.set()

    def forget_result(self, workflow_id: str, wake: Any) -> None:
        with self._lock:
            waiters = [w for w in self._results.get(workflow_id, ()) if w[0] is not wake]
            if waiters:
                self._results[workflow_id] = waiters
            else:
                self._results.pop(workflow_id, None)

    def _deliver_result(self, result: dict) -> None:
        with self._lock:
            waiters = list(self._results.get(result["workflow_id"], ()))
            self._recent[result["workflow_id"]] = (result, time.monotonic())
            self._recent.move_to_end(result["workflow_id"])
            while len(self._recent) > _RECENT_RESULTS:
                self._recent.popitem(last=False)
        for wake, box in waiters:
            if not box:
                box.append(result)
                wake.set()

    def _run(self) -> None:
        registry = codec.registry()
        while not self._stop.is_set():
            try:
                batch = self._consumer.poll(timeout_ms=100)
            except Exception:
                time.sleep(0.2)
                continue
            for records in batch.values():
                for rec in records:
                    if not self.fence.admit(rec.topic, rec.headers):
                        continue
                    try:
                        name, reply = registry.decode(rec.value)
                    except codec.DecodeError:
                        continue
                    if name == "metamorph.WorkflowResult":
                        self._deliver_result(reply)
                        continue
                    if name != "metamorph.Reply":
                        continue
                    with self._lock:
                        waiter = self._waiters.get(reply["request_id"])
                    if waiter is not None and not waiter[0].is_set():
                        waiter[1].append(reply)
                        waiter[0].set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._consumer.close()


class _Terminals:
    """One LISTEN connection per client; wakes every waiter of a workflow id when its run ends.

    A waiter re-reads the projection after waking, so a missed or spurious notification (reconnects, a
    continued run) costs at most one extra read, never a wrong answer.
    """

    def __init__(self, postgres: str, namespace: str, channel: str | None = None) -> None:
        self._postgres, self._namespace = postgres, namespace
        self._channel = channel  # None: the terminal-workflow channel; streams listen on theirs
        self._waiters: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metamorph-terminals", daemon=True)
        self._thread.start()
        self._listening.wait(5)

    def expect(self, workflow_id: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(workflow_id, set()).add(event)
        return event

    def forget(self, workflow_id: str, event: threading.Event) -> None:
        with self._lock:
            waiters = self._waiters.get(workflow_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[workflow_id]

    def _wake(self, workflow_id: str | None) -> None:
        with self._lock:
            events = [e for ws in self._waiters.values() for e in ws] if workflow_id is None else list(self._waiters.get(workflow_id, ()))
        for e in events:
            e.set()

    def _run(self) -> None:
        from psycopg import sql

        from projections.db import connect, notify_channel

        backoff = Backoff(0.1, 2.0)
        while not self._stop.is_set():
            try:
                with connect(self._postgres, self._namespace, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel or notify_channel(self._namespace))))
                    self._listening.set()
                    self._wake(None)  # anything that ended while we were not listening
                    backoff.reset()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._wake(note.payload)
            except Exception:
                self._stop.wait(backoff.next())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
