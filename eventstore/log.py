"""Appending to and reading from Kafka partitions: the durable half of every step.

A node appends the events of a whole command batch with one flush (acks=all, idempotent producer, so a
retried send can neither duplicate nor reorder), and only then lets anything act on them. Reads go
through a dedicated, group-less consumer so restore and replay never disturb the node's group.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from . import codec
from .payloads import MAX_RECORD_BYTES as MAX_RECORD_BYTES  # re-exported: its home before payloads
from .payloads import PayloadTooLargeError as PayloadTooLargeError  # re-exported: callers catch it here
from .topics import Topics, partition_for

log = logging.getLogger(__name__)

#: Header naming the event type, so tools can filter a topic without decoding Avro.
TYPE_HEADER = "metamorph-type"



def producer(bootstrap: str, **overrides: Any) -> KafkaProducer:
    """The producer every component uses: durable (acks=all) and idempotent."""
    config: dict[str, Any] = dict(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=0,
        max_in_flight_requests_per_connection=5,
        max_request_size=MAX_RECORD_BYTES + 1024,  # the request around one record
        retries=2**31 - 1,
        delivery_timeout_ms=120_000,
        # Topics are created by `metamorph init` with the right partition counts; a broker that
        # auto-creates them on first write would fix the wrong count silently.
        allow_auto_create_topics=False,
        bootstrap_timeout_ms=10_000,
        max_block_ms=20_000,
        client_id=f"metamorph-{uuid.uuid4().hex[:6]}",
    )
    config.update(overrides)
    return KafkaProducer(**config)


def check_size(what: str, data: bytes) -> bytes:
    """Refuse a record above MAX_RECORD_BYTES before it reaches the broker (which would refuse it later)."""
    if len(data) > MAX_RECORD_BYTES:
        raise PayloadTooLargeError(what, len(data), MAX_RECORD_BYTES)
    return data


class EventLog:
    """Append-only access to ``<ns>.events`` for the node that owns the partitions it writes."""

    def __init__(self, bootstrap: str, topics: Topics, partitions: int, kafka_producer: KafkaProducer | None = None):
        self.bootstrap = bootstrap
        self.topics = topics
        self.partitions = partitions
        self._producer = kafka_producer or producer(bootstrap)

    def partition_of(self, workflow_id: str) -> int:
        return partition_for(workflow_id, self.partitions)

    def append(self, partition: int, envelopes: list[dict]) -> list[int]:
        """Append events in order and wait until all are acknowledged; returns their offsets."""
        futures = []
        for env in envelopes:
            data = check_size(f"event {env['event'][0]} of {env['workflow_id']}", codec.encode("metamorph.EventEnvelope", env))
            futures.append(
                self._producer.send(
                    self.topics.events, key=env["workflow_id"].encode(), value=data, partition=partition,
                    headers=[(TYPE_HEADER, env["event"][0].rsplit(".", 1)[1].encode())],
                )
            )
        self._producer.flush()
        return [f.get(timeout=30).offset for f in futures]

    def append_many(
        self, batches: dict[int, list[bytes]], keys: dict[int, list[str]], headers: dict[int, list[list[tuple[str, bytes]]]]
    ) -> dict[int, list[int]]:
        """Append already-encoded events of several partitions with a single flush (one batch, one wait)."""
        futures: dict[int, list[Any]] = {}
        for partition, values in batches.items():
            futures[partition] = [
                self._producer.send(self.topics.events, key=k.encode(), value=v, partition=partition, headers=h)
                for k, v, h in zip(keys[partition], values, headers[partition], strict=True)
            ]
        self._producer.flush()
        return {p: [f.get(timeout=30).offset for f in fs] for p, fs in futures.items()}

    @property
    def kafka_producer(self) -> KafkaProducer:
        return self._producer

    def end_offset(self, partition: int) -> int:
        return end_offsets(self.bootstrap, self.topics.events, [partition])[partition]

    def read(
        self, partition: int, start: int = 0, end: int | None = None, on_error: Callable[[int, Exception, bytes], None] | None = None
    ) -> Iterator[tuple[int, dict]]:
        return read_partition(self.bootstrap, self.topics.events, partition, start, end, "metamorph.EventEnvelope", on_error)

    def close(self) -> None:
        """Flush for up to 5 s and close. Records not acknowledged by then are not lost: the commands that
        led to them were not committed, so the next owner decides them again."""
        try:
            self._producer.close(timeout=5)
        except KafkaError as exc:
            log.warning("closing the event log producer: %s (unacknowledged records are decided again)", exc)


class LogTruncatedError(RuntimeError):
    """The log ends before a position a reader saved: records it had read are gone, or offsets were reused.

    A broker that lost acknowledged writes (a single-copy topic after a disk loss; the embedded noida-db
    after a kill -9) or a topic deleted and recreated looks like this. Reading on would skip or misattribute
    records, so the reader stops that partition and says so; recovery is an operator's decision (runbook:
    ops/README.md, "MetamorphLogTruncated").
    """

    def __init__(self, topic: str, partition: int, saved: int, end: int) -> None:
        super().__init__(
            f"{topic}[{partition}] ends at offset {end} but offset {saved} was already consumed: the log was "
            "truncated or reset; the partition is stopped"
        )
        self.topic, self.partition, self.saved, self.end = topic, partition, saved, end


def check_not_truncated(topic: str, partition: int, saved: int, end: int) -> None:
    """Raise ``LogTruncatedError`` when ``saved`` (the next offset to read) lies beyond ``end``."""
    if saved > end:
        raise LogTruncatedError(topic, partition, saved, end)


def end_offsets(bootstrap: str, topic: str, partitions: list[int]) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def read_partition(
    bootstrap: str,
    topic: str,
    partition: int,
    start: int = 0,
    end: int | None = None,
    expect: str | None = None,
    on_error: Callable[[int, Exception, bytes], None] | None = None,
) -> Iterator[tuple[int, dict]]:
    """Yield ``(offset, record)`` from ``start`` up to ``end`` (default: the end when called).

    An undecodable record is reported to ``on_error`` (which usually dead-letters it) and skipped, so one
    bad record never stops a restore.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    tp = TopicPartition(topic, partition)
    try:
        consumer.assign([tp])
        if end is None:
            end = consumer.end_offsets([tp])[tp]
        if start >= end:
            return
        consumer.seek(tp, start)
        position = start
        while position < end:
            batch = consumer.poll(timeout_ms=1000, max_records=5000).get(tp, [])
            for rec in batch:
                if rec.offset >= end:
                    return
                position = rec.offset + 1
                try:
                    yield rec.offset, codec.registry().decode(rec.value, expect)[1]
                except codec.DecodeError as exc:
                    log.error("undecodable record %s[%d]@%d: %s", topic, partition, rec.offset, exc)
                    if on_error:
                        on_error(rec.offset, exc, rec.value)
    finally:
        consumer.close()
