"""A node: owns command partitions, hosts workflow actors, appends their events, fires their timers.

The life of a command batch (docs/DESIGN.md): poll a batch from the owned ``commands`` partitions, hand each
workflow's commands to its actor, append all resulting events with one flush, then send the messages those
events oblige (activity tasks, child starts, replies) with one flush, then write the partition stores'
checkpoints, then commit the command offsets once. A crash anywhere re-delivers commands, and every handler
is idempotent, so each step happens effectively once.

Kafka decides ownership: the consumer group assigns partitions, and a rebalance is the failover. On
assignment the node restores the partition's store from the event log tail, writes an ownership marker
(epoch = group generation) and only then processes commands.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import socket
import threading
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pykka
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from actors import tracing
from actors.engine.definitions import queue_limits
from actors.engine.dispatch import Message, messages_for_history, task_message
from actors.engine.instance import utcnow
from actors.node.actor import Result, WorkflowActor
from eventstore import codec, groups, metrics, settings
from eventstore import events as ev
from eventstore.backoff import Backoff
from eventstore.deadletter import DeadLetters
from eventstore.fencing import MARKER, MessageFence, epoch_header
from eventstore.log import TYPE_HEADER, EventLog, LogTruncatedError, check_not_truncated, producer
from eventstore.statuses import BY_TERMINAL_EVENT, FINAL
from eventstore.store import PartitionStore
from eventstore.topics import Topics, ensure_topics, leave_group, partition_for

log = logging.getLogger(__name__)

#: Events after which a workflow takes no more steps (continue-as-new goes on in the same actor).
_FINAL_EVENTS = frozenset(kind for kind, status in BY_TERMINAL_EVENT.items() if status in FINAL)


@dataclass
class _Owned:
    store: PartitionStore
    epoch: int


class Node:
    """Runs workflow actors for the partitions Kafka assigns to it (and, by default, activity workers)."""

    def __init__(
        self,
        kafka: str,
        namespace: str = "default",
        data_dir: str | Path = ".metamorph",
        max_live_workflows: int = 1000,
        queues: tuple[str, ...] = ("default",),
        activity_concurrency: int = 32,
        run_activities: bool = True,
        partitions: int | None = None,
        name: str | None = None,
        idle_seconds: float = 60.0,
        max_poll_records: int = 500,
        session_timeout: float | None = None,
        ingress: bool = True,
    ) -> None:
        self.kafka = kafka
        self.run_ingress = ingress  # forward JSON commands from <ns>.ingress (actors.node.ingress)
        self._ingress: Any = None
        self.session_timeout = groups.session_timeout(session_timeout)  # failover time, see eventstore.groups
        self.topics = Topics(namespace)
        self.namespace = namespace
        # The node's identity is its data directory: restarting with the same directory is the same node
        # (same static group membership, so it reclaims its partitions at once, with warm stores).
        base = Path(data_dir).resolve()
        self.name = name or f"{socket.gethostname()}-{hashlib.sha1(str(base).encode()).hexdigest()[:8]}"
        self.data_dir = base / namespace / self.name
        self.max_live = max_live_workflows
        self.queues = tuple(queues)
        self.activity_concurrency = activity_concurrency
        self.run_activities = run_activities
        self.requested_partitions = partitions
        self.idle_seconds = idle_seconds
        self.max_poll_records = max_poll_records
        self._owned: dict[int, _Owned] = {}
        # partition -> the epoch of the last ownership marker this process wrote there. A partition given
        # back to us with no marker above it (nobody else owned it in between) needs no re-dispatch: every
        # attempt we dispatched is still queued or running (see _own).
        self._marked: dict[int, int] = {}
        # partition -> (epoch, marker offset) this process last owned it with, kept after a release: what it
        # sends for that partition is stamped with it (a zombie's messages carry its old epoch, and receivers
        # drop those about events after a newer owner's marker; eventstore.fencing.MessageFence).
        self._epochs: dict[int, tuple[int, int]] = {}
        self._last_offset: dict[int, int] = {}  # partition -> the newest event offset this process knows of
        # Commands that other owners (or this node's own past) sent: dropped when a newer owner has been seen.
        self._command_fence = MessageFence("node")
        # Partitions where this node's last append landed after a newer owner's marker (it is a zombie there):
        # nothing of that batch is applied or sent, and the loop rejoins the group (see _fenced_out).
        self._fenced: set[int] = set()
        self._live: OrderedDict[str, tuple[pykka.ActorRef, int]] = OrderedDict()  # in order of last use
        self._used: dict[str, float] = {}
        # Outcomes of activities this node ran itself (eager dispatch), handed over without the broker.
        self._local_outcomes: queue.SimpleQueue[dict] = queue.SimpleQueue()
        self._activity_prefix = f"{namespace}.activities."
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker: Any = None
        self._log: EventLog | None = None
        self._dead: DeadLetters | None = None
        self._consumer: KafkaConsumer | None = None
        self.error: BaseException | None = None
        self._broker = groups.BrokerWatch("node")

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> Node:
        tracing.configure_from_env()
        counts = ensure_topics(self.kafka, self.namespace, self.requested_partitions, self.queues)
        self.partitions = counts[self.topics.commands]
        self._log = EventLog(self.kafka, self.topics, self.partitions, producer(self.kafka))
        if self.run_activities:
            from actors.activities.worker import ActivityWorker

            self._worker = ActivityWorker(
                self.kafka, self.namespace, self.queues, self.activity_concurrency, name=self.name,
                session_timeout=self.session_timeout,
            ).start()
        if self.run_ingress:
            from actors.node.ingress import IngressForwarder

            self._ingress = IngressForwarder(
                self.kafka, self.topics, self.partitions, self._log.kafka_producer, self._deadletter, self.name,
                self.session_timeout,
            ).start()
        self._thread = threading.Thread(target=self._run, name=f"metamorph-node-{self.name}", daemon=True)
        self._thread.start()
        return self

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """True once the node owns partitions (or the group settled with none for it)."""
        return self._ready.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._worker is not None:
            self._worker.stop()
        if self._ingress is not None:
            self._ingress.stop(timeout)
        for ref, _ in list(self._live.values()):
            ref.stop(block=False)
        self._live.clear()
        self._used.clear()
        metrics.live_workflows.set(0)
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def owned_partitions(self) -> list[int]:
        return sorted(self._owned)

    # -- the loop ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                self._consume()
                return
            except Exception as exc:  # broker gone, commit fenced...: give up ownership, back off, rejoin
                log.exception("node loop failed; rejoining in %.1fs", backoff.peek())
                metrics.dependency_errors.labels("node", "kafka").inc()
                self.error = exc
                self._release(list(self._owned))
                self._stop.wait(backoff.next())

    def _consume(self) -> None:
        consumer = groups.member(
            self.kafka,
            self.topics.node_group,
            self.name,
            session_timeout_s=self.session_timeout,
            client_id=f"metamorph-node-{self.name}",
            max_poll_records=self.max_poll_records,
            fetch_max_wait_ms=settings.get("METAMORPH_FETCH_WAIT_MS"),
            max_poll_interval_ms=300_000,
        )
        self._consumer = consumer
        self._broker.watch(consumer)
        consumer.subscribe([self.topics.commands], listener=_Listener(self, consumer))
        try:
            while not self._stop.is_set():
                batch = groups.poll(consumer, self._poll_timeout_ms())
                if batch:
                    self._handle_records(consumer, batch)
                self._local_results()
                self._fire_timers()
                self._passivate_idle()
                self._gauges(consumer)
                if self._owned or groups.settled(consumer):
                    self._ready.set()
                if self._fenced:
                    fenced, self._fenced = sorted(self._fenced), set()
                    raise FencedOutError(f"node {self.name} was fenced out of partition(s) {fenced} by a newer owner")
        finally:
            self._release(list(self._owned))
            metrics.forget_lag(consumer, "node")
            consumer.close(autocommit=False)
            if self._stop.is_set():
                leave_group(self.kafka, self.topics.node_group, self.name)

    def _gauges(self, consumer: KafkaConsumer) -> None:
        """Lag and timer gauges, sampled about once a second (cheap: highwater comes with fetches)."""
        now = time.monotonic()
        if now - getattr(self, "_gauged", 0.0) < 1.0:
            return
        self._gauged = now
        self._broker.check(consumer)
        metrics.report_lag(consumer, "node")
        for partition, owned in self._owned.items():
            metrics.timers_pending.labels(str(partition)).set(owned.store.timer_count())
        if now - getattr(self, "_counted_open", float("-inf")) >= 5.0:
            self._counted_open = now  # a COUNT over the partition's workflows: every 5 s is enough
            passivated = 0
            for partition, owned in self._owned.items():
                live = [wid for wid, (_ref, p) in self._live.items() if p == partition]
                passivated += owned.store.open_count(exclude=live)
            metrics.passivated_workflows.set(passivated)
            for partition, owned in self._owned.items():
                metrics.blocked_workflows.labels(str(partition)).set(len(owned.store.blocked()))

    def _poll_timeout_ms(self) -> int:
        if not self._local_outcomes.empty():
            return 0
        if self._worker is not None and self._worker.local_in_flight():
            return 1  # an activity of ours is running: look for its outcome often
        nxt = [o.store.next_timer_ms() for o in self._owned.values()]
        due = [n for n in nxt if n is not None]
        if not due:
            return 200
        wait = min(due) - int(time.time() * 1000)
        return max(0, min(200, wait))

    # -- ownership ---------------------------------------------------------------------------------------
    def _own(self, partition: int, generation: int) -> None:
        assert self._log is not None
        started = time.perf_counter()
        store = PartitionStore(self.data_dir / f"partition-{partition}.sqlite", partition)
        try:
            check_not_truncated(self.topics.events, partition, store.checkpoint, self._log.end_offset(partition))
        except LogTruncatedError as exc:
            store.close()
            self._stop_partition(partition, exc)
            return
        metrics.log_truncated.labels("node", str(partition)).set(0)
        tail = store.restore(self._log.read(partition, store.checkpoint, on_error=self._deadletter_event(partition)))
        epoch = max(generation, store.fence.epoch + 1)
        now = utcnow()
        marker = ev.ownership_marker(partition, epoch, self.name, now)
        offset = self._log.append(partition, [ev.to_envelope(marker, "", epoch, self.name)])[0]
        # A previous owner may have written between our read and our marker: those events precede the
        # marker, so they are history; read them before going on.
        tail += store.restore(self._log.read(partition, store.checkpoint, offset, on_error=self._deadletter_event(partition)))
        # The same owner again: this process wrote the highest marker before ours, so the partition was only
        # re-assigned to us (a rebalance of the group, e.g. a restarted member rejoining in steps), not owned
        # by anyone else in between. Its attempts in flight are still queued or running here.
        again = self._marked.get(partition) == store.fence.epoch
        marker["epoch"], marker["workflow_id"] = epoch, ""
        store.apply([(offset, marker)])
        if not again:
            store.reset_heartbeats(now)
        self._owned[partition] = _Owned(store, epoch)
        self._epochs[partition] = (epoch, offset)
        self._last_offset[partition] = offset
        self._command_fence.observe(partition, epoch, offset)  # an earlier owner's later sends are stale now
        if store.fence.epoch == epoch:
            self._marked[partition] = epoch
        else:  # our marker lost to a higher one written meanwhile: that owner's attempts are not ours
            self._marked.pop(partition, None)
        metrics.restored_records.labels(str(partition)).inc(store.restored_records)
        self._redispatch(store, tail, in_flight=not again)
        self._flush_dead_letters()
        blocked = store.blocked()
        if blocked:  # new code may have been deployed: try each blocked workflow again
            self._process({partition: OrderedDict((wid, []) for wid in blocked)})
        metrics.restore_seconds.labels(str(partition)).observe(time.perf_counter() - started)
        metrics.owned_partitions.set(len(self._owned))
        log.info("node %s owns partition %d (epoch %d), restored %d records", self.name, partition, epoch, len(tail))

    def _stop_partition(self, partition: int, reason: Exception) -> None:
        """Own nothing of ``partition`` and consume none of its commands (they stay in Kafka, uncommitted),
        with an ERROR log and ``metamorph_log_truncated``; a later assignment checks again."""
        log.error("node %s: %s", self.name, reason)
        metrics.log_truncated.labels("node", str(partition)).set(1)
        if self._consumer is not None:
            self._consumer.pause(TopicPartition(self.topics.commands, partition))

    def _redispatch(self, store: PartitionStore, tail: list[dict], in_flight: bool = True) -> None:
        """Send again what a crash may have lost; every receiver deduplicates.

        Messages owed by events after the checkpoint may never have left, and any attempt in flight may
        have been running inside the previous owner (eager dispatch), so every unsettled attempt is
        dispatched again: activities are at-least-once, their results are recorded once.

        Only once per real change of owner (``in_flight``): when this process is given back a partition
        that nobody else owned since it did, its attempts are still queued or running, and sending them
        again ran each one once more per assignment callback (a restarted node is assigned its partitions
        more than once; issue 15). Then only attempts decided in the tail are sent.
        """
        by_wf: dict[str, list[dict]] = defaultdict(list)
        for e in tail:
            if e["type"] not in ("OwnershipMarker", "ActivityScheduled", "ActivityRetried"):
                by_wf[e["workflow_id"]].append(e)
        histories: dict[str, list[dict]] = {}
        messages: list[Message] = []
        for wid, events in by_wf.items():
            histories[wid] = store.history(wid)
            messages.extend(messages_for_history(self.topics, wid, histories[wid], events))
        now = utcnow()
        # Attempts decided after the checkpoint may never have been sent, even to the same owner.
        fresh = {(e["workflow_id"], e["run_id"], e["activity_id"]) for e in tail if e["type"] in ("ActivityScheduled", "ActivityRetried")}
        for wid, run, activity_id, attempt in store.in_flight():
            if not in_flight and (wid, run, activity_id) not in fresh:
                continue
            history = histories.get(wid) or histories.setdefault(wid, store.history(wid))
            started = next((e for e in history if e["type"] == "WorkflowStarted" and e["run_id"] == run), None)
            scheduled = next(
                (e for e in history if e["type"] == "ActivityScheduled" and e["activity_id"] == activity_id and e["run_id"] == run), None
            )
            if started is not None and scheduled is not None:
                task = task_message(self.topics, wid, started["workflow_type"], scheduled, attempt, now, started.get("priority"))
                messages.append(replace(task, headers=tracing.headers_of(started.get("trace"))))
        marker = self._epochs[store.partition][1]
        self._send([replace(m, origin=store.partition, origin_offset=marker) for m in messages])

    def _release(self, partitions: list[int]) -> None:
        for partition in partitions:
            owned = self._owned.pop(partition, None)
            for wid, (ref, p) in list(self._live.items()):
                if p == partition:
                    ref.stop(block=False)
                    del self._live[wid]
                    self._used.pop(wid, None)
            if owned is not None:
                owned.store.close()
            with contextlib.suppress(KeyError):
                metrics.timers_pending.remove(str(partition))
            with contextlib.suppress(KeyError):
                metrics.blocked_workflows.remove(str(partition))
        metrics.owned_partitions.set(len(self._owned))
        metrics.live_workflows.set(len(self._live))
        if not self._owned:
            metrics.passivated_workflows.set(0)

    # -- processing --------------------------------------------------------------------------------------
    def _handle_records(self, consumer: KafkaConsumer, batch: dict[TopicPartition, list[Any]]) -> None:
        started = time.perf_counter()
        groups: dict[int, OrderedDict[str, list[dict]]] = {}
        commits: dict[TopicPartition, OffsetAndMetadata] = {}
        rerouted: list[Any] = []
        for tp, records in batch.items():
            if tp.partition not in self._owned:
                continue  # revoked during this poll; the new owner re-reads these
            per_wf: OrderedDict[str, list[dict]] = OrderedDict()
            for rec in records:
                if not self._command_fence.admit(tp.topic, getattr(rec, "headers", None)):
                    continue  # a former owner's, about an event after a newer owner's marker: not history
                try:
                    command = ev.flat_command(codec.decode(rec.value, "metamorph.CommandEnvelope"))
                except codec.DecodeError as exc:
                    self._deadletter(tp.topic, tp.partition, rec.offset, f"undecodable command: {exc}", rec.key, rec.value, "undecodable")
                    continue
                if rec.headers:  # a traced sender (actors.tracing): the step it causes joins its trace
                    trace = tracing.carrier_of(rec.headers)
                    if trace:
                        command["_trace"] = trace
                home = partition_for(command["workflow_id"], self.partitions)
                if home != tp.partition:
                    rerouted.append(self._reroute(tp, rec, home))
                    continue
                per_wf.setdefault(command["workflow_id"], []).append(command)
            groups[tp.partition] = per_wf
            commits[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
            metrics.commands_consumed.labels(str(tp.partition)).inc(len(records))
        self._process(groups)
        self._flush_dead_letters()  # acknowledged before the offsets move past the records they replace
        for future in rerouted:
            future.get(timeout=30)  # likewise: a re-routed command is durable in its partition before we commit
        commits = {tp: o for tp, o in commits.items() if tp.partition not in self._fenced}  # the new owner's now
        try:
            consumer.commit(commits)
        except CommitFailedError:
            log.warning("offset commit refused (partitions moved); the new owner will re-read and deduplicate")
        metrics.batch_seconds.observe(time.perf_counter() - started)

    def _reroute(self, tp: TopicPartition, rec: Any, home: int) -> Any:
        """Send a command that arrived on the wrong partition to the one its workflow id maps to.

        Every partitioning decision rests on ``partition_for`` (murmur2, Kafka's Java default). A producer with
        another partitioner (librdkafka's default is CRC32-based) puts commands where no history of their
        workflow is: deciding them here would split one workflow across two partitions. The record goes, byte
        for byte, to its home partition, where the owner handles it like any other (and deduplicates it).
        """
        assert self._log is not None
        log.warning("command for %r arrived on %s[%d] but belongs to partition %d: re-routed",
                    rec.key.decode(errors="replace") if rec.key else None, tp.topic, tp.partition, home)
        metrics.rerouted_commands.inc()
        return self._log.kafka_producer.send(tp.topic, key=rec.key, value=rec.value, partition=home, headers=rec.headers or None)

    def _process(
        self,
        groups: dict[int, OrderedDict[str, list[dict]]],
        fired: dict[int, list[tuple[str, str, str, int]]] | None = None,
    ) -> None:
        """Run commands through actors, then append, send, checkpoint — in that order."""
        fired = fired or {}
        asks: list[tuple[int, str, Any]] = []
        for partition, per_wf in groups.items():
            for wid, commands in per_wf.items():
                answered = self._answer_queries_passivated(partition, wid, commands)
                if answered is not None:
                    asks.extend((partition, wid, done) for done in answered)
                    continue
                ref, loaded = self._actor(wid, partition)
                if loaded is not None:
                    asks.append((partition, wid, loaded))
                if commands:
                    asks.append((partition, wid, ref.ask(("handle", commands), block=False)))
        events: dict[int, list[dict]] = defaultdict(list)
        obliged: list[tuple[Message, int, int]] = []  # (message, partition, index of its last event in events[p])
        heartbeats: dict[int, list[tuple[str, str, int, int, datetime]]] = defaultdict(list)
        ended: dict[str, bool] = {}  # workflow id -> its last event in this batch ended it for good
        for partition, wid, future in asks:
            result: Result = future.get()
            if result.events:
                ended[wid] = result.events[-1]["type"] in _FINAL_EVENTS
            for e in result.events:
                e["workflow_id"] = wid
                e["epoch"] = self._owned[partition].epoch
                e["node"] = self.name
                _count(e, result.workflow_type or "?", result.started_at, wid)
            events[partition].extend(result.events)
            obliged.extend((m, partition, len(events[partition]) - 1) for m in result.messages)
            for beat in result.heartbeats:  # (activity_id, attempt, at[, waiting])
                heartbeats[partition].append((wid, result.run_id or "", *beat))
            for command, reason in result.rejected:
                metrics.rejected_commands.labels(command["type"]).inc()
                self._deadletter_command(command, reason)
            if result.replayed_events:
                metrics.replay_seconds.observe(result.replay_seconds)
                metrics.replayed_events.inc(result.replayed_events)
        # Durable first, then act on it, then move the checkpoint: a crash before the checkpoint leaves
        # these events in the log tail, and restore sends their messages again.
        offsets = self._append(events)
        fenced = self._fenced_out(offsets)
        for p, written in offsets.items():
            if written:
                self._last_offset[p] = written[-1]
        messages = [
            replace(m, origin=p, origin_offset=offsets[p][i] if i >= 0 and offsets.get(p) else self._last_offset.get(p, -1))
            for m, p, i in obliged
            if p not in fenced  # a zombie's messages about fenced events must not leave
        ]  # fmt: skip
        self._send(messages)
        self._flush_dead_letters()  # rejected commands: durable before the checkpoint and any commit
        for partition in set(events) | set(fired) | set(heartbeats):
            owned = self._owned.get(partition)
            if owned is None or partition in fenced:
                continue  # never put fenced events in the store: it would hold history no reader has
            records = list(zip(offsets.get(partition, []), events.get(partition, []), strict=True))
            owned.store.apply(records, fired.get(partition, ()))
            owned.store.heartbeat(heartbeats.get(partition, ()))
            metrics.events_appended.labels(str(partition)).inc(len(records))
        self._stop_finished([wid for wid, done in ended.items() if done])
        self._evict()

    def _fenced_out(self, offsets: dict[int, list[int]]) -> set[int]:
        """Partitions where the append just made landed after a newer owner's marker: here we are a zombie.

        Only the owner writes its partition, so an append that does not follow the last offset this node
        wrote or read means another writer came in between. If that includes an ownership marker of a higher
        epoch (the group gave the partition to another node while this one was paused or cut off), the batch
        is fenced out of history: every reader drops it. Applying it to the store anyway made the store hold
        events no reader has -- a start that the projection never sees, and that the store then deduplicates
        for ever once this node owns the partition again (found by bench/soak.py under a broker stall). The
        caller applies and sends nothing of such a partition and the loop rejoins the group; the next
        restore reads the log from the store's checkpoint, fenced events included, through the fence.
        """
        fenced: set[int] = set()
        assert self._log is not None
        for p, written in offsets.items():
            last = self._last_offset.get(p)
            if not written or last is None or written[0] == last + 1:
                continue
            mine = self._owned[p].epoch if p in self._owned else self._epochs.get(p, (-1, -1))[0]
            for _offset, envelope in self._log.read(p, last + 1, written[0]):
                kind, body = envelope["event"]
                if kind == MARKER and body["epoch"] > mine:
                    fenced.add(p)
                    break
        if fenced:
            log.error("node %s: partition(s) %s now belong to a newer owner; the batch just appended is fenced out "
                      "of history: not applied, not sent; rejoining the group", self.name, sorted(fenced))
            metrics.fenced_batches.inc(len(fenced))
            self._fenced |= fenced
        return fenced

    def _stop_finished(self, workflow_ids: list[str]) -> None:
        """Stop the actors of workflows that just ended: they take no more steps, and left in the LRU they
        push out open workflows that do (1,000 schedules firing short runs evicted every schedule, which
        then replayed its whole history at each firing). A late query or start is served from the store."""
        for wid in workflow_ids:
            entry = self._live.pop(wid, None)
            if entry is not None:
                self._used.pop(wid, None)
                entry[0].stop(block=False)
                metrics.passivations.labels("finished").inc()

    def _append(self, events: dict[int, list[dict]]) -> dict[int, list[int]]:
        assert self._log is not None
        encoded: dict[int, list[bytes]] = {}
        for p, es in events.items():
            for e in es:
                # Kept on the event so the partition store files the same bytes instead of encoding again.
                e["_encoded"] = ev.encode_event(e, e["workflow_id"], e["epoch"], self.name)
            if es:
                encoded[p] = [e["_encoded"] for e in es]
        if not encoded:
            return {}
        keys = {p: [e["workflow_id"] for e in events[p]] for p in encoded}
        headers = {p: [[(TYPE_HEADER, e["type"].encode())] for e in events[p]] for p in encoded}
        return self._log.append_many(encoded, keys, headers)

    def _send(self, messages: list[Message]) -> None:
        """Send what events oblige, each stamped with this node's epoch for its origin partition.

        The one place a node produces messages, so every kind (tasks, cancellations, commands to other
        workflows, replies, and any added later) is fenced: receivers drop those of a former owner.
        """
        if not messages or self._log is None:
            return
        kafka_producer = self._log.kafka_producer
        sent = 0
        for m in messages:
            worker = self._worker
            if worker is not None and m.topic.startswith(self._activity_prefix) and worker.try_local(
                m.value, self._local_outcomes.put, m.headers
            ):
                continue  # eager dispatch: our own worker serves this queue and has room
            if self._worker is not None and m.topic == self.topics.cancels:
                # Our own worker may be running it (eager dispatch): tell it now; others read the topic.
                c = codec.decode(m.value, "metamorph.ActivityCancel")
                self._worker.cancel(c["workflow_id"], c["run_id"], c["activity_id"])
            headers = list(m.headers) if m.headers else None  # the trace context (actors.tracing), if any
            if m.origin is not None and m.origin in self._epochs:
                epoch, marker = self._epochs[m.origin]
                headers = [*(headers or ()), epoch_header(m.origin, epoch, marker, max(m.origin_offset, marker))]
            kafka_producer.send(m.topic, key=m.key.encode(), value=m.value, partition=self._partition(m), headers=headers)
            sent += 1
        if sent:
            kafka_producer.flush()

    def _partition(self, m: Message) -> int | None:
        from eventstore.topics import partition_for

        if m.topic.startswith(self._activity_prefix):
            # A queue with limits uses only as many partitions as each limit can give one unit to (docs/API.md §9).
            limits = queue_limits(m.topic.removeprefix(self._activity_prefix))
            return partition_for(m.key, limits.routed_partitions(self.partitions) if limits else self.partitions)
        if m.topic in (self.topics.commands, self.topics.replies):
            return partition_for(m.key, self.partitions)
        if m.topic == self.topics.cancels:
            return 0
        return None

    # -- actors ------------------------------------------------------------------------------------------
    def _actor(self, wid: str, partition: int) -> tuple[pykka.ActorRef, Any]:
        self._used[wid] = time.monotonic()
        entry = self._live.get(wid)
        if entry is not None:
            self._live.move_to_end(wid)
            return entry[0], None
        history = self._owned[partition].store.history(wid)
        ref = WorkflowActor.start(wid, self.topics)
        self._live[wid] = (ref, partition)
        metrics.live_workflows.set(len(self._live))
        return ref, (ref.ask(("load", history), block=False) if history else None)

    def _answer_queries_passivated(self, partition: int, wid: str, commands: list[dict]) -> list[Any] | None:
        """Answer queries to a passivated workflow without waking it: replay into a throw-away instance.

        Waking a workflow for a query costs an actor start and stop, and the new actor pushes a workflow
        that is doing real work out of the LRU; a dashboard or a restart check asking 10,000 idle
        workflows did exactly that. Only a batch of nothing but queries qualifies (anything else must see
        the commands in order), and only if the replay decides nothing new (a crash cut a batch short):
        otherwise, and on any error, the workflow gets its actor as usual. Returns completed futures.
        """
        if wid in self._live or not commands or any(c["type"] != "QueryWorkflow" for c in commands):
            return None
        history = self._owned[partition].store.history(wid)
        transient = WorkflowActor(wid, self.topics)  # never started: its methods run in this thread
        try:
            # An unknown id has no history: it is answered WorkflowNotFound without an actor too.
            loaded = transient.on_receive(("load", history)) if history else Result()
            if loaded.events:
                return None
            answered = transient.on_receive(("handle", commands))
        except Exception:
            log.exception("answering queries to passivated %s inline failed; waking it instead", wid)
            return None
        if answered.events:  # a query decides nothing; be safe if that ever changes
            return None
        metrics.passivated_queries.inc(len(commands))
        return [_done(loaded), _done(answered)]

    def _evict(self) -> None:
        while len(self._live) > self.max_live:
            wid, (ref, _p) = self._live.popitem(last=False)
            self._used.pop(wid, None)
            ref.stop(block=False)
            metrics.passivations.labels("lru").inc()
        metrics.live_workflows.set(len(self._live))

    def _passivate_idle(self) -> None:
        """Stop actors idle for ``idle_seconds``; ``_live`` is in use order, so only its head is looked at."""
        if self.idle_seconds <= 0:
            return
        horizon = time.monotonic() - self.idle_seconds
        while self._live:
            wid = next(iter(self._live))
            if self._used.get(wid, 0.0) > horizon:
                break
            ref, _partition = self._live.pop(wid)
            self._used.pop(wid, None)
            ref.stop(block=False)
            metrics.passivations.labels("idle").inc()
        metrics.live_workflows.set(len(self._live))

    def _local_results(self) -> None:
        """Process outcomes of eagerly dispatched activities like commands (they are idempotent the same way)."""
        if self._local_outcomes.empty():
            return
        groups: dict[int, OrderedDict[str, list[dict]]] = {}
        elsewhere: list[dict] = []
        while not self._local_outcomes.empty():
            command = self._local_outcomes.get_nowait()
            partition = partition_for(command["workflow_id"], self.partitions)
            if partition in self._owned:
                groups.setdefault(partition, OrderedDict()).setdefault(command["workflow_id"], []).append(command)
                metrics.commands_consumed.labels(str(partition)).inc()
            else:
                elsewhere.append(command)  # the partition moved while the activity ran: tell the new owner
        if elsewhere:
            self._send([_as_message(self.topics, c) for c in elsewhere])
        if groups:
            self._process(groups)

    # -- timers ------------------------------------------------------------------------------------------
    def _fire_timers(self) -> None:
        now_ms = int(time.time() * 1000)
        groups: dict[int, OrderedDict[str, list[dict]]] = {}
        fired: dict[int, list[tuple[str, str, str, int]]] = {}
        at = utcnow()
        for partition, owned in self._owned.items():
            due = owned.store.due_timers(now_ms)
            if not due:
                continue
            per_wf: OrderedDict[str, list[dict]] = OrderedDict()
            for wid, run, kind, timer_id, attempt, fire_at in due:
                metrics.timer_lateness.observe(max(0, now_ms - fire_at) / 1000)
                per_wf.setdefault(wid, []).append({
                    "type": "FireTimer", "command_id": f"timer:{run}:{kind}:{timer_id}:{attempt}", "workflow_id": wid,
                    "at": at, "run_id": run, "timer_id": timer_id, "kind": kind, "attempt": attempt,
                })
                metrics.timers_fired.labels(kind).inc()
            groups[partition] = per_wf
            fired[partition] = [(wid, run, kind, timer_id) for wid, run, kind, timer_id, _, _ in due]
        if groups:
            self._process(groups, fired)

    # -- bad input -----------------------------------------------------------------------------------------
    def _deadletter(self, topic: str, partition: int, offset: int, reason: str, key: bytes | None, value: bytes, label: str) -> Any:
        """Send a DeadLetter record; returns the send's future (the ingress forwarder waits for its ack)."""
        assert self._log is not None
        if self._dead is None:
            self._dead = DeadLetters(self._log.kafka_producer, self.topics.deadletter, "node")
        return self._dead.add(topic, partition, offset, reason, key, value, label)

    def _flush_dead_letters(self) -> None:
        """Wait for the broker to acknowledge the dead letters sent so far; raises (no commit) if it did not."""
        if self._dead is not None:
            self._dead.flush()

    def _deadletter_command(self, command: dict, reason: str) -> None:
        body = {k: v for k, v in command.items() if k not in ("type", "command_id", "workflow_id", "at")}
        try:
            envelope = ev.command(command["type"], command["workflow_id"], command["command_id"], command.get("at") or datetime.now(UTC), **body)
            value = codec.encode("metamorph.CommandEnvelope", envelope)
        except Exception:
            value = b""
        self._deadletter(self.topics.commands, -1, -1, f"{command['type']} rejected: {reason}", command["workflow_id"].encode(), value, "rejected")

    def _deadletter_event(self, partition: int) -> Any:
        def report(offset: int, exc: Exception, value: bytes) -> None:
            self._deadletter(self.topics.events, partition, offset, f"undecodable event: {exc}", None, value, "undecodable")

        return report


class FencedOutError(RuntimeError):
    """This node wrote to a partition after a newer owner's marker: it leaves the group and joins again."""


def _done(result: Result) -> pykka.Future:
    future: pykka.Future = pykka.ThreadingFuture()
    future.set(result)
    return future


def _as_message(topics: Topics, command: dict) -> Message:
    body = {k: v for k, v in command.items() if k not in ("type", "command_id", "workflow_id", "at")}
    envelope = ev.command(command["type"], command["workflow_id"], command["command_id"], command["at"], **body)
    return Message(topics.commands, command["workflow_id"], codec.encode("metamorph.CommandEnvelope", envelope),
                   headers=tracing.headers_of(command.get("_trace")))


def _count(e: dict, workflow_type: str, started_at: Any = None, workflow_id: str = "?") -> None:
    kind = e["type"]
    if kind == "WorkflowStarted":
        metrics.workflows_started.labels(workflow_type).inc()
    elif kind in ("WorkflowCompleted", "WorkflowFailed", "WorkflowCancelled", "WorkflowTerminated", "WorkflowContinued",
                  "WorkflowTimedOut"):
        metrics.workflows_closed.labels(workflow_type, kind.removeprefix("Workflow").lower()).inc()
        if kind == "WorkflowCompleted" and started_at is not None:
            seconds = _seconds(e.get("at")) - _seconds(started_at)
            metrics.workflow_duration.labels(workflow_type).observe(max(0.0, seconds))
    elif kind == "WorkflowBlocked":
        # Blocked is not failed: nothing is lost and nothing runs until a node with fitting code owns the
        # workflow, so say it once at WARNING (an operator's to-do, not a crash) and count it by reason.
        reason = e.get("error_type") or "Unknown"
        log.warning("workflow %s (%s) is blocked: %s: %s", workflow_id, workflow_type, reason, e.get("message") or "")
        metrics.workflows_blocked.labels(workflow_type, reason).inc()
        metrics.nondeterminism.labels(workflow_type).inc()


def _seconds(at: Any) -> float:
    """An event time (datetime, or epoch milliseconds) as epoch seconds; now if missing."""
    if isinstance(at, datetime):
        return at.timestamp()
    if isinstance(at, int | float):
        return at / 1000
    return time.time()


class _Listener(ConsumerRebalanceListener):
    def __init__(self, node: Node, consumer: KafkaConsumer) -> None:
        self.node = node
        self.consumer = consumer

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.node._release([tp.partition for tp in revoked])

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        generation = self.consumer.group_metadata().generation_id
        for tp in sorted(assigned, key=lambda t: t.partition):
            if tp.partition not in self.node._owned:
                try:
                    self.node._own(tp.partition, generation)
                except KafkaError:
                    log.exception("restore of partition %d failed", tp.partition)
                    raise
        self.node._ready.set()

    def on_partitions_lost(self, lost: list[TopicPartition]) -> None:
        self.node._release([tp.partition for tp in lost])
