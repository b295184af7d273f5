"""``AsyncClient``: the ``Client`` surface for asyncio apps (FastAPI, aiohttp), with no call blocking the loop.

Design, and why:

- PostgreSQL (reads, the pending row, ``result()``): psycopg 3's native async — an
  ``AsyncConnectionPool`` for reads and one ``AsyncConnection`` per client that LISTENs for the projector's
  terminal notifications (``conn.notifies()``), waking asyncio events. The statements are the sync read
  side's own (``projections.aread`` runs ``projections.read``'s SQL), so both clients read identically.
- Kafka: kafka-python's producer, the same one (same config: acks=all, idempotent) the sync ``Client``
  builds. ``send()`` only appends to a batch that the producer's own IO thread ships, and returns a future;
  its completion is handed to the loop with ``call_soon_threadsafe``, so awaiting an acknowledgement costs
  the loop nothing. Not aiokafka: a second Kafka client would mean a second producer configuration to keep
  equal to the first (idempotence, size limits, partitioning) and a second compatibility risk with the
  Kafka 4 brokers we run, for no gain — the sends never block once the producer is connected.
- The two things kafka-python can only do blocking — bootstrapping the producer (metadata of
  ``<ns>.commands``) and positioning the ``<ns>.replies`` consumer — happen once per client, in a worker
  thread (``asyncio.to_thread``); the loop awaits them like any other IO.
- Query/update replies: the sync client's ``_Replies`` listener thread, whose waiters here resolve asyncio
  futures through ``call_soon_threadsafe``.

Validation and encoding (start options, search/memo, filters, cursors, payload limits, the command
envelope, reply and outcome decoding) are the sync client's functions, called, not copied.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from kafka.errors import KafkaError

from actors import search as _search
from actors import tracing
from actors.client import sync as _c
from actors.engine.definitions import workflow_type_name
from actors.engine.instance import utcnow
from actors.errors import (
    NotConfigured,
    WorkflowAlreadyStarted,
    WorkflowNotFound,
    WorkflowNotRunning,
    check_not_compensated,
)
from eventstore import payloads, settings, statuses
from eventstore.backoff import Backoff
from eventstore.topics import partition_for

log = logging.getLogger(__name__)

_ACK_TIMEOUT = 30.0


class AsyncClient:
    """``AsyncClient(kafka=None, postgres=None, namespace=None)``: ``Client``'s API, every call awaitable.

    Use as ``async with AsyncClient(...) as client`` or call ``await client.close()``. Connections are made
    lazily on first use, so constructing one (e.g. at app import time) does no IO.
    """

    def __init__(self, kafka: str | None = None, postgres: str | None = None, namespace: str | None = None) -> None:
        # The sync client holds the configuration and builds the Kafka producer and reply listener; it is
        # given no PostgreSQL, so nothing here can ever fall into one of its blocking reads.
        self._sync = _c.Client(kafka, None, namespace)
        self._sync.postgres = None
        self.kafka, self.namespace, self.topics = self._sync.kafka, self._sync.namespace, self._sync.topics
        self.postgres = postgres or settings.get("METAMORPH_POSTGRES")
        self._pg_pool: Any = None
        self._terminal_listener: _AsyncTerminals | None = None
        self._stream_listener: _AsyncTerminals | None = None
        self._replies: _c._Replies | None = None
        self._replies_failed_until = 0.0
        self._unsettled: OrderedDict[str, tuple[float, str | None]] = OrderedDict()  # as Client._unsettled
        self._setup = asyncio.Lock()
        self._started: OrderedDict[str, tuple[str, datetime]] = OrderedDict()
        self._pg_unanswered_until = 0.0
        self._pending_rows: set[asyncio.Task] = set()  # background pending-row writes (a start never waits)

    # -- plumbing ----------------------------------------------------------------------------------------
    async def _kafka(self) -> Any:
        if self._sync._producer is None:
            async with self._setup:
                if self._sync._producer is None:
                    await asyncio.to_thread(self._sync._kafka)  # bootstrap + metadata: blocking, once
        return self._sync._producer

    async def _acked(self, future: Any, what: str) -> None:
        """Await a kafka-python send future without blocking: its IO thread resolves an asyncio future."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def settle(value: Any, error: BaseException | None) -> None:
            if not done.done():
                done.set_exception(error) if error is not None else done.set_result(value)

        future.add_callback(lambda md: loop.call_soon_threadsafe(settle, md, None))
        future.add_errback(lambda exc: loop.call_soon_threadsafe(settle, None, exc))
        try:
            await asyncio.wait_for(done, _ACK_TIMEOUT)
        except (KafkaError, TimeoutError) as exc:
            raise ConnectionError(f"Kafka did not accept the {what}: {exc}") from exc

    async def _send(self, kind: str, workflow_id: str, command_id: str | None = None, **body: Any) -> None:
        producer = await self._kafka()
        value = _c.command_record(kind, workflow_id, command_id, **body)
        future = producer.send(self.topics.commands, key=workflow_id.encode(), value=value,
                               partition=partition_for(workflow_id, self._sync._partitions or 1),
                               headers=tracing.outgoing_headers())  # the start/signal span's context
        await self._acked(future, f"{kind} command")

    async def _pool(self) -> Any:
        if self._pg_pool is None:
            if not self.postgres:
                raise NotConfigured("this call reads the projections: pass postgres= or set METAMORPH_POSTGRES")
            async with self._setup:
                if self._pg_pool is None:
                    from projections import aread

                    self._pg_pool = await aread.pool(self.postgres, self.namespace, min_size=1, max_size=8,
                                                     connect_kwargs={"connect_timeout": 5}, timeout=5)
        return self._pg_pool

    async def _read(self, fn_name: str, *args: Any, _timeout: float | None = None, **kwargs: Any) -> Any:
        """``Client._read`` on the async pool: one retry after a dead connection (PostgreSQL restarted)."""
        from psycopg_pool import PoolTimeout

        from projections import aread

        if self._unsettled and fn_name != "get_workflow" and args and args[0] in self._unsettled:
            await self._settle([args[0]])  # a read about an id whose result came from <ns>.replies
        fn = getattr(aread, fn_name)
        for attempt in (1, 2):
            pool = await self._pool()
            try:
                async with pool.connection(timeout=_timeout) as conn:
                    return await fn(conn, *args, **kwargs)
            except PoolTimeout as exc:
                raise ConnectionError(f"PostgreSQL at {_c._redact(self.postgres or '')} is unreachable: {exc}") from exc
            except Exception as exc:
                if attempt == 2 or not _c._is_connection_error(exc):
                    if _c._is_connection_error(exc):
                        raise ConnectionError(f"PostgreSQL at {_c._redact(self.postgres or '')} is unreachable: {exc}") from exc
                    raise
                await pool.check()
        return None  # pragma: no cover

    async def _reply_listener(self) -> _c._Replies:
        if self._replies is None:
            async with self._setup:
                if self._replies is None:
                    self._replies = await asyncio.to_thread(_c._Replies, self.kafka, self.topics)
        return self._replies

    async def _result_replies(self) -> _c._Replies | None:
        """``Client._result_replies`` on asyncio: the shared replies listener, or None while Kafka cannot
        give one (result() then waits on the projection alone; not retried for ``_REPLIES_RETRY_S``)."""
        if self._replies is not None:
            return self._replies
        if time.monotonic() < self._replies_failed_until:
            return None
        try:
            return await self._reply_listener()
        except Exception as exc:
            log.warning("result(): no replies consumer (%s); waiting on the projection instead", exc)
            self._replies_failed_until = time.monotonic() + _c._REPLIES_RETRY_S
            return None

    async def _terminals(self) -> _AsyncTerminals:
        if self._terminal_listener is None:
            if not self.postgres:
                raise NotConfigured("result() reads the projections: pass postgres= or set METAMORPH_POSTGRES")
            async with self._setup:
                if self._terminal_listener is None:
                    listener = _AsyncTerminals(self.postgres, self.namespace)
                    await listener.start()
                    self._terminal_listener = listener
        return self._terminal_listener

    async def _streams(self) -> _AsyncTerminals:
        """The client's one async LISTEN connection for stream readers (the projector's stream channel)."""
        if self._stream_listener is None:
            if not self.postgres:
                raise NotConfigured("stream() reads the projections: pass postgres= or set METAMORPH_POSTGRES")
            async with self._setup:
                if self._stream_listener is None:
                    from projections.db import notify_channel, stream_channel

                    listener = _AsyncTerminals(self.postgres, self.namespace, stream_channel(notify_channel(self.namespace)))
                    await listener.start()
                    self._stream_listener = listener
        return self._stream_listener

    async def _request(self, kind: str, workflow_id: str, name: str, args: tuple, timeout: float) -> Any:
        data = self._sync._payload(f"arguments of {kind} {name!r}", args)
        replies = await self._reply_listener()
        request_id = str(uuid.uuid4())
        waiter = _expect(replies, request_id)
        await self._send(kind, workflow_id, request_id=request_id, name=name, input=data)
        reply = await _wait(replies, request_id, waiter, timeout)
        if reply is None:
            raise TimeoutError(f"no answer to {kind} {name!r} of {workflow_id} within {timeout}s")
        return _c._reply_value(workflow_id, kind, name, reply)

    def _unsettle(self, workflow_id: str, run_id: str | None = None) -> None:
        """``Client._unsettle``."""
        self._unsettled[workflow_id] = (time.monotonic() + _c._SETTLE_S, run_id)
        self._unsettled.move_to_end(workflow_id)
        while len(self._unsettled) > _c._RECENT_RESULTS:
            self._unsettled.popitem(last=False)

    async def _settle(self, ids: list[str] | None = None) -> None:
        """``Client._settle`` on asyncio: reads after a result() from ``<ns>.replies`` wait (up to
        ``_SETTLE_S``) until the projection has that run's outcome."""
        if not self._unsettled:
            return
        pending = [(w, d) for w, d in self._unsettled.items() if ids is None or w in ids]
        if not pending:
            return
        terminals = await self._terminals()
        for workflow_id, (deadline, run_id) in pending:
            while time.monotonic() < deadline:
                wake = terminals.expect(workflow_id)
                try:
                    row = await self._read("get_workflow", workflow_id)
                    if row is not None and row["status"] in statuses.FINAL and run_id in (None, row.get("run_id")):
                        break
                    await _event(wake, max(0.0, min(0.5, deadline - time.monotonic())))
                finally:
                    terminals.forget(workflow_id, wake)
            self._unsettled.pop(workflow_id, None)

    async def _check_running(self, workflow_id: str, operation: str) -> bool:
        """``Client._check_running``: True to send as is, False when the projections say ended or unknown."""
        if not self.postgres or time.monotonic() < self._pg_unanswered_until:
            return True
        await self._settle([workflow_id])
        try:
            status = (await self._require(workflow_id, _timeout=_c._CHECK_TIMEOUT))["status"]
        except WorkflowNotFound:
            return False
        except ConnectionError as exc:
            self._pg_unanswered_until = time.monotonic() + _c._CHECK_BACKOFF
            log.warning("sending a command to %s unchecked: %s", workflow_id, exc)
            return True
        return status not in statuses.FINAL

    async def _send_checked(self, kind: str, workflow_id: str, operation: str, **body: Any) -> None:
        """``Client._send_checked``: when the projections doubt, the owning node's answer refuses or not."""
        if await self._check_running(workflow_id, operation):
            await self._send(kind, workflow_id, **body)
            return
        replies = await self._reply_listener()
        request_id = str(uuid.uuid4())
        waiter = _expect(replies, request_id)
        await self._send(kind, workflow_id, request_id=request_id, **body)
        reply = await _wait(replies, request_id, waiter, _c._CONFIRM_TIMEOUT)
        if reply is None:
            raise TimeoutError(
                f"no answer from the node owning {workflow_id} within {_c._CONFIRM_TIMEOUT}s to confirm {operation} "
                "(the command stays queued and is applied when a node owns the workflow)"
            )
        _c._refusal(workflow_id, operation, reply)

    async def _require(self, workflow_id: str, _timeout: float | None = None) -> dict:
        await self._settle([workflow_id])
        row = await self._read("get_workflow", workflow_id, _timeout=_timeout)
        if row is not None:
            self._started.pop(workflow_id, None)
            return row
        started = self._started.get(workflow_id)
        if started is None:
            raise WorkflowNotFound(workflow_id)
        return _c._pending_row(workflow_id, *started)

    # -- the API -----------------------------------------------------------------------------------------
    async def start(
        self, wf: type | str, *args: Any, id: str | None = None,  # noqa: A002 - API name
        if_running: str = "use_existing", if_closed: str = "use_existing", start_signal: str | None = None,
        start_signal_args: Any = (), start_delay: float | timedelta | None = None,
        timeout: float | timedelta | None = None, search: dict[str, Any] | None = None,
        memo: dict[str, Any] | None = None, decision_timeout: float = 30.0, priority: int | None = None,
    ) -> AsyncWorkflowHandle:
        """``Client.start``: returns once the start command is durably in Kafka (docs/API.md §3, §6)."""
        options = _c._start_options(if_running, if_closed, start_signal, start_signal_args, start_delay, timeout, priority)
        with tracing.span(f"metamorph.start {workflow_type_name(wf)}", kind="producer",
                          attributes={"metamorph.workflow.type": workflow_type_name(wf), "metamorph.workflow.id": id}):
            return (await self._start(wf, args, id, options, decision_timeout, attributes=_c._attributes(search, memo)))[0]

    async def _start(
        self, wf: type | str, args: tuple, id: str | None, options: dict[str, Any], decision_timeout: float,  # noqa: A002
        _update: tuple[str, tuple, float] | None = None, attributes: dict[str, str] | None = None,
    ) -> tuple[AsyncWorkflowHandle, dict | None]:
        """``Client._start`` step for step (same command ids, same decision handling), awaited."""
        update_reply = None
        type_name = workflow_type_name(wf)
        workflow_id = id or str(uuid.uuid4())
        data = self._sync._payload(f"arguments of {type_name}", args)
        decide = "if_running" in options or "if_closed" in options or _update is not None
        command_id = f"start:{workflow_id}:{uuid.uuid4()}" if options or _update else f"start:{workflow_id}"
        options = {**options, **(attributes or {})}
        run_id = None
        sent_at = time.monotonic()  # before the send: an outcome read after this is of this start or later
        if not decide:
            await self._send("StartWorkflow", workflow_id, command_id, workflow_type=type_name, input=data, **options)
        else:
            replies = await self._reply_listener()
            request_id = str(uuid.uuid4())
            waiter = _expect(replies, request_id)
            if _update is not None:
                update_id = str(uuid.uuid4())
                update_waiter = _expect(replies, update_id)
                options.update(start_update=_update[0], update_request_id=update_id,
                               start_update_input=self._sync._payload(f"arguments of update {_update[0]!r}", _update[1]))
            await self._send("StartWorkflow", workflow_id, command_id, workflow_type=type_name, input=data,
                             request_id=request_id, **options)
            reply = await _wait(replies, request_id, waiter, decision_timeout)
            if reply is None:
                raise TimeoutError(f"no decision on the start of {workflow_id} within {decision_timeout}s (is a node running?)")
            run_id = (payloads.decode(reply["result"]) or {}).get("run_id") if reply["result"] else None
            if not reply["ok"]:
                if _update is not None:
                    await _wait(replies, update_id, update_waiter, 0)
                if reply.get("error_type") == "WorkflowAlreadyStarted":
                    raise WorkflowAlreadyStarted(workflow_id, run_id, reply.get("message"))
                raise ValueError(reply.get("message") or reply.get("error_type") or "start refused")
            if _update is not None:
                update_reply = await _wait(replies, update_id, update_waiter, _update[2])
                if update_reply is None:
                    raise TimeoutError(f"no answer to update {_update[0]!r} of {workflow_id} within {_update[2]}s")
        self._started[workflow_id] = (type_name, utcnow())
        self._started.move_to_end(workflow_id)
        while len(self._started) > _c._REMEMBERED_STARTS:
            self._started.popitem(last=False)
        if self.postgres:  # in the background: a start needs Kafka only (see actors.client.pending)
            task = asyncio.create_task(self._record_pending(workflow_id, type_name, list(args)))
            self._pending_rows.add(task)
            task.add_done_callback(self._pending_rows.discard)
        handle = AsyncWorkflowHandle(self, workflow_id, run_id, _c.result_type_of(wf))
        handle._sent_at = sent_at
        return handle, update_reply

    async def _record_pending(self, workflow_id: str, type_name: str, args: list) -> None:
        """``Client._record_pending``: a best-effort `pending` row, unless PostgreSQL just failed to answer."""
        if time.monotonic() < self._pg_unanswered_until:
            return
        try:
            await self._read("record_pending", workflow_id, type_name, args, _timeout=_c._CHECK_TIMEOUT)
        except Exception as exc:  # the projector writes the row anyway; this only makes it visible sooner
            if isinstance(exc, ConnectionError):
                self._pg_unanswered_until = time.monotonic() + _c._CHECK_BACKOFF
            log.warning("could not record %s as pending: %s", workflow_id, exc)

    async def update_with_start(
        self, wf: type | str, *args: Any, id: str, update: str, update_args: Any = (),  # noqa: A002
        timeout: float = 10, **start_options: Any,
    ) -> tuple[AsyncWorkflowHandle, Any]:
        """``Client.update_with_start``: start under the policies and run ``update`` in one command."""
        if not isinstance(update, str) or not update:
            raise ValueError("update must be an update handler name (a non-empty string)")
        if isinstance(update_args, str | bytes) or not isinstance(update_args, list | tuple):
            raise ValueError("update_args must be a list or tuple of arguments")
        decision_timeout = start_options.pop("decision_timeout", 30.0)
        attributes = _c._attributes(start_options.pop("search", None), start_options.pop("memo", None))
        options = _c._start_options(**{**_c._START_DEFAULTS, **start_options})
        handle, reply = await self._start(wf, args, id, options, decision_timeout,
                                          (update, tuple(update_args), timeout), attributes=attributes)
        assert reply is not None
        return handle, _c._reply_value(id, "UpdateWorkflow", update, reply)

    def get(self, id: str, *, result_type: Any = None) -> AsyncWorkflowHandle:  # noqa: A002
        """A handle by id; ``result_type`` converts ``result()`` (typed payloads, e.g. a dataclass)."""
        return AsyncWorkflowHandle(self, id, result_type=result_type)

    async def list(
        self, status: str | None = None, type: str | None = None, limit: int = 100, *,  # noqa: A002
        search: dict[str, Any] | None = None, started_after: datetime | str | None = None,
        started_before: datetime | str | None = None, cursor: str | None = None,
    ) -> _c.WorkflowPage:
        """``Client.list``: one page, newest first, keyset ``.next_cursor`` (docs/API.md §7)."""
        filters = _c._filters(status, type, search, started_after, started_before, None)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, not {limit!r}")
        scope = _c._cursor_scope(filters)
        after = _search.decode_cursor(cursor, scope) if cursor is not None else None
        await self._settle()  # results this client returned from <ns>.replies are in the projection first
        rows = await self._read("list_workflows", limit=limit + 1, after=after, **filters)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = _search.encode_cursor(rows[-1]["created_at"], rows[-1]["id"], scope) if more else None
        return _c.WorkflowPage([_c.WorkflowSummary.from_row(r) for r in rows], next_cursor)

    async def count(
        self, status: str | None = None, type: str | None = None, *,  # noqa: A002
        search: dict[str, Any] | None = None, started_after: datetime | str | None = None,
        started_before: datetime | str | None = None,
    ) -> int:
        """``Client.count``: how many workflows match ``list``'s filters."""
        await self._settle()
        return await self._read("count_workflows", **_c._filters(status, type, search, started_after, started_before, None))

    async def batch(
        self, action: str, *, status: str | None = None, type: str | None = None,  # noqa: A002
        search: dict[str, Any] | None = None, reason: str | None = None, signal: str | None = None, args: Any = (),
    ) -> int:
        """``Client.batch``: cancel, terminate or signal every open workflow matching the filters; how many
        were sent the command. Each page's sends are in flight together, then awaited."""
        plan = _c._batch_plan(action, status, type, search, reason, signal, args)
        if plan is None:
            return 0
        kind, body, filters = plan
        producer = await self._kafka()
        sent, after = 0, None
        while True:
            rows = await self._read("list_workflows", limit=500, after=after, **filters)
            futures = [
                producer.send(self.topics.commands, key=r["id"].encode(), value=_c.command_record(kind, r["id"], **body),
                              partition=partition_for(r["id"], self._sync._partitions or 1))
                for r in rows
            ]
            for future in futures:
                await self._acked(future, f"batch {action} command ({sent} sent)")
                sent += 1
            if len(rows) < 500:
                return sent
            after = (datetime.fromisoformat(rows[-1]["created_at"]), rows[-1]["id"])

    # -- schedules (docs/API.md §8; validation and specs are actors.schedules') ------------------------------
    async def schedule(
        self, schedule_id: str, wf: type | str, *args: Any, cron: str | None = None,
        every: float | timedelta | None = None, timezone: str = "UTC", overlap: str = "skip",
        catchup_window: float | timedelta = 3600.0, jitter: float | timedelta = 0, start_at: datetime | None = None,
        end_at: datetime | None = None, paused: bool = False,
    ) -> AsyncScheduleHandle:
        """``Client.schedule``: create or update a schedule (one update-with-start of ``schedule:{id}``)."""
        from actors import schedules as _s

        _s.check_schedule_id(schedule_id)
        spec = _s.make_spec(wf, args, cron=cron, every=every, timezone=timezone, overlap=overlap,
                            catchup_window=catchup_window, jitter=jitter, start_at=start_at, end_at=end_at)
        await self.update_with_start(_s.TYPE, _s.initial_state(schedule_id, spec, paused), id=_s.workflow_id_of(schedule_id),
                                     update="upsert", update_args=[spec, paused], if_closed="allow")
        return AsyncScheduleHandle(self, schedule_id)

    def get_schedule(self, schedule_id: str) -> AsyncScheduleHandle:
        from actors.schedules import check_schedule_id

        return AsyncScheduleHandle(self, check_schedule_id(schedule_id))

    async def list_schedules(self) -> builtins.list[dict]:  # ``list`` is a method of this class
        """``Client.list_schedules``: every schedule not deleted, described, by id."""
        from actors.schedules import PREFIX, TYPE

        out = []
        for summary in await self.list(type=TYPE, limit=10_000):
            if summary.status in statuses.FINAL:
                continue
            schedule_id = summary.id.removeprefix(PREFIX)
            try:
                info = await AsyncScheduleHandle(self, schedule_id)._call("query", "describe")
            except Exception as exc:  # one unreachable schedule must not hide the others
                info = {"id": schedule_id, "error": f"{type(exc).__name__}: {exc}"}
            out.append(info)
        return sorted(out, key=lambda i: i["id"])

    async def close(self) -> None:
        """Stop the listeners and close the connections; the blocking kafka-python closes run off the loop."""
        if self._pending_rows:  # a bounded wait, so a short-lived program leaves its pending rows behind
            _done, late = await asyncio.wait(set(self._pending_rows), timeout=2 * _c._CHECK_TIMEOUT + 1.0)
            for task in late:
                task.cancel()
        if self._terminal_listener is not None:
            await self._terminal_listener.close()
            self._terminal_listener = None
        if self._stream_listener is not None:
            await self._stream_listener.close()
            self._stream_listener = None
        if self._pg_pool is not None:
            await self._pg_pool.close()
            self._pg_pool = None
        await asyncio.to_thread(self._sync.close)  # joins the replies thread and flushes the producer
        self._replies = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncWorkflowHandle:
    """``WorkflowHandle`` for the ``AsyncClient``: the same methods, awaitable; follows continue-as-new."""

    def __init__(self, client: AsyncClient, workflow_id: str, run_id: str | None = None, result_type: Any = None) -> None:
        self._client = client
        self.id = workflow_id
        #: What ``result()`` converts the output to (typed payloads): the started class's ``execute`` return
        #: annotation, or ``result_type=``; None returns the JSON value as it is.
        self.result_type = result_type
        self.run_id = run_id
        self._sent_at: float | None = None  # as WorkflowHandle._sent_at
        self._final: dict | None = None  # as WorkflowHandle._final
        self._run_seen = run_id is None

    def __repr__(self) -> str:
        return f"AsyncWorkflowHandle({self.id!r})"

    async def describe(self) -> dict:
        await self._settle()
        row = await self._client._require(self.id)
        if not self._run_seen:
            if row.get("run_id") == self.run_id:
                self._run_seen = True
            elif await self._client._read("run_known", self.id, self.run_id):
                # The projector committed our run after ``row`` was read: that row is an older run's.
                self._run_seen = True
                row = await self._client._require(self.id)
            else:
                row = {**row, "run_id": self.run_id, "status": "pending", "output": None, "error_type": None,
                       "error_message": None, "error_traceback": None, "closed_at": None}
        return _c._with_final(row, self._final)

    async def status(self) -> str:
        return (await self.describe())["status"]

    async def running(self) -> bool:
        return await self.status() not in statuses.TERMINAL

    async def completed(self) -> bool:
        return await self.status() == "completed"

    async def failed(self) -> bool:
        return await self.status() == "failed"

    async def output(self) -> Any:
        row = await self.describe()
        return row.get("output") if row["status"] == "completed" else None

    async def result(self, timeout: float | None = None, *, result_type: Any = None) -> Any:
        """Wait for the end on the client's one async LISTEN connection and return the output or raise
        (``WorkflowFailed``, ``WorkflowCancelled``, ``WorkflowTerminated``, ``WorkflowTimedOut``, ``TimeoutError``)."""
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        terminals = await self._client._terminals()
        replies = await self._client._result_replies()
        box: list[dict] = []
        loop = asyncio.get_running_loop()
        while True:
            wake = terminals.expect(self.id)
            waker = _ThreadsafeWake(loop, wake)
            if replies is not None:  # the owner's outcome on <ns>.replies, as in Client.result()
                replies.expect_result(self.id, waker, box, self.run_id, self._sent_at)
            try:
                if box:
                    self._final = _c._result_row(box[0])
                    self._client._unsettle(self.id, self._final.get("run_id"))
                    return _c.typed_output(self.id, _c._outcome(self.id, self._final), result_type or self.result_type)
                try:
                    row = await self.describe()
                except WorkflowNotFound:
                    if time.monotonic() - started > _c._NOT_FOUND_GRACE or (deadline is not None and time.monotonic() > deadline):
                        raise
                    await _event(wake, 0.05)
                    continue
                status = row["status"]
                if status in _c.TERMINAL:
                    return _c.typed_output(self.id, _c._outcome(self.id, row), result_type or self.result_type)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"workflow {self.id} is still {status} after {timeout}s")
                await _event(wake, 5.0 if remaining is None else min(remaining, 5.0))
                if box:
                    self._final = _c._result_row(box[0])
                    self._client._unsettle(self.id, self._final.get("run_id"))
                    return _c.typed_output(self.id, _c._outcome(self.id, self._final), result_type or self.result_type)
            finally:
                if replies is not None:
                    replies.forget_result(self.id, waker)
                terminals.forget(self.id, wake)

    def stream(self, after: int = 0, timeout: float | None = None) -> AsyncIterator[Any]:
        """``WorkflowHandle.stream`` as an async iterator: ``async for item in handle.stream(after=N)``.

        The same positions, end and ``TimeoutError`` as the sync one; waits on the client's async LISTEN
        connection, so no thread is held per reader. A bad ``after``/``timeout`` raises ValueError here.
        """
        from actors.client.streams import check_after, check_timeout

        after, timeout = check_after(after), check_timeout(timeout)
        return self._stream(after, timeout)

    async def _stream(self, after: int, timeout: float | None) -> AsyncIterator[Any]:
        from actors.client.streams import afollow

        client = self._client

        async def items(wid: str, position: int, limit: int) -> list[dict]:
            return await client._read("stream_items", wid, position, limit)  # type: ignore[no-any-return]

        async for item in afollow(items, client._require, await client._streams(), self.id, after, timeout):
            yield item["value"]

    async def signal(self, name: str, *args: Any) -> None:
        """Send a signal; WorkflowNotRunning if the workflow has ended."""
        data = self._client._sync._payload(f"arguments of signal {name!r}", args)
        with tracing.span(f"metamorph.signal {name}", kind="producer", attributes={"metamorph.workflow.id": self.id}):
            await self._client._send_checked("SignalWorkflow", self.id, f"signal {name!r}", name=name, input=data)

    async def query(self, name: str, *args: Any, timeout: float = 10) -> Any:
        return await self._client._request("QueryWorkflow", self.id, name, args, timeout)

    async def update(self, name: str, *args: Any, timeout: float = 10) -> Any:
        return await self._client._request("UpdateWorkflow", self.id, name, args, timeout)

    async def cancel(self) -> None:
        await self._client._send_checked("CancelWorkflow", self.id, "cancel", reason=None)

    async def terminate(self, reason: str | None = None) -> None:
        await self._client._send_checked("TerminateWorkflow", self.id, "terminate", reason=reason)

    async def pause(self, reason: str | None = None) -> None:
        """As ``WorkflowHandle.pause``: no step until ``resume()``; WorkflowNotRunning if it has ended."""
        if reason is not None and not isinstance(reason, str):
            raise ValueError("reason must be a string")
        await self._client._send_checked("PauseWorkflow", self.id, "pause", reason=reason)

    async def resume(self) -> None:
        """As ``WorkflowHandle.resume``: what waited is applied in arrival order."""
        await self._client._send_checked("ResumeWorkflow", self.id, "resume")

    async def reset(self, seq: int) -> None:
        """As ``WorkflowHandle.reset``: a new run replaying history up to ``seq``; ValueError for a bogus seq."""
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise ValueError(f"seq must be a positive integer (an event of the run's history), not {seq!r}")
        events = await self.history()
        if not any(e["seq"] == seq for e in events):
            last = max((e["seq"] for e in events), default=0)
            raise ValueError(f"workflow {self.id} has no event {seq} to reset to (its history has seq 1..{last})")
        await self._client._send("ResetWorkflow", self.id, seq=seq)

    async def retry(self, force: bool = False) -> None:
        """As ``WorkflowHandle.retry``: AlreadyCompensated unless ``force`` when the saga compensated."""
        row = await self._client._require(self.id)
        if row["status"] != "failed":
            raise ValueError(f"only a failed workflow can be retried; {self.id} is {row['status']}")
        if not force:
            check_not_compensated(self.id, await self.history())
        await self._client._send("RetryWorkflow", self.id)

    async def history(self) -> list[dict]:
        await self._settle()
        await self._client._require(self.id)
        return await self._client._read("history", self.id)

    async def exceptions(self) -> list[dict]:
        await self._settle()
        await self._client._require(self.id)
        return await self._client._read("exceptions", self.id)

    async def _settle(self) -> None:
        """``WorkflowHandle._settle``: reads after a result() from ``<ns>.replies`` (``AsyncClient._settle``)."""
        if self._final is not None:
            await self._client._settle([self.id])


