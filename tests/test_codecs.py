"""Payload encryption (docs/API.md section 11): AES-256-GCM codec, key rotation, and no plaintext at rest.

The unit tests pin the codec's contract (round trip, rotation, tampering, unknown keys, the environment
variable). The stack test runs a workflow on real Kafka and PostgreSQL with the codec installed through
``METAMORPH_ENCRYPTION_KEYS`` and then reads every raw record of the namespace's topics and every row of
its schema: a distinctive secret argument/result must appear nowhere, while a client with the key still
gets it back and a process without the key sees ``"<encrypted>"``. Node, projector and client run in this
process, so the one process-wide codec covers them all; the fixture puts it back afterwards.
"""

from __future__ import annotations

import base64
import os
import uuid
import warnings

import pytest

from actors import Workflow, activity, codecs, workflow
from eventstore import payloads
from eventstore.encryption import ENV, key_id_of
from projections.apply import payload as projected
from projections.read import reveal
from tests.stack import running_stack

K0, K1 = os.urandom(32), os.urandom(32)


@pytest.fixture(autouse=True)
def no_codec(monkeypatch):
    """Each test starts without a codec and leaves none behind (the codec is process-wide)."""
    monkeypatch.delenv(ENV, raising=False)
    codecs.set_codec(None)
    yield
    monkeypatch.delenv(ENV, raising=False)
    codecs.reset_codec()


def _env(*pairs: tuple[str, bytes]) -> str:
    return ",".join(f"{kid}:{base64.b64encode(key).decode()}" for kid, key in pairs)


def test_round_trip_encrypts_with_a_fresh_nonce_and_plain_json_still_decodes() -> None:
    value = {"card": "4111-1111-1111-1111", "amounts": [1, 2.5, None, True], "name": "Zoë"}
    plain = payloads.encode(value)
    codecs.set_codec(codecs.EncryptionCodec(keys={"k1": K1}, active="k1"))
    first, second = payloads.encode(value), payloads.encode(value)
    assert first != second  # random 96-bit nonce per payload
    for data in (first, second):
        assert b"4111" not in data and b"card" not in data and key_id_of(data) == "k1"
        assert payloads.decode(data) == value
    assert payloads.decode(plain) == value  # data written before the codec was installed


def test_rotation_keeps_data_written_with_the_old_key_readable() -> None:
    codecs.set_codec(codecs.EncryptionCodec(keys={"k0": K0}, active="k0"))
    old = payloads.encode(["written with k0"])
    codecs.set_codec(codecs.EncryptionCodec(keys={"k1": K1, "k0": K0}, active="k1"))
    new = payloads.encode(["written with k1"])
    assert (key_id_of(old), key_id_of(new)) == ("k0", "k1")
    assert payloads.decode(old) == ["written with k0"] and payloads.decode(new) == ["written with k1"]

    codecs.set_codec(codecs.EncryptionCodec(keys={"k1": K1}, active="k1"))  # k0 retired
    with pytest.raises(codecs.EncryptedPayloadError, match="'k0'"):
        payloads.decode(old)
    assert reveal({"input": projected(old)}) == {"input": codecs.ENCRYPTED}
    assert reveal({"input": projected(new)}) == {"input": ["written with k1"]}


def test_tampered_ciphertext_or_key_id_fails_authentication() -> None:
    codecs.set_codec(codecs.EncryptionCodec(keys={"k1": K1, "k2": K1}, active="k1"))
    data = bytearray(payloads.encode({"x": 1}))
    flipped = bytes(data[:-1]) + bytes([data[-1] ^ 1])
    with pytest.raises(payloads.PayloadError, match="failed authentication"):
        payloads.decode(flipped)
    swapped = bytes(data).replace(b"k1", b"k2", 1)  # same key under another id: the header is authenticated
    with pytest.raises(payloads.PayloadError, match="failed authentication"):
        payloads.decode(swapped)
    assert reveal({"$encrypted": base64.b64encode(flipped).decode()}) == codecs.ENCRYPTED


def test_without_a_codec_encrypted_payloads_are_an_error_for_engines_and_a_placeholder_for_readers() -> None:
    codecs.set_codec(codecs.EncryptionCodec(keys={"k1": K1}, active="k1"))
    data = payloads.encode(["top secret"])
    stored = projected(data)
    assert set(stored) == {"$encrypted"} and "top secret" not in str(stored)
    assert reveal([{"a": stored}]) == [{"a": ["top secret"]}]
    codecs.set_codec(None)
    with pytest.raises(codecs.EncryptedPayloadError, match="no codec"):
        payloads.decode(data)
    assert projected(data) == stored  # the projector never needs the key
    assert reveal([{"a": stored}]) == [{"a": codecs.ENCRYPTED}]


