"""Interop (docs/API.md §12): JSON commands on ``<ns>.ingress`` from any producer, and the exported Avro schemas.

The end-to-end tests use a plain kafka-python ``KafkaProducer`` writing only the documented JSON, as a
producer in another language would: no Metamorph code on the producing side.
"""

from __future__ import annotations

import io
import json
import time
import uuid

import fastavro
import pytest
from fastavro.schema import parse_schema, to_parsing_canonical_form
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from actors.client.sync import command_record
from actors.interfaces.cli import main
from actors.node.ingress import InvalidIngress, to_command
from eventstore import codec, payloads
from eventstore.codec import SCHEMA_DIR, TOP_LEVEL
from eventstore.log import MAX_RECORD_BYTES
from eventstore.topics import Topics
from tests.apps import replay_v1
from tests.processes import wait_until
from tests.stack import running_stack


# -- schemas ---------------------------------------------------------------------------------------------
def test_schemas_writes_every_avsc_and_an_index_whose_fingerprints_a_foreign_producer_can_use(capsys, tmp_path) -> None:
    assert main(["schemas", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    for path in SCHEMA_DIR.glob("*.avsc"):
        assert json.loads((out / path.name).read_text()) == json.loads(path.read_text()), path.name
    index = (out / "README.md").read_text()
    for name in TOP_LEVEL:
        full = json.loads((out / f"{name}.full.avsc").read_text())
        fp = codec.registry().fingerprint(name)
        assert fastavro.schema.fingerprint(to_parsing_canonical_form(parse_schema(full)), "CRC-64-AVRO") == fp.hex()
        assert fp.hex() in index and name in index

    # A producer that has only the exported files and the index: header + fingerprint + Avro body.
    full = parse_schema(json.loads((out / "metamorph.CommandEnvelope.full.avsc").read_text()))
    row = next(line for line in index.splitlines() if line.startswith("| `metamorph.CommandEnvelope`"))
    header = bytes.fromhex("c301" + row.split("|")[4].strip().strip("`"))
    body = io.BytesIO()
    command = {"workflow_type": "x.Y", "input": b'["a"]', "parent_id": None, "parent_run_id": None,
               "parent_ref": None, "run_id": None, "continued_from": None, "reset_to": None}  # fmt: skip
    fastavro.schemaless_writer(body, full, {"command_id": "c1", "workflow_id": "w1", "at": 1_700_000_000_000,
                                            "command": ("metamorph.commands.StartWorkflow", command)})  # fmt: skip
    decoded = codec.decode(header + body.getvalue(), "metamorph.CommandEnvelope")
    assert decoded["workflow_id"] == "w1" and decoded["command"][1]["workflow_type"] == "x.Y"


# -- validation ------------------------------------------------------------------------------------------
def test_a_valid_json_start_is_the_command_the_client_sends() -> None:
    value = json.dumps({"start": {"type": "app.Order", "id": "o-1", "args": ["A", 2]}}).encode()
    wid, record = to_command(b"o-1", value, "ns.ingress:0:7")
    mine = codec.decode(record, "metamorph.CommandEnvelope")
    client = codec.decode(command_record("StartWorkflow", "o-1", "start:o-1", workflow_type="app.Order",
                                         input=payloads.encode(["A", 2])), "metamorph.CommandEnvelope")  # fmt: skip
    assert wid == "o-1" and {**mine, "at": None} == {**client, "at": None}
    wid, record = to_command(None, b'{"signal": {"id": "o-1", "name": "approve"}}', "ns.ingress:0:8")
    signal = codec.decode(record, "metamorph.CommandEnvelope")
    assert signal["command_id"] == "ingress:ns.ingress:0:8" and signal["command"][1]["name"] == "approve"


def test_a_json_start_with_every_start_option_is_the_command_the_client_sends() -> None:
    from actors.client.sync import _attributes, _start_options

    options = {"if_running": "terminate", "if_closed": "allow", "start_signal": "approve", "start_signal_args": [1],
               "start_delay": 2.5, "timeout": 60, "priority": 3}
    attributes = {"search": {"customer": "c-1", "amount": 10}, "memo": {"note": "from kcat"}}
    value = json.dumps({"start": {"type": "app.Order", "id": "o-2", "args": ["A"], **options, **attributes}}).encode()
    wid, record = to_command(b"o-2", value, "ns.ingress:1:9")
    mine = codec.decode(record, "metamorph.CommandEnvelope")
    body = {**_start_options(**options), **_attributes(**attributes)}
    client = codec.decode(command_record("StartWorkflow", "o-2", "ingress:ns.ingress:1:9", workflow_type="app.Order",
                                         input=payloads.encode(["A"]), **body), "metamorph.CommandEnvelope")
    assert wid == "o-2" and {**mine, "at": None} == {**client, "at": None}
    start = mine["command"][1]
    assert (start["if_running"], start["if_closed"], start["start_signal"], start["start_delay"], start["timeout"],
            start["priority"]) == ("terminate", "allow", "approve", 2.5, 60.0, 3)
    # With options a start may begin a second run of the id: its command id is the record's position.
    assert mine["command_id"] == "ingress:ns.ingress:1:9"


def test_args_over_the_payload_limit_are_refused_like_the_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAMORPH_MAX_PAYLOAD", "1000")
    for doc in ({"start": {"type": "a", "id": "x", "args": ["y" * 1000]}},
                {"start": {"type": "a", "id": "x", "start_signal": "s", "start_signal_args": ["y" * 1000]}},
                {"signal": {"id": "x", "name": "s", "args": ["y" * 1000]}}):
        with pytest.raises(InvalidIngress, match="PayloadTooLarge: .* the limit is 1000 bytes"):
            to_command(b"x", json.dumps(doc).encode(), "t:0:0")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xfe not json", "not JSON"),
        (b'{"begin": {"type": "a", "id": "x"}}', "unknown shape"),
        (b'{"start": {"type": "a", "id": "x"}, "signal": {}}', "unknown shape"),
        (b'{"start": {"type": "a"}}', "missing ['id']"),
        (b'{"start": {"type": "a", "id": "x", "args": "A-1"}}', "'args' must be a JSON array"),
        (b'{"signal": {"id": "x", "name": 7}}', "'name' must be a non-empty string"),
        (b'{"start": {"type": "a", "id": "x", "if_runing": "fail"}}', "unknown field(s) ['if_runing']"),
        # Every §6 start option is accepted, and checked as Client.start checks it.
        (b'{"start": {"type": "a", "id": "x", "if_running": "never"}}', "unknown if_running policy 'never'"),
        (b'{"start": {"type": "a", "id": "x", "if_running": ["fail"]}}', "if_running must be a policy name"),
        (b'{"start": {"type": "a", "id": "x", "if_closed": "sometimes"}}', "unknown if_closed policy 'sometimes'"),
        (b'{"start": {"type": "a", "id": "x", "start_signal": 5}}', "start_signal must be a signal name"),
        (b'{"start": {"type": "a", "id": "x", "start_signal": "go", "start_signal_args": "a"}}',
         "start_signal_args must be a JSON array"),
        (b'{"start": {"type": "a", "id": "x", "start_signal_args": [1]}}', "start_signal_args given without start_signal"),
        (b'{"start": {"type": "a", "id": "x", "start_delay": "10"}}', "start_delay must be seconds"),
        (b'{"start": {"type": "a", "id": "x", "start_delay": -1}}', "start_delay must be zero or more seconds"),
        (b'{"start": {"type": "a", "id": "x", "timeout": 0}}', "timeout must be more than zero seconds"),
        (b'{"start": {"type": "a", "id": "x", "timeout": true}}', "timeout must be seconds"),
        (b'{"start": {"type": "a", "id": "x", "priority": 12}}', "priority must be an integer 0 (highest) .. 9"),
        (b'{"start": {"type": "a", "id": "x", "priority": "1"}}', "priority must be an integer"),
        (b'{"start": {"type": "a", "id": "x", "search": [1]}}', "search must be a JSON object"),
        (b'{"start": {"type": "a", "id": "x", "search": {"k": [1]}}}', "k"),
        (b'{"start": {"type": "a", "id": "x", "memo": "note"}}', "memo must be a JSON object"),
        (b'{"signal": {"id": "x", "name": "s", "priority": 1}}', "unknown field(s) ['priority']"),
        (b'{"start": {"type": "a", "id": "x", "args": ["' + b"y" * MAX_RECORD_BYTES + b'"]}}', "oversize"),
    ],
)
def test_invalid_records_are_refused_with_a_reason(value: bytes, reason: str) -> None:
    with pytest.raises(InvalidIngress) as caught:
        to_command(b"x", value, "t:0:0")
    assert reason in str(caught.value)
    with pytest.raises(InvalidIngress, match="is not the workflow id"):
        to_command(b"other", b'{"start": {"type": "a", "id": "x"}}', "t:0:0")