class AsyncScheduleHandle:
    """``ScheduleHandle`` for the ``AsyncClient``: each call an awaited query/update of ``schedule:{id}``."""

    def __init__(self, client: AsyncClient, schedule_id: str) -> None:
        from actors.schedules import workflow_id_of

        self._client = client
        self.id = schedule_id
        self.workflow_id = workflow_id_of(schedule_id)

    def __repr__(self) -> str:
        return f"AsyncScheduleHandle({self.id!r})"

    async def _call(self, kind: str, name: str, *args: Any, timeout: float = 10) -> Any:
        """Retried over the moment a continue-as-new of the schedule's workflow is in flight."""
        deadline = time.monotonic() + timeout
        handle = self._client.get(self.workflow_id)
        while True:
            try:
                return await getattr(handle, kind)(name, *args, timeout=max(1.0, deadline - time.monotonic()))
            except WorkflowNotRunning as exc:
                if exc.status != "continued" or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def describe(self) -> dict:
        info = await self._call("query", "describe")
        if self._client.postgres:
            for run in info["recent_runs"]:
                if run["action"] == "started":
                    row = await self._client._read("get_workflow", run["id"])
                    if row is not None:
                        run["status"] = row["status"]
        return info

    async def pause(self, note: str | None = None) -> None:
        await self._call("update", "pause", note)

    async def resume(self) -> None:
        await self._call("update", "resume")

    async def trigger(self) -> str:
        return await self._call("update", "trigger")

    async def backfill(self, start: datetime | str, end: datetime | str) -> int:
        from actors.schedules import _time

        s, e = _time("start", start), _time("end", end)
        if s is None or e is None or e < s:
            raise ValueError("backfill needs start <= end")
        return await self._call("update", "backfill", s, e)

    async def update(self, **changes: Any) -> dict:
        from actors.schedules import updated_spec

        return await self._call("update", "upsert", updated_spec((await self.describe())["spec"], changes))

    async def delete(self) -> None:
        await self._call("update", "delete")


