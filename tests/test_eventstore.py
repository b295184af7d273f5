"""The event store against the real embedded broker: codec, topics, the log, restore and fencing."""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime

import fastavro
import pytest
from kafka import KafkaConsumer, TopicPartition

from eventstore import codec, groups
from eventstore import events as ev
from eventstore.log import TYPE_HEADER, EventLog, read_partition
from eventstore.store import PartitionStore
from eventstore.topics import TopicMismatchError, Topics, ensure_topics, partition_for

NOW = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def _sample(field_type: object, name: str) -> object:
    """A value for an Avro field type (the non-null branch of optional fields, to exercise it)."""
    if isinstance(field_type, list):
        return _sample(next(t for t in field_type if t != "null"), name)
    if isinstance(field_type, dict):
        if field_type.get("logicalType") == "timestamp-millis":
            return NOW
        if field_type["type"] == "array":
            return [_sample(field_type["items"], name)]
        if field_type["type"] == "map":
            return {"k": _sample(field_type["values"], name)}
        return _sample(field_type["type"], name)
    return {"string": f"{name}-x", "long": 42, "int": 7, "double": 1.5, "boolean": True, "bytes": b'["payload"]'}[field_type]  # type: ignore[index]


def _record(schema: dict) -> dict:
    return {f["name"]: _sample(f["type"], f["name"]) for f in schema["fields"]}


def _named(top: str) -> dict:
    return codec.registry().schema(top)["__named_schemas"]


@pytest.mark.parametrize("kind", sorted(n for n in _named("metamorph.EventEnvelope") if n.startswith("metamorph.events.")))
def test_every_event_type_round_trips(kind):
    body = _record(_named("metamorph.EventEnvelope")[kind])
    envelope = {"workflow_id": "w", "run_id": "r", "seq": 3, "epoch": 2, "at": NOW, "status": "running", "node": "n", "event": (kind, body)}
    data = codec.encode("metamorph.EventEnvelope", envelope)
    assert data[:2] == b"\xc3\x01" and data[2:10] == codec.registry().fingerprint("metamorph.EventEnvelope")
    assert codec.decode(data, "metamorph.EventEnvelope") == envelope


@pytest.mark.parametrize("kind", sorted(n for n in _named("metamorph.CommandEnvelope") if n.startswith("metamorph.commands.")))
def test_every_command_type_round_trips(kind):
    envelope = {"command_id": "c", "workflow_id": "w", "at": NOW, "command": (kind, _record(_named("metamorph.CommandEnvelope")[kind]))}
    assert codec.decode(codec.encode("metamorph.CommandEnvelope", envelope)) == envelope


@pytest.mark.parametrize("top", ["metamorph.ActivityTask", "metamorph.Reply", "metamorph.DeadLetter"])
def test_other_records_round_trip(top):
    record = _record(codec.registry().schema(top))
    assert codec.decode(codec.encode(top, record), top) == record


def test_an_event_written_with_schema_v1_is_read_by_v2_code():
    v1 = json.loads((codec.SCHEMA_DIR / "history" / "metamorph.EventEnvelope.v1.avsc").read_text())
    assert "node" not in [f["name"] for f in v1["fields"]]
    old = {"workflow_id": "w", "run_id": "r", "seq": 1, "epoch": 0, "at": NOW, "status": None,
           "event": ("metamorph.events.TimerFired", {"timer_id": 9})}
    data = codec.registry().encode("metamorph.EventEnvelope", old, schema=v1)
    assert data[2:10] != codec.registry().fingerprint("metamorph.EventEnvelope")  # really the old writer schema
    decoded = ev.decode_event(data)
    assert decoded["type"] == "TimerFired" and decoded["timer_id"] == 9
    assert decoded["node"] == ""  # the field v2 added, filled with its default


