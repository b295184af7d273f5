"""Hostile payloads (issue 15, item 4): refused at the client, dead-lettered by the node, never blocking an id.

Why each case: JSON nested ~1,000 deep made the node hit RecursionError and block the id for ever; a lone
surrogate was accepted by the client and then refused by PostgreSQL, so the workflow was invisible; an
oversized payload must be refused with ``PayloadTooLarge`` before anything is sent.
"""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from actors import Client, PayloadTooLarge
from actors.engine.instance import WorkflowInstance, utcnow
from eventstore import codec, payloads
from eventstore import events as ev
from eventstore.topics import Topics, partition_for
from tests.apps import runtime_app as app
from tests.stack import running_stack

DEEP = b"[" * 1000 + b"]" * 1000
VERY_DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.fixture
def dead_client():
    """A client whose broker does not exist: anything that gets as far as sending fails with ConnectionError."""
    with Client(kafka="127.0.0.1:9", postgres=None, namespace="x") as client:
        yield client


def test_decoding_deep_json_is_a_payload_error_not_a_recursion_error():
    for data in (DEEP, VERY_DEEP):
        with pytest.raises(payloads.PayloadError, match="nested more than"):
            payloads.decode(data)
    nested: list = []
    for _ in range(1000):
        nested = [nested]
    with pytest.raises(payloads.PayloadError, match="nested"):
        payloads.encode(nested)
    assert payloads.decode(b'["[[[[{{{{", {"a": [1, [2, [3]]]}]') == ["[[[[{{{{", {"a": [1, [2, [3]]]}]


def test_lone_surrogates_are_refused_both_ways_and_pairs_are_kept():
    with pytest.raises(payloads.PayloadError, match="lone surrogate"):
        payloads.encode(["\udcff"])
    with pytest.raises(payloads.PayloadError, match="lone surrogate"):
        payloads.decode(b'["\\udcff"]')
    assert payloads.decode(payloads.encode(["😀", "\\udcff"])) == ["😀", "\\udcff"]


def test_the_client_refuses_bad_payloads_before_sending(dead_client, monkeypatch):
    with pytest.raises(ValueError, match="lone surrogate"):
        dead_client.start(app.Hello, "\udcff")
    with pytest.raises(ValueError, match="lone surrogate"):
        dead_client.get("w").signal("go", {"k": "a\ud800"})
    nested: list = []
    for _ in range(500):
        nested = [nested]
    with pytest.raises(ValueError, match="nested"):
        dead_client.start(app.Hello, nested)
    monkeypatch.setenv("METAMORPH_MAX_PAYLOAD", "1000")
    with pytest.raises(PayloadTooLarge, match="limit is 1000 bytes") as too_large:
        dead_client.start(app.Hello, "x" * 2000)
    assert isinstance(too_large.value, ValueError)
    monkeypatch.delenv("METAMORPH_MAX_PAYLOAD")
    assert payloads.max_payload() == 2 * 1024 * 1024
    with pytest.raises(ConnectionError):  # within the limits: it gets as far as the (dead) broker
        dead_client.start(app.Hello, "x" * 2000)


def test_the_http_start_route_answers_400_for_a_lone_surrogate(dead_client):
    from starlette.testclient import TestClient

    from actors.interfaces.http import create_app

    with TestClient(create_app(dead_client, webhook_auth="none"), raise_server_exceptions=False) as api:
        r = api.post("/workflows", content=b'{"type": "rt.Hello", "args": ["\\udcff"]}')
        assert r.status_code == 400 and "lone surrogate" in r.json()["message"], r.text
        r = api.post("/workflows", content=b'{"type": "rt.Hello", "args": ' + DEEP + b"}")
        assert r.status_code == 400, r.text


def _start(workflow_id: str, data: bytes) -> dict:
    return {
        "type": "StartWorkflow",
        "command_id": f"start:{workflow_id}:{uuid.uuid4()}",
        "workflow_id": workflow_id,
        "at": utcnow(),
        "workflow_type": "rt.Hello",
        "input": data,
        "parent_id": None,
        "parent_run_id": None,
        "parent_ref": None,
        "run_id": None,
        "continued_from": None,
    }


def test_an_undecodable_start_is_rejected_and_does_not_block_its_id():
    instance = WorkflowInstance("poison-1")
    out = instance.handle([_start("poison-1", DEEP)])
    assert out.events == [] and len(out.rejected) == 1 and "nested" in out.rejected[0][1]
    out = instance.handle([_start("poison-1", payloads.encode(["ada"]))])
    assert [e["type"] for e in out.events][:1] == ["WorkflowStarted"] and not out.rejected


def _dead_letters(kafka: str, topics: Topics, wanted: int, timeout: float = 20) -> list[dict]:
    consumer = KafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False)
    tp = TopicPartition(topics.deadletter, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    letters: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(letters) < wanted and time.monotonic() < deadline:
        letters += [codec.decode(r.value) for r in consumer.poll(timeout_ms=500).get(tp, [])]
    consumer.close()
    return letters


def test_raw_poison_starts_are_dead_lettered_and_the_id_stays_usable(kafka_server, pg_server, tmp_path):
    """A raw producer writes starts nested 1,000 and 100,000 deep; later valid starts of those ids run."""
    with running_stack(kafka_server.bootstrap, pg_server, tmp_path, prefix="poison") as (
        client,
        _node,
        namespace,
    ):
        topics = Topics(namespace)
        raw = KafkaProducer(bootstrap_servers=kafka_server.bootstrap, max_request_size=4 * 1024 * 1024)
        ids = [f"deep-{uuid.uuid4().hex[:6]}", f"deeper-{uuid.uuid4().hex[:6]}"]
        for wid, data in zip(ids, (DEEP, VERY_DEEP), strict=True):
            envelope = ev.command(
                "StartWorkflow", wid, f"start:{wid}", utcnow(), workflow_type="rt.Hello", input=data
            )
            raw.send(
                topics.commands,
                key=wid.encode(),
                value=codec.encode("metamorph.CommandEnvelope", envelope),
                partition=partition_for(wid, 2),
            )
        raw.flush()
        raw.close()
        letters = _dead_letters(kafka_server.bootstrap, topics, 2)
        by_key = {(letter["key"] or b"").decode(): letter["reason"] for letter in letters}
        for wid in ids:
            assert "nested more than" in by_key.get(wid, ""), (wid, letters)
        for wid in ids:
            assert client.start(app.Hello, "again", id=wid).result(timeout=30) == "hello again"
        assert client.get(ids[0]).history()[0]["type"] == "WorkflowStarted"
