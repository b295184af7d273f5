"""The projector: ``<ns>.events`` in, queryable views in PostgreSQL out, exactly once.

Exactly once without distributed transactions: the consumed offsets live in PostgreSQL, in the same
transaction as the rows they produced, so a batch is either projected and its offsets advanced, or neither.
Kafka's committed offsets are written afterwards for lag monitoring only; on assignment the projector seeks to
the offsets in PostgreSQL. Each transaction also locks the offset rows of its partitions and skips records
below the stored offset, so even two projectors that briefly both believe they own a partition (a rebalance, a
zombie) cannot apply an event twice.

Faults: an undecodable record, or an event whose data PostgreSQL refuses, goes to ``<ns>.deadletter`` with
the reason (acknowledged by the broker before the offsets move, and never while a transaction is open) and
is skipped; PostgreSQL going away rolls the batch back and retries it (same records) with capped exponential
backoff; exceptions from the Kafka client are logged and retried. The projector's own errors (a bug in a
projection: ValueError, TypeError, KeyError...) are not bad input: the batch is retried, so the partition
stalls loudly (error log, ``metamorph_projector_stalled``) instead of skipping data. The loop never stops.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import psycopg
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import OffsetAndMetadata

from eventstore import codec, groups, metrics, tracing
from eventstore.backoff import Backoff
from eventstore.deadletter import DeadLetters
from eventstore.events import decode_event, encode_event
from eventstore.fencing import Fence
from eventstore.log import LogTruncatedError, check_not_truncated, end_offsets, producer
from eventstore.topics import Topics, leave_group

from .apply import MARKER, apply_event, clean
from .db import connect, notify_channel
from .migrate import migrate

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Errors by which PostgreSQL refuses one event's data (rather than being unavailable): the event is
#: dead-lettered instead of blocking the projector forever. Python errors (ValueError, TypeError, KeyError)
#: are not here on purpose: raised by the projector's own code, they are bugs, and a bug stalls the batch.
_EVENT_ERRORS = (
    psycopg.DataError,
    psycopg.IntegrityError,
    psycopg.errors.ProgramLimitExceeded,  # e.g. an id too long for an index entry
)
#: PostgreSQL unavailable (down, restarting, connection cut) or a transient conflict: retry the batch.
_PG_DOWN = (psycopg.OperationalError, psycopg.InterfaceError)


class _Stopped(Exception):
    """The stop event was set while waiting to retry; the batch is abandoned (it is re-read later)."""


class _Unprojectable(Exception):
    """Events PostgreSQL refused; raised out of the batch's transaction, which rolls back.

    The batch is then dead-lettered (outside any transaction, acknowledged) and applied again without them,
    so no broker round trip happens while row locks are held.
    """

    def __init__(self, bad: list[tuple[Any, str, str, int, int, dict]]) -> None:
        super().__init__(f"{len(bad)} event(s) refused by PostgreSQL")
        self.bad = bad


class _Rebalance(ConsumerRebalanceListener):
    """Positions newly assigned partitions at the offsets stored in PostgreSQL, never Kafka's."""

    def __init__(self, projector: Projector) -> None:
        self._projector = projector

    def on_partitions_revoked(self, revoked: Any) -> None:
        self._projector._forget(revoked)

    def on_partitions_assigned(self, assigned: Any) -> None:
        self._projector._assigned(assigned)

    def on_partitions_lost(self, lost: Any) -> None:
        self._projector._forget(lost)