def test_unknown_fingerprint_and_garbage_are_rejected_clearly():
    foreign = {"type": "record", "name": "Foreign", "fields": [{"name": "x", "type": "long"}]}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(foreign), {"x": 1})
    fp = bytes.fromhex(fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(foreign)), "CRC-64-AVRO"))
    with pytest.raises(codec.UnknownSchemaError) as unknown:
        codec.decode(b"\xc3\x01" + fp + buf.getvalue())
    assert fp.hex() in str(unknown.value)
    with pytest.raises(codec.DecodeError, match="not Avro single-object"):
        codec.decode(b"definitely not avro bytes")
    with pytest.raises(codec.DecodeError, match="not a Metamorph record"):
        codec.decode(b"\xc3\x01")
    good = codec.encode("metamorph.Reply", {"request_id": "r", "ok": True, "result": b"1", "error_type": None, "message": None})
    with pytest.raises(codec.DecodeError, match="corrupt"):
        codec.decode(good[:11])
    with pytest.raises(codec.DecodeError, match="expected a metamorph.EventEnvelope"):
        codec.decode(good, "metamorph.EventEnvelope")


def test_topic_creation_is_idempotent_and_mismatches_are_refused(kafka, namespace):
    first = ensure_topics(kafka, namespace, partitions=4)
    again = ensure_topics(kafka, namespace, partitions=4)
    joined = ensure_topics(kafka, namespace)  # no count given: join what exists
    t = Topics(namespace)
    assert first == again == joined
    assert first[t.commands] == first[t.events] == 4
    assert {t.replies, t.deadletter, t.activities("default")} <= set(first)
    with pytest.raises(TopicMismatchError, match="4 partitions, but 6 were asked"):
        ensure_topics(kafka, namespace, partitions=6)


def _event(seq: int) -> dict:
    if seq == 1:
        return {"type": "WorkflowStarted", "seq": 1, "at": NOW, "run_id": "r1", "workflow_type": "T", "input": b"[]",
                "command_id": "c1", "parent_id": None, "parent_run_id": None, "parent_ref": None, "continued_from": None}
    return {"type": "TimerStarted", "seq": seq, "at": NOW, "run_id": "r1", "timer_id": seq, "fire_at": 10_000 + seq}


def _events(workflow_id: str, n: int, epoch: int = 1, start: int = 1) -> list[dict]:
    """A run's history: WorkflowStarted at seq 1, then timers (each leaves a durable timer in the store)."""
    return [ev.to_envelope(_event(start + i), workflow_id, epoch) for i in range(n)]


def test_append_then_read_back_in_order_with_keys_and_headers(kafka, namespace):
    ensure_topics(kafka, namespace, partitions=2)
    log = EventLog(kafka, Topics(namespace), 2)
    p = partition_for("wf-a", 2)
    offsets = log.append(p, _events("wf-a", 5))
    assert offsets == sorted(offsets) and len(set(offsets)) == 5
    read = list(log.read(p))
    assert [e["seq"] for _, e in read] == [1, 2, 3, 4, 5]
    consumer = KafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False)
    tp = TopicPartition(Topics(namespace).events, p)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    records = []
    while len(records) < 5:
        records += consumer.poll(timeout_ms=2000).get(tp, [])
    consumer.close()
    assert {r.key for r in records} == {b"wf-a"}
    assert [dict(r.headers)[TYPE_HEADER] for r in records] == [b"WorkflowStarted"] + [b"TimerStarted"] * 4
    log.close()


def test_store_restores_after_graceful_broker_restart_with_nothing_lost(kafka_server, namespace, tmp_path):
    ensure_topics(kafka_server.bootstrap, namespace, partitions=1)
    log = EventLog(kafka_server.bootstrap, Topics(namespace), 1)
    log.append(0, _events("wf-r", 20))
    log.close()
    kafka_server.restart()  # SIGTERM: the broker saves, then comes back on the same port
    store = PartitionStore(tmp_path / "p0.sqlite", 0)
    store.restore(read_partition(kafka_server.bootstrap, Topics(namespace).events, 0, store.checkpoint))
    history = store.history("wf-r")
    assert [e["seq"] for e in history] == list(range(1, 21))
    assert store.checkpoint == 20
    assert store.timer_count() == 19
    store.close()