def test_environment_variable_is_read_lazily_first_key_active(monkeypatch) -> None:
    monkeypatch.setenv(ENV, _env(("k1", K1), ("k0", K0)))
    codecs.reset_codec()
    installed = codecs.codec()
    assert isinstance(installed, codecs.EncryptionCodec)
    assert installed.active == "k1" and installed.key_ids == ["k1", "k0"]
    assert key_id_of(payloads.encode(1)) == "k1"

    for bad, message in [
        ("k1:not base64!", "not valid base64"),
        (_env(("k1", K1[:16])), "16 bytes"),
        ("k1", "KEY_ID:BASE64KEY"),
        (_env(("k1", K1), ("k1", K0)), "twice"),
    ]:
        monkeypatch.setenv(ENV, bad)
        codecs.reset_codec()  # no error yet: nothing is read before the first payload
        with pytest.raises(ValueError, match=message):
            payloads.encode("x")
    with pytest.raises(ValueError, match="32"):
        codecs.EncryptionCodec(keys={"k1": b"short"}, active="k1")
    with pytest.raises(ValueError, match="active"):
        codecs.EncryptionCodec(keys={"k1": K1}, active="k9")


# -- on real Kafka and PostgreSQL --------------------------------------------------------------------------


@activity(name="cdc.stash")
def stash(secret: str) -> str:
    return f"{secret}-stashed"


class SecretFlow(Workflow):
    name = "cdc.Secret"

    async def execute(self, secret: str) -> dict:
        stashed = await workflow.activity(stash, secret)
        return {"stashed": stashed}


def _kafka_bytes(kafka: str, namespace: str) -> list[bytes]:
    """Key, value and headers of every record of the namespace's topics, from offset 0."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False, group_id=None)
    try:
        parts = [TopicPartition(t, p) for t in consumer.topics() if t.startswith(f"{namespace}.")
                 for p in consumer.partitions_for_topic(t) or ()]
        assert parts, "no topics found for the namespace"
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        out: list[bytes] = []
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            for records in consumer.poll(timeout_ms=1000).values():
                for r in records:
                    out += [r.key or b"", r.value or b""] + [k.encode() + (v or b"") for k, v in r.headers or ()]
        return out
    finally:
        consumer.close()


def _postgres_text(postgres: str) -> list[str]:
    """Every row of every table in the database's non-system schemas, as PostgreSQL's text of the row."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(postgres) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
            " AND table_schema NOT IN ('pg_catalog', 'information_schema')").fetchall()
        assert any(name == "history" for _, name in tables)
        return [row[0] for schema, name in tables for row in conn.execute(
            sql.SQL("SELECT t::text FROM {}.{} AS t").format(sql.Identifier(schema), sql.Identifier(name)))]


def test_no_plaintext_in_kafka_or_postgres_and_readers_without_the_key_see_encrypted(
    kafka, pg_server, tmp_path, monkeypatch
) -> None:
    secret = f"SECRET-{uuid.uuid4().hex}"
    control = f"PLAIN-{uuid.uuid4().hex}"
    with running_stack(kafka, pg_server, tmp_path / "node", prefix="cdc") as (client, _node, ns):
        # Written before any key existed: stays plain (and proves the scans below see plaintext at all).
        old = client.start(SecretFlow, control, id=f"plain-{uuid.uuid4().hex[:6]}")
        assert old.result(timeout=60) == {"stashed": f"{control}-stashed"}

        monkeypatch.setenv(ENV, _env(("k1", K1), ("k0", K0)))
        codecs.reset_codec()  # every component of this process reads the variable on its next payload
        handle = client.start(SecretFlow, secret, id=f"enc-{uuid.uuid4().hex[:6]}")
        assert handle.result(timeout=60) == {"stashed": f"{secret}-stashed"}
        started = [e for e in handle.history() if e["type"] == "WorkflowStarted"]
        assert started[0]["input"] == [secret]
        assert old.result(timeout=10) == {"stashed": f"{control}-stashed"}  # plain old data still reads

        raw = _kafka_bytes(kafka, ns)
        rows = _postgres_text(client.postgres)
        assert any(control.encode() in b for b in raw) and any(control in r for r in rows)
        assert not [b for b in raw if secret.encode() in b], "plaintext secret in a Kafka record"
        assert not [r for r in rows if secret in r], "plaintext secret in a PostgreSQL row"
        assert any('"$encrypted"' in r for r in rows)

        from actors.interfaces.http import create_app

        with warnings.catch_warnings():  # Starlette 1.x nudges towards httpx2, as in test_http
            warnings.simplefilter("ignore")
            from starlette.testclient import TestClient
        with TestClient(create_app(client, webhook_auth="none")) as api:  # serve with the key decodes
            assert api.get(f"/workflows/{handle.id}").json()["output"] == {"stashed": f"{secret}-stashed"}
            codecs.set_codec(None)
            body = api.get(f"/workflows/{handle.id}").json()
            assert body["output"] == codecs.ENCRYPTED and body["status"] == "completed"
            assert secret not in api.get(f"/workflows/{handle.id}/history").text

        # A reader without the key (set_codec(None) above):
        assert handle.result(timeout=10) == codecs.ENCRYPTED
        history = handle.history()
        assert [e["input"] for e in history if e["type"] == "WorkflowStarted"] == [codecs.ENCRYPTED]
        assert secret not in repr(history) and secret not in repr(client.get(handle.id).describe())
        assert old.result(timeout=10) == {"stashed": f"{control}-stashed"}