class Projector:
    """Consumes ``<ns>.events`` (group ``<ns>.projector``) and keeps the namespace's schema up to date.

    ``assign=True`` reads every partition without joining the group (used by :func:`rebuild`, so a rebuild
    can run next to the live projector); ``consumer_options`` go to the KafkaConsumer (session timeouts...).
    Counters (``events_applied``, ``batches``, ``deadlettered``,
    ``fenced``, ``duplicates``, ``last_batch_seconds``, ``pg_errors``) are plain attributes.
    """

    def __init__(
        self,
        kafka: str,
        postgres: str,
        namespace: str = "default",
        batch_size: int = 500,
        *,
        assign: bool = False,
        poll_timeout_ms: int = 1000,
        max_backoff: float = 5.0,
        apply_migrations: bool = True,
        consumer_options: dict[str, Any] | None = None,
        name: str | None = None,
        session_timeout: float | None = None,
    ) -> None:
        self.kafka = kafka
        tracing.configure_from_env()
        # A static member: a restarted projector with the same name takes its partitions back at once, and
        # a dead one is evicted after the session timeout (never a dynamic member a broker may keep).
        self.name = name or f"projector-{uuid.uuid4().hex[:8]}"
        self.session_timeout = session_timeout
        self.postgres = postgres
        self.namespace = namespace
        self.batch_size = batch_size
        self.topics = Topics(namespace)
        self.topic = self.topics.events
        self.channel = notify_channel(namespace)
        self.assign = assign
        self.poll_timeout_ms = poll_timeout_ms
        self.max_backoff = max_backoff
        self.apply_migrations = apply_migrations
        self.consumer_options = dict(consumer_options or {})
        self._broker = groups.BrokerWatch("projector")
        # The next offset to project per partition, as PostgreSQL has it: lag is measured against it, also while
        # PostgreSQL is down (``_report_lag_from_log``), so ProjectorBehind/Stalled can fire during an outage.
        self._projected: dict[int, int] = {}
        self._lag_from_log_at = 0.0
        self.events_applied = 0
        self.batches = 0
        self.deadlettered = 0
        self.fenced = 0
        self.duplicates = 0
        self.pg_errors = 0
        self.last_batch_seconds = 0.0
        self._stop = threading.Event()
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._dead: DeadLetters | None = None
        self._conn: psycopg.Connection | None = None
        self._migrated = False
        self._unpositioned: set[TopicPartition] = set()
        self._failures = 0
        self._lag_reported = float("-inf")

    # -- the loop ----------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Project until ``stop`` is set; every error is logged and retried with backoff, never fatal."""
        self._stop = stop
        backoff = Backoff(0.1, self.max_backoff)
        try:
            while not stop.is_set():
                try:
                    self.run_once(self.poll_timeout_ms)
                    backoff.reset()
                except _Stopped:
                    break
                except Exception:
                    log.exception("projector %s: loop error; retrying in %.1fs", self.namespace, backoff.peek())
                    metrics.dependency_errors.labels("projector", "kafka").inc()
                    stop.wait(backoff.next())
        finally:
            self.close()
            if not self.assign:  # a static member does not leave on close: hand the partitions over now
                leave_group(self.kafka, self.topics.projector_group, self.name)

    def run_once(self, timeout_ms: int = 1000) -> int:
        """Poll one batch and project it; returns the number of records consumed (0 when there were none).

        Records of a batch that could not be committed (stop requested, an unexpected error) are read again:
        every partition is re-positioned from PostgreSQL before the next poll.
        """
        consumer = self._ensure_consumer()
        self._position()
        try:
            records = groups.poll(consumer, timeout_ms, max_records=self.batch_size)
            self._failures = 0
            now = time.monotonic()
            if now - self._lag_reported >= 1.0:
                self._lag_reported = now
                metrics.report_lag(consumer, "projector")
                self._broker.check(consumer)
        except Exception:
            self._failures += 1
            if self._failures >= 3:  # a consumer that keeps failing is replaced; positions come from PG anyway
                self._close_consumer()
            raise
        if not records:
            return 0
        try:
            if tracing.enabled():
                with tracing.span("metamorph.project", kind="consumer", attributes={
                        "metamorph.namespace": self.namespace, "metamorph.records": sum(len(r) for r in records.values()),
                        "metamorph.partitions": ",".join(str(tp.partition) for tp in sorted(records, key=lambda t: t.partition))}) as span:
                    return self._process(records, span)
            return self._process(records)
        except BaseException:
            self._unpositioned |= set(consumer.assignment())
            raise

    def close(self) -> None:
        """Release the consumer, producer and connection (idempotent)."""
        self._close_consumer()
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except Exception:
                log.debug("closing the dead-letter producer failed", exc_info=True)
            self._producer = None
            self._dead = None
        self._drop_connection()

    def __enter__(self) -> Projector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- Kafka -------------------------------------------------------------------------------------------

    def _ensure_consumer(self) -> KafkaConsumer:
        if self._consumer is not None:
            return self._consumer
        self._pg(lambda conn: None)  # migrations first: seeking needs the offsets table
        consumer = groups.member(
            self.kafka,
            None if self.assign else self.topics.projector_group,
            None if self.assign else self.name,
            session_timeout_s=self.session_timeout,
            client_id=f"metamorph-{self.name}",
            max_poll_records=self.batch_size,
            **self.consumer_options,
        )
        try:
            if self.assign:
                partitions = consumer.partitions_for_topic(self.topic)
                if not partitions:
                    raise RuntimeError(f"topic {self.topic} does not exist (yet)")
                tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
                consumer.assign(tps)
                self._unpositioned = set(tps)
            else:
                consumer.subscribe([self.topic], listener=_Rebalance(self))
        except BaseException:
            consumer.close(autocommit=False)
            raise
        self._consumer = consumer
        return consumer

    def _close_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        self._unpositioned = set()
        if consumer is not None:
            metrics.forget_lag(consumer, "projector")
            try:
                consumer.close(autocommit=False)
            except Exception:
                log.debug("closing the projector consumer failed", exc_info=True)

    def _assigned(self, assigned: Any) -> None:
        """Seek new partitions to their stored offsets now, or pause them until PostgreSQL answers.

        This runs inside ``poll`` on the consumer's IO loop, so it must not wait for a PostgreSQL that is
        down: one attempt on an existing connection, and on any failure the partitions stay paused and
        ``_position`` seeks them (with retries) before the next poll.
        """
        tps = [tp for tp in assigned if tp.topic == self.topic]
        if not tps or self._consumer is None:
            return
        conn = self._conn
        try:
            if conn is None or conn.closed or conn.broken:
                raise ConnectionError("no PostgreSQL connection at hand")
            offsets = self._stored_offsets(conn, [tp.partition for tp in tps])
            self._seek(self._consumer, tps, offsets)
            self._unpositioned.difference_update(tps)
            log.info("projector %s: assigned %s at stored offsets %s", self.namespace,
                     sorted(tp.partition for tp in tps), offsets)
        except Exception as exc:
            log.info("projector %s: positioning %s deferred (%s)", self.namespace, tps, exc)
            self._consumer.pause(*tps)
            self._unpositioned.update(tps)

    def _forget(self, revoked: Any) -> None:
        self._unpositioned.difference_update(revoked)

    def _position(self) -> None:
        """Seek partitions whose position is unknown to the offsets stored in PostgreSQL, then resume them."""
        consumer = self._consumer
        if consumer is None or not self._unpositioned:
            return
        tps = [tp for tp in self._unpositioned if tp in consumer.assignment()]
        if tps:
            offsets = self._pg(lambda conn: self._stored_offsets(conn, [tp.partition for tp in tps]))
            self._seek(consumer, tps, offsets)
        self._unpositioned.clear()

    def _seek(self, consumer: KafkaConsumer, tps: list[TopicPartition], offsets: dict[int, int]) -> None:
        """Seek each partition to its stored offset and resume it, unless the log now ends before that
        offset (truncated or recreated): such a partition stays paused, with an ERROR log and
        ``metamorph_log_truncated``, instead of projecting other records under the same offsets."""
        ends = end_offsets(self.kafka, self.topic, [tp.partition for tp in tps])
        for tp in tps:
            stored = offsets.get(tp.partition, 0)
            try:
                check_not_truncated(self.topic, tp.partition, stored, ends.get(tp.partition, 0))
            except LogTruncatedError as exc:
                log.error("projector %s: %s", self.namespace, exc)
                metrics.log_truncated.labels("projector", str(tp.partition)).set(1)
                consumer.pause(tp)
                continue
            metrics.log_truncated.labels("projector", str(tp.partition)).set(0)
            self._projected[tp.partition] = stored
            consumer.seek(tp, stored)
            consumer.resume(tp)  # in case an earlier, failed attempt paused it

    def _stored_offsets(self, conn: psycopg.Connection, partitions: list[int]) -> dict[int, int]:
        with conn.transaction():
            rows = conn.execute(
                "SELECT partition, next_offset FROM projector_offsets WHERE topic = %s AND partition = ANY(%s)",
                (self.topic, partitions),
            ).fetchall()
        return {p: o for p, o in rows}

    def _commit_kafka(self, ends: dict[int, int]) -> None:
        """Mirror the committed offsets to the group, for lag tools; PostgreSQL stays the truth."""
        consumer = self._consumer
        if consumer is None:
            return
        self._projected.update(ends)
        for p, end in ends.items():
            tp = TopicPartition(self.topic, p)
            try:
                high = consumer.highwater(tp)
            except Exception:
                high = None
            if high is not None:
                metrics.projector_lag.labels(str(p)).set(max(0, high - end))
        if self.assign:
            return
        try:
            consumer.commit({TopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1) for p, o in ends.items()})
        except Exception as exc:  # a rebalance in between: harmless, the new owner seeks from PostgreSQL
            log.debug("projector %s: Kafka offset commit failed: %s", self.namespace, exc)

    # -- one batch ---------------------------------------------------------------------------------------

    def _process(self, records: dict[TopicPartition, list[ConsumerRecord]], span: Any = None) -> int:
        """Project one batch; ``span`` (tracing on) is linked to the traces of the runs started in it."""
        started = time.monotonic()
        items: list[tuple[int, int, dict]] = []
        dead: list[tuple[ConsumerRecord, str, str]] = []
        ends: dict[int, int] = {}
        count = 0
        for tp, recs in records.items():
            if not recs:
                continue
            ends[tp.partition] = recs[-1].offset + 1
            for rec in recs:
                count += 1
                event, reason = _decode(rec.value)
                if event is None:
                    dead.append((rec, "undecodable", reason))
                else:
                    items.append((tp.partition, rec.offset, event))
        if span is not None:
            tracing.add_links(span, [e["trace"] for _, _, e in items if e.get("type") == "WorkflowStarted" and e.get("trace")])
        if dead:
            self._deadletter(dead)
        refused: set[tuple[int, int]] = set()
        while True:
            todo = [item for item in items if (item[0], item[1]) not in refused] if refused else items
            try:
                applied: int = self._retry_pg(partial(self._apply_batch, items=todo, ends=ends))
                break
            except _Unprojectable as exc:  # the transaction rolled back: dead-letter, then apply the rest
                self._deadletter_events(exc.bad)
                refused.update((partition, offset) for _, _, _, partition, offset, _ in exc.bad)
        self._commit_kafka(ends)
        self.events_applied += applied
        self.batches += 1
        self.last_batch_seconds = time.monotonic() - started
        metrics.projector_batch_seconds.observe(self.last_batch_seconds)
        return count

    def _apply_batch(self, conn: psycopg.Connection, items: list[tuple[int, int, dict]], ends: dict[int, int]) -> int:
        """One transaction: lock the partitions' offsets, fence, dedupe, apply, advance the offsets."""
        partitions = sorted(ends)
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO projector_offsets (topic, partition, next_offset) VALUES (%s, %s, 0)"
                " ON CONFLICT (topic, partition) DO NOTHING",
                [(self.topic, p) for p in partitions],
            )
            stored: dict[int, int] = dict(cur.execute(
                "SELECT partition, next_offset FROM projector_offsets WHERE topic = %s AND partition = ANY(%s)"
                " ORDER BY partition FOR UPDATE",
                (self.topic, partitions),
            ).fetchall())
            fences = {p: Fence() for p in partitions}
            for p, epoch in cur.execute(
                "SELECT partition, epoch FROM projector_fence WHERE partition = ANY(%s)", (partitions,)
            ).fetchall():
                fences[p] = Fence(epoch)
            start_epochs = {p: f.epoch for p, f in fences.items()}
            todo: list[tuple[int, int, dict]] = []
            fenced = 0
            for partition, offset, event in items:
                if offset < stored[partition]:
                    continue  # already projected (by us before a crash, or by another projector)
                if not fences[partition].admit_flat(event):
                    fenced += 1
                    log.warning("projector %s: fenced %s of %r (epoch %s < %s) at %d@%d", self.namespace,
                                event["type"], event["workflow_id"], event["epoch"], fences[partition].epoch,
                                partition, offset)
                    continue
                if event["type"] != MARKER:
                    todo.append((partition, offset, event))
            todo = self._new_events(cur, todo)
            applied = self._apply_events(conn, cur, todo)
            cur.executemany(
                "UPDATE projector_offsets SET next_offset = %s, updated_at = now()"
                " WHERE topic = %s AND partition = %s AND next_offset < %s",
                [(ends[p], self.topic, p, ends[p]) for p in partitions],
            )
            changed = [(p, f.epoch) for p, f in fences.items() if f.epoch != start_epochs[p]]
            if changed:
                cur.executemany(
                    "INSERT INTO projector_fence (partition, epoch) VALUES (%s, %s)"
                    " ON CONFLICT (partition) DO UPDATE SET epoch = excluded.epoch",
                    changed,
                )
        self.fenced += fenced
        for p in partitions:
            n = sum(1 for q, _, _ in todo if q == p)
            if n:
                metrics.projector_events.labels(str(p)).inc(n)
        return applied

    def _new_events(self, cur: psycopg.Cursor, todo: list[tuple[int, int, dict]]) -> list[tuple[int, int, dict]]:
        """Drop events whose (workflow, run, seq) is already in history: a record written twice is projected once."""
        if not todo:
            return todo
        keys = [(e["workflow_id"], e["run_id"], e["seq"]) for _, _, e in todo]
        existing = set(cur.execute(
            "SELECT h.workflow_id, h.run_id, h.seq FROM history h"
            " JOIN unnest(%s::text[], %s::text[], %s::bigint[]) AS k(w, r, s)"
            " ON h.workflow_id = k.w AND h.run_id = k.r AND h.seq = k.s",
            ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]),
        ).fetchall())
        fresh = []
        for item, key in zip(todo, keys, strict=True):
            if key in existing:
                self.duplicates += 1
                continue
            existing.add(key)
            fresh.append(item)
        return fresh

    def _apply_events(self, conn: psycopg.Connection, cur: psycopg.Cursor, todo: list[tuple[int, int, dict]]) -> int:
        """Apply in a pipeline; if an event's data is refused, redo them one by one to find the bad ones.

        Bad ones are raised as ``_Unprojectable`` (rolling the whole transaction back): they are dead-lettered
        by the caller once no transaction is open, and the batch is applied again without them.
        """
        if not todo:
            return 0
        try:
            with conn.transaction(), conn.pipeline():
                for partition, offset, event in todo:
                    apply_event(cur, event, partition, offset, self.channel)
            return len(todo)
        except _EVENT_ERRORS as exc:
            log.warning("projector %s: batch refused (%s); applying event by event", self.namespace, exc)
        bad: list[tuple[ConsumerRecord | None, str, str, int, int, dict]] = []
        for partition, offset, event in todo:
            try:
                with conn.transaction():
                    apply_event(cur, event, partition, offset, self.channel)
            except _EVENT_ERRORS as exc:
                log.error("projector %s: cannot project %s of %r at %d@%d: %s", self.namespace, event["type"],
                          event["workflow_id"], partition, offset, exc)
                bad.append((None, "unprojectable", f"{type(exc).__name__}: {exc}", partition, offset, event))
        if bad:
            raise _Unprojectable(bad)
        return len(todo)

    # -- dead letters ------------------------------------------------------------------------------------

    def _deadletter(self, dead: list[tuple[ConsumerRecord, str, str]]) -> None:
        letters = [
            (kind, {"source_topic": self.topic, "partition": rec.partition, "offset": rec.offset, "reason": reason,
                    "key": rec.key, "value": rec.value if rec.value is not None else b""})
            for rec, kind, reason in dead
        ]
        for rec, _, reason in dead:
            log.error("projector %s: dead-lettering %s[%d]@%d: %s", self.namespace, self.topic, rec.partition,
                      rec.offset, reason)
        self._send_letters(letters)

    def _deadletter_events(self, bad: list[tuple[Any, str, str, int, int, dict]]) -> None:
        letters = []
        for _, kind, reason, partition, offset, event in bad:
            value = encode_event(event, event["workflow_id"], event["epoch"], event.get("node") or "")
            letters.append((kind, {"source_topic": self.topic, "partition": partition, "offset": offset,
                                   "reason": reason, "key": event["workflow_id"].encode(), "value": value}))
        self._send_letters(letters)

    def _send_letters(self, letters: list[tuple[str, dict]]) -> None:
        """Produce and wait for the acknowledgement (at least once): called before the batch's transaction
        commits and never while one is open, so a crash re-sends a letter but never loses one."""
        backoff = Backoff(0.1, self.max_backoff)
        while True:
            try:
                if self._dead is None:
                    self._producer = self._producer or producer(self.kafka)
                    self._dead = DeadLetters(self._producer, self.topics.deadletter, "projector")
                for kind, letter in letters:
                    self._dead.add(letter["source_topic"], letter["partition"], letter["offset"], letter["reason"],
                                   letter["key"], letter["value"], kind)
                self._dead.flush()
                break
            except Exception as exc:
                log.warning("projector %s: dead-letter produce failed (%s); retrying in %.1fs",
                            self.namespace, exc, backoff.peek())
                self._sleep(backoff.next())
        self.deadlettered += len(letters)

    # -- PostgreSQL --------------------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._drop_connection()
            if self.apply_migrations and not self._migrated:
                applied = migrate(self.postgres, self.namespace)
                if applied:
                    log.info("projector %s: applied migrations %s", self.namespace, applied)
                self._migrated = True
            self._conn = connect(self.postgres, self.namespace, autocommit=False, connect_timeout=5,
                                 application_name="metamorph-projector")
            metrics.dependency_up.labels("projector", "postgres").set(1)
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                log.debug("closing the projector connection failed", exc_info=True)

    def _pg(self, fn: Callable[[psycopg.Connection], T]) -> T:
        """Run ``fn`` on the connection, reconnecting with capped backoff while PostgreSQL is unavailable."""
        backoff = Backoff(0.1, self.max_backoff)
        while True:
            try:
                return fn(self._connection())
            except _PG_DOWN as exc:
                self._pg_failed(exc, backoff.next())

    def _retry_pg(self, fn: Callable[[psycopg.Connection], T]) -> T:
        """``_pg`` that also retries unexpected errors (a bug must stall the projector loudly, not skip data)."""
        backoff = Backoff(0.1, self.max_backoff)
        while True:
            try:
                result = self._pg(fn)
                metrics.projector_stalled.set(0)
                return result
            except (_Stopped, _Unprojectable):
                raise
            except Exception as exc:
                log.exception("projector %s: batch failed (a projection bug stalls here, nothing is skipped); "
                              "retrying in %.1fs", self.namespace, backoff.peek())
                metrics.projector_failures.labels(type(exc).__name__).inc()
                metrics.projector_stalled.set(1)
                self._drop_connection()
                self._sleep(backoff.next())

    def _report_lag_from_log(self) -> None:
        """While PostgreSQL is down nothing is projected, yet events keep arriving: set the lag from the log's
        end offsets (a separate, short-lived consumer; at most every 2 s) so the gauge keeps growing."""
        now = time.monotonic()
        if not self._projected or now - self._lag_from_log_at < 2.0:
            return
        self._lag_from_log_at = now
        try:
            ends = end_offsets(self.kafka, self.topic, sorted(self._projected))
        except Exception as exc:  # Kafka down as well: BrokerWatch reports that
            log.debug("projector %s: no end offsets for the lag (%s)", self.namespace, exc)
            return
        for p, projected in self._projected.items():
            metrics.projector_lag.labels(str(p)).set(max(0, ends.get(p, projected) - projected))

    def _pg_failed(self, exc: Exception, delay: float) -> None:
        self.pg_errors += 1
        self._report_lag_from_log()
        metrics.dependency_up.labels("projector", "postgres").set(0)
        metrics.dependency_errors.labels("projector", "postgres").inc()
        log.warning("projector %s: PostgreSQL unavailable (%s); retrying in %.1fs",
                    self.namespace, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    delay)
        self._drop_connection()
        self._sleep(delay)

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise _Stopped()