def test_restore_from_the_checkpoint_reads_only_the_tail(kafka, namespace, tmp_path):
    ensure_topics(kafka, namespace, partitions=1)
    topic = Topics(namespace).events
    log = EventLog(kafka, Topics(namespace), 1)
    log.append(0, _events("wf-t", 30))
    store = PartitionStore(tmp_path / "p0.sqlite", 0)
    store.restore(read_partition(kafka, topic, 0, store.checkpoint))
    assert store.restored_records == 30
    store.close()
    log.append(0, _events("wf-t", 4, start=31))
    reopened = PartitionStore(tmp_path / "p0.sqlite", 0)  # a restarted node: same file
    assert reopened.checkpoint == 30
    reopened.restore(read_partition(kafka, topic, 0, reopened.checkpoint))
    assert reopened.restored_records == 4
    assert [e["seq"] for e in reopened.history("wf-t")] == list(range(1, 35))
    reopened.close()
    log.close()


def test_a_zombie_writing_after_a_higher_ownership_marker_is_ignored(kafka, namespace, tmp_path):
    ensure_topics(kafka, namespace, partitions=1)
    log = EventLog(kafka, Topics(namespace), 1)
    marker = lambda epoch, node: ev.to_envelope(ev.ownership_marker(0, epoch, node, NOW), "", epoch, node)  # noqa: E731
    log.append(0, [marker(1, "old")] + _events("wf-z", 3, epoch=1))
    log.append(0, [marker(2, "new")] + _events("wf-z", 1, epoch=2, start=4))
    log.append(0, _events("wf-z", 2, epoch=1, start=100))  # the zombie, still writing with epoch 1
    log.append(0, _events("wf-z", 1, epoch=2, start=5))
    store = PartitionStore(tmp_path / "p0.sqlite", 0)
    store.restore(read_partition(kafka, Topics(namespace).events, 0, 0))
    assert [e["seq"] for e in store.history("wf-z")] == [1, 2, 3, 4, 5]
    assert store.fence.epoch == 2 and store.fence.dropped == 2
    store.close()
    log.close()


def test_a_member_that_polls_briefly_and_works_between_polls_still_gets_its_partitions(kafka, namespace):
    """The crash-restart hang: 0 ms polls with work in between used to lose the join's result for ever."""
    topics = Topics(namespace)
    ensure_topics(kafka, namespace, partitions=4)
    for trial in range(3):
        consumer = KafkaConsumer(bootstrap_servers=kafka, group_id=f"{namespace}.race{trial}", enable_auto_commit=False)
        consumer.subscribe([topics.commands])
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                groups.poll(consumer, 0)
                time.sleep(0.01)  # a node's batch work between polls
            assert sorted(tp.partition for tp in consumer.assignment()) == [0, 1, 2, 3]
        finally:
            consumer.close()


def test_the_typed_vocabulary_is_exactly_the_schemas_unions() -> None:
    """EventType / CommandType are the one list of event and command types: the same as the Avro unions."""
    from eventstore.events import COMMAND_NS, EVENT_NS, CommandType, EventType

    events = codec.registry().schema("metamorph.EventEnvelope")["__named_schemas"]
    commands = codec.registry().schema("metamorph.CommandEnvelope")["__named_schemas"]
    assert {n[len(EVENT_NS):] for n in events if n.startswith(EVENT_NS)} == set(EventType)
    assert {n[len(COMMAND_NS):] for n in commands if n.startswith(COMMAND_NS)} == set(CommandType)


def test_every_command_and_input_event_has_an_explicit_handler() -> None:
    """The engine dispatches through tables, not ``getattr(f"_cmd_{type}")``: each is complete."""
    from actors.engine.instance import COMMAND_HANDLERS
    from actors.engine.replay import INPUT_HANDLERS, INPUTS
    from eventstore.events import CommandType

    assert set(COMMAND_HANDLERS) == set(CommandType)
    assert set(INPUT_HANDLERS) == set(INPUTS)