# -- end to end on the broker ----------------------------------------------------------------------------
@pytest.fixture
def stack(kafka, pg_server, tmp_path):
    with running_stack(kafka, pg_server, tmp_path / "node", prefix="in") as (client, node, ns):
        producer = KafkaProducer(bootstrap_servers=kafka, acks="all", max_request_size=8 * 1024 * 1024)
        try:
            yield client, Topics(ns), producer
        finally:
            producer.close()


def _send(producer: KafkaProducer, topic: str, key: str | None, value: bytes) -> None:
    producer.send(topic, key=None if key is None else key.encode(), value=value).get(timeout=30)


def test_start_and_signal_workflows_through_plain_json_on_the_ingress_topic(stack) -> None:
    client, topics, producer = stack
    ids = [f"ing-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    for wid in ids:
        doc = {"start": {"type": replay_v1.ReplayOrder.name, "id": wid, "args": [wid]}}
        _send(producer, topics.ingress, wid, json.dumps(doc).encode())
    for wid in ids:
        _send(producer, topics.ingress, wid, json.dumps({"signal": {"id": wid, "name": "approve", "args": []}}).encode())
    for wid in ids:
        assert client.get(wid).result(timeout=60) == [f"charged-{wid}", f"shipped-{wid}"]
        assert sum(e["type"] == "SignalReceived" for e in client.get(wid).history()) == 1


def _dead_letters(kafka: str, topic: str, wanted: int, timeout: float = 60) -> list[dict]:
    consumer = KafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    found: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < wanted and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                found.extend(codec.decode(r.value, "metamorph.DeadLetter") for r in records)
    finally:
        consumer.close()
    return found


def test_invalid_ingress_records_reach_the_dead_letter_topic_with_a_reason_and_a_valid_one_still_runs(
    stack, kafka
) -> None:
    client, topics, producer = stack
    wid = f"ing-{uuid.uuid4().hex[:6]}"
    invalid = [
        ("bad-1", b"{not json"),
        ("bad-2", b'{"stop": {"id": "bad-2"}}'),
        ("bad-3", b'{"start": {"type": "rpl.Order", "args": []}}'),
        ("bad-4", b'{"start": {"type": "rpl.Order", "id": "bad-4", "args": {"order": 1}}}'),
        ("bad-5", b'{"start": {"type": "rpl.Order", "id": "bad-5", "args": ["' + b"x" * (payloads.max_payload() + 10) + b'"]}}'),
        ("bad-6", b'{"start": {"type": "rpl.Order", "id": "bad-6", "if_closed": "maybe"}}'),
    ]
    for key, value in invalid:
        _send(producer, topics.ingress, key, value)
    # Same key as the invalid ones' partition or not, the valid start after them must run.
    _send(producer, topics.ingress, wid, json.dumps({"start": {"type": "rpl.Order", "id": wid, "args": [wid]}}).encode())
    _send(producer, topics.ingress, wid, json.dumps({"signal": {"id": wid, "name": "approve"}}).encode())
    assert client.get(wid).result(timeout=60) == [f"charged-{wid}", f"shipped-{wid}"]

    letters = _dead_letters(kafka, topics.deadletter, len(invalid))
    by_key = {bytes(d["key"]).decode(): d for d in letters}
    assert set(by_key) == {k for k, _ in invalid}, letters
    reasons = {k: by_key[k]["reason"] for k, _ in invalid}
    assert "not JSON" in reasons["bad-1"] and "unknown shape" in reasons["bad-2"]
    assert "missing ['id']" in reasons["bad-3"] and "'args' must be a JSON array" in reasons["bad-4"]
    assert "PayloadTooLarge" in reasons["bad-5"] and "unknown if_closed policy 'maybe'" in reasons["bad-6"]
    assert all(d["source_topic"] == topics.ingress and d["reason"].startswith("invalid ingress record") for d in letters)
    assert by_key["bad-1"]["value"] == b"{not json"
    wait_until(lambda: client.get(wid).status() == "completed", 10, "the valid workflow's projection")


def test_json_start_options_take_effect(stack) -> None:
    """start_signal, start_delay, search, memo and priority from a plain JSON record; then if_closed=allow
    starts a second run of the id, as Client.start(..., if_closed="allow") would."""
    client, topics, producer = stack
    wid = f"ing-{uuid.uuid4().hex[:6]}"
    doc = {"start": {"type": "rpl.Order", "id": wid, "args": [wid], "start_signal": "approve", "start_delay": 1,
                     "search": {"customer": "c-9"}, "memo": {"via": "ingress"}, "priority": 2, "timeout": 120}}
    sent = time.monotonic()
    _send(producer, topics.ingress, wid, json.dumps(doc).encode())
    h = client.get(wid)
    assert h.result(timeout=60) == [f"charged-{wid}", f"shipped-{wid}"]  # approved by the start signal alone
    assert time.monotonic() - sent >= 1  # start_delay
    row = h.describe()
    assert row["search"] == {"customer": "c-9"} and row["memo"] == {"via": "ingress"}
    assert [w.id for w in client.list(search={"customer": "c-9"})] == [wid]
    first_run = row["run_id"]
    again = {"start": {"type": "rpl.Order", "id": wid, "args": [wid], "if_closed": "allow", "start_signal": "approve"}}
    _send(producer, topics.ingress, wid, json.dumps(again).encode())
    wait_until(lambda: h.describe()["run_id"] != first_run, 60, "a second run started by if_closed=allow")
    assert h.result(timeout=60) == [f"charged-{wid}", f"shipped-{wid}"]


def test_ingress_topic_is_created_with_the_namespace(kafka, namespace) -> None:
    from eventstore.topics import ensure_topics

    counts = ensure_topics(kafka, namespace, partitions=3)
    assert counts[Topics(namespace).ingress] == 3 == counts[Topics(namespace).commands]