def _decode(value: bytes | None) -> tuple[dict | None, str]:
    """The flat event, or None and why it cannot be projected."""
    try:
        event = decode_event(value)  # type: ignore[arg-type]
    except codec.DecodeError as exc:
        return None, str(exc)
    except Exception as exc:  # anything else a malformed record can provoke
        return None, f"{type(exc).__name__}: {exc}"
    if event["type"] != MARKER and (not event.get("workflow_id") or not event.get("run_id")):
        return None, f"invalid event: {event['type']} without workflow_id or run_id"
    return clean(event), ""


def rebuild(
    kafka: str,
    postgres: str,
    namespace: str = "default",
    batch_size: int = 500,
    timeout: float | None = None,
    stop: threading.Event | None = None,
) -> Projector:
    """Project the whole event log into ``postgres`` (a fresh database or one whose schema was dropped).

    It is just a Projector reading every partition from the stored offsets (0 in a fresh schema), outside
    the consumer group so it can run next to the live projector, until it has caught up with the end of
    the log as of the call. A rebuild that was interrupted resumes where it stopped. Returns the (closed)
    projector, whose counters say what was done; raises TimeoutError if ``timeout`` passes first.
    """
    projector = Projector(kafka, postgres, namespace, batch_size, assign=True)
    stop = stop or threading.Event()
    projector._stop = stop
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        consumer = projector._ensure_consumer()
        tps = sorted(consumer.assignment())
        targets = end_offsets(kafka, projector.topic, [tp.partition for tp in tps])
        while not stop.is_set():
            projector.run_once(500)
            done = projector._pg(lambda conn: projector._stored_offsets(conn, list(targets)))
            if all(done.get(p, 0) >= end for p, end in targets.items()):
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"rebuild of {namespace!r} did not catch up within {timeout}s ({done} of {targets})")
    finally:
        projector.close()
    return projector