# -- replies: the sync listener thread, resolving asyncio futures ---------------------------------------------
class _LoopWaiter:
    """Stands in for the ``threading.Event`` of a ``_Replies`` waiter: ``set()`` (called on the listener
    thread after the reply is appended) resolves an asyncio future on the loop instead of waking a thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, box: list) -> None:
        self._loop, self._box, self._set = loop, box, False
        self.future: asyncio.Future = loop.create_future()

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        self._loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(self._box[0])


def _expect(replies: _c._Replies, request_id: str) -> _LoopWaiter:
    box: list = []
    waiter = _LoopWaiter(asyncio.get_running_loop(), box)
    with replies._lock:
        replies._waiters[request_id] = (waiter, box)  # type: ignore[assignment]
    return waiter


async def _wait(replies: _c._Replies, request_id: str, waiter: _LoopWaiter, timeout: float) -> dict | None:
    try:
        if timeout <= 0 and not waiter.future.done():
            return None
        return await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
    except TimeoutError:
        return None
    finally:
        with replies._lock:
            replies._waiters.pop(request_id, None)


class _ThreadsafeWake:
    """Sets an ``asyncio.Event`` from the replies listener thread (``set()`` hops onto the loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        self._loop, self._event = loop, event

    def set(self) -> None:
        self._loop.call_soon_threadsafe(self._event.set)


# -- results: one async LISTEN connection per client -----------------------------------------------------------
async def _event(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)


class _AsyncTerminals:
    """``_Terminals`` on asyncio: a task holds a LISTEN connection and wakes every waiter of an id when the
    projector announces its end. Waiters re-read the projection after waking, so a missed notification
    (reconnect) costs a read, never a wrong answer; after a reconnect every waiter is woken."""

    def __init__(self, postgres: str, namespace: str, channel: str | None = None) -> None:
        self._postgres, self._namespace = postgres, namespace
        self._channel = channel  # None: the terminal-workflow channel; streams listen on theirs
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._listening = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="metamorph-async-terminals")
        await _event(self._listening, 5)

    def expect(self, workflow_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters.setdefault(workflow_id, set()).add(event)
        return event

    def forget(self, workflow_id: str, event: asyncio.Event) -> None:
        waiters = self._waiters.get(workflow_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[workflow_id]

    def _wake(self, workflow_id: str | None) -> None:
        if workflow_id is None:
            events = [e for ws in self._waiters.values() for e in ws]
        else:
            events = list(self._waiters.get(workflow_id, ()))
        for e in events:
            e.set()

    async def _run(self) -> None:
        from psycopg import sql

        from projections import aread
        from projections.db import notify_channel

        backoff = Backoff(0.1, 2.0)
        while True:
            try:
                conn = await aread.connect(self._postgres, self._namespace, autocommit=True, connect_timeout=5)
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel or notify_channel(self._namespace))))
                    self._listening.set()
                    self._wake(None)
                    backoff.reset()
                    async for note in conn.notifies():
                        self._wake(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("LISTEN connection lost: %s", exc)
                await asyncio.sleep(backoff.next())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
