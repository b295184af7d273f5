"""The projector turns ``<ns>.events`` into PostgreSQL views exactly once, whatever goes wrong.

Every test writes realistic event envelopes straight to the namespace's event topic (as an owning node
would), runs the real projector against the embedded broker and PostgreSQL, and reads the result through
``projections.read``. No mocks: crashes are real (SIGKILL of a projector process, PostgreSQL stopped), and
"exactly once" is checked by comparing every table with a clean rebuild from offset 0.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kafka import KafkaConsumer, TopicPartition
from psycopg import sql

from eventstore import codec, payloads
from eventstore.events import EVENT_NS, ownership_marker, to_envelope
from eventstore.log import EventLog, end_offsets
from eventstore.topics import Topics, ensure_topics
from projections import (
    Projector,
    connect,
    migrate,
    notify_channel,
    read,
    rebuild,
    record_pending,
    schema_name,
)
from projections.migrate import available
from tests.processes import wait_until

REPO = Path(__file__).resolve().parent.parent
PARTITIONS = 2
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TABLES = ("workflows", "runs", "history", "activities", "signals", "exceptions", "timers", "relationships",
          "projector_offsets", "projector_fence")
#: Wall-clock columns that legitimately differ between two projections of the same log.
WALL_CLOCK = {"projector_offsets": {"updated_at"}}


# -- writing events as a node would -------------------------------------------------------------------------

def _defaults(kind: str) -> dict[str, Any]:
    schema = codec.registry().schema("metamorph.EventEnvelope")["__named_schemas"][EVENT_NS + kind]
    out = {}
    for field in schema["fields"]:
        if "default" in field:
            default = field["default"]
            out[field["name"]] = default.encode() if field["type"] == "bytes" and isinstance(default, str) else default
    return out


class Writer:
    """Appends runs' events to ``<ns>.events`` with node-like seq, timestamps and statuses."""

    def __init__(self, kafka: str, namespace: str) -> None:
        ensure_topics(kafka, namespace, partitions=PARTITIONS)
        self.log = EventLog(kafka, Topics(namespace), PARTITIONS)
        self.clock = itertools.count()
        self.seqs: dict[str, int] = {}
        self.written = 0

    def at(self) -> datetime:
        return T0 + timedelta(milliseconds=next(self.clock))

    def event(self, run_id: str, kind: str, status: str | None = None, **fields: Any) -> dict:
        seq = self.seqs.get(run_id, 0) + 1
        self.seqs[run_id] = seq
        return {**_defaults(kind), **fields, "type": kind, "seq": seq, "run_id": run_id, "at": self.at(), "status": status}

    def append(self, workflow_id: str, events: list[dict], epoch: int = 1, partition: int | None = None) -> list[int]:
        p = self.log.partition_of(workflow_id) if partition is None else partition
        self.written += len(events)
        return self.log.append(p, [to_envelope(e, workflow_id, epoch, "node-a") for e in events])

    def run(self, workflow_id: str, run_id: str, steps: list[tuple], epoch: int = 1) -> list[int]:
        """``steps`` are ``(kind, status, fields)`` tuples of one run, appended in one go."""
        return self.append(workflow_id, [self.event(run_id, kind, status, **fields) for kind, status, fields in steps], epoch)

    def marker(self, partition: int, epoch: int) -> None:
        envelope = to_envelope(ownership_marker(partition, epoch, f"node-{epoch}", self.at()), "", epoch, f"node-{epoch}")
        self.log.append(partition, [envelope])

    def raw(self, partition: int, key: bytes, value: bytes) -> None:
        self.log.kafka_producer.send(self.log.topics.events, key=key, value=value, partition=partition).get(timeout=10)

    def close(self) -> None:
        self.log.close()


def p(value: Any) -> bytes:
    return payloads.encode(value)


def started(workflow_type: str, args: list, **fields: Any) -> tuple:
    return ("WorkflowStarted", None, {"workflow_type": workflow_type, "input": p(args), "command_id": "start", **fields})


def scheduled(seq: int, name: str, args: list, status: str = "running") -> tuple:
    return ("ActivityScheduled", status, {"activity_id": seq, "name": name, "queue": "default", "input": p(args),
                                          "tries": 3, "backoff": [1.0], "non_retryable": []})


def write_lifecycle(w: Writer) -> None:
    """A representative mix: activities with retries, timers, signals, a child, failure, blocking, cancel,
    terminate and a continue-as-new chain of three runs."""
    fail_at = int((T0 + timedelta(seconds=5)).timestamp() * 1000)
    w.run("order-1", "o1", [
        started("app.Order", ["A-1"]),
        scheduled(2, "charge", [100]),
        ("ActivityAttemptFailed", "running", {"activity_id": 2, "attempt": 1, "error_type": "TimeoutError",
                                              "message": "gateway slow", "traceback": "tb-1", "retry_at": fail_at}),
        ("ActivityRetried", "running", {"activity_id": 2, "attempt": 2}),
        ("ActivityCompleted", None, {"activity_id": 2, "attempt": 2, "result": p({"paid": 100})}),
        ("TimerStarted", "waiting", {"timer_id": 6, "fire_at": fail_at}),
        ("TimerFired", None, {"timer_id": 6}),
        ("SignalReceived", "waiting", {"name": "approve", "input": p(["alice"]), "command_id": "sig-1"}),
        ("CommandRejected", "waiting", {"command": "SignalWorkflow", "error_type": "LookupError", "message": "no signal 'x'"}),
        ("ChildStarted", "running", {"child_ref": 10, "child_id": "order-1-ship", "workflow_type": "app.Ship", "input": p(["A-1"])}),
    ])
    w.run("order-1-ship", "s1", [
        started("app.Ship", ["A-1"], parent_id="order-1", parent_run_id="o1", parent_ref=10),
        scheduled(2, "ship", ["A-1"]),
        ("ActivityCompleted", None, {"activity_id": 2, "attempt": 1, "result": p("TRACK-1")}),
        ("WorkflowCompleted", "completed", {"result": p("TRACK-1")}),
    ])
    w.run("order-1", "o1", [
        ("ChildCompleted", None, {"child_ref": 10, "result": p("TRACK-1")}),
        ("WorkflowCompleted", "completed", {"result": p({"ok": True, "tracking": "TRACK-1"})}),
    ])
    w.run("pay-2", "p1", [
        started("app.Pay", [5]),
        scheduled(2, "charge", [5]),
        ("ActivityAttemptFailed", "running", {"activity_id": 2, "attempt": 1, "error_type": "ValueError",
                                              "message": "declined", "traceback": "tb-a", "retry_at": fail_at}),
        ("ActivityRetried", "running", {"activity_id": 2, "attempt": 2}),
        ("ActivityFailed", None, {"activity_id": 2, "attempt": 2, "error_type": "ValueError", "message": "declined again",
                                  "traceback": "tb-b"}),
        ("WorkflowFailed", "failed", {"error_type": "ActivityFailed", "message": "charge failed after 2 attempts",
                                      "traceback": "tb-wf"}),
    ])
    w.run("stuck-3", "b1", [started("app.Order", ["B"]), scheduled(2, "charge", [1]),
                            ("WorkflowBlocked", None, {"error_type": "NondeterminismError", "message": "seq 2 differs"})])
    w.run("cancel-4", "c1", [started("app.Order", ["C"]), ("CancelRequested", "running", {"reason": "user"}),
                             ("WorkflowCancelled", "cancelled", {"reason": "user"})])
    w.run("term-5", "t1", [started("app.Order", ["T"]), ("WorkflowTerminated", "terminated", {"reason": "ops"})])
    w.run("loop-6", "l1", [started("app.Loop", [0]), ("WorkflowContinued", "continued", {"new_run_id": "l2", "input": p([1])})])
    w.run("loop-6", "l2", [started("app.Loop", [1], continued_from="l1"),
                           ("WorkflowContinued", "continued", {"new_run_id": "l3", "input": p([2])})])
    w.run("loop-6", "l3", [started("app.Loop", [2], continued_from="l2"), ("WorkflowCompleted", "completed", {"result": p(3)})])


# -- reading back -------------------------------------------------------------------------------------------

def stored_offsets(url: str, namespace: str) -> dict[int, int]:
    with connect(url, namespace) as conn:
        return dict(conn.execute("SELECT partition, next_offset FROM projector_offsets").fetchall())


def caught_up(kafka: str, url: str, namespace: str) -> bool:
    ends = end_offsets(kafka, Topics(namespace).events, list(range(PARTITIONS)))
    try:
        stored = stored_offsets(url, namespace)
    except psycopg.Error:
        return False
    return all(stored.get(p, 0) >= end for p, end in ends.items())


def drain(projector: Projector, kafka: str, url: str, namespace: str, timeout: float = 20) -> None:
    """Run the projector batch by batch until it has projected everything written so far."""
    ends = end_offsets(kafka, Topics(namespace).events, list(range(PARTITIONS)))
    deadline = time.monotonic() + timeout
    while True:
        projector.run_once(200)
        stored = stored_offsets(url, namespace)
        if all(stored.get(p, 0) >= end for p, end in ends.items()):
            return
        assert time.monotonic() < deadline, f"projector stuck at {stored}, log ends at {ends}"



def dump(url: str, namespace: str) -> dict[str, list[str]]:
    """Every projection table as sorted rows, without wall-clock columns: equal dumps = equal projections."""
    out = {}
    with connect(url, namespace) as conn:
        for table in TABLES:
            cur = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table)))
            names = [d.name for d in cur.description]
            keep = [i for i, n in enumerate(names) if n not in WALL_CLOCK.get(table, set())]
            out[table] = sorted(repr(tuple(row[i] for i in keep)) for row in cur.fetchall())
    return out


def counts(url: str, namespace: str) -> dict[str, int]:
    with connect(url, namespace) as conn:
        return {t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0]
                for t in TABLES}


@pytest.fixture
def writer(kafka: str, namespace: str) -> Any:
    w = Writer(kafka, namespace)
    yield w
    w.close()


@pytest.fixture
def projector(kafka: str, pg_url: str, namespace: str) -> Any:
    proj = Projector(kafka, pg_url, namespace, poll_timeout_ms=200)
    yield proj
    proj.close()


@pytest.fixture
def fresh_db(pg_server: Any, namespace: str) -> Any:
    """A second, empty database (for rebuilds), dropped afterwards."""
    name = f"{namespace}_fresh"
    url = pg_server.create_database(name)
    yield url
    if pg_server.running:
        with contextlib.suppress(psycopg.Error), psycopg.connect(pg_server.uri, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# -- the tests ----------------------------------------------------------------------------------------------

def test_migrations_are_idempotent_and_safe_concurrently(pg_url: str, namespace: str) -> None:
    results: list[list[int]] = []
    threads = [threading.Thread(target=lambda: results.append(migrate(pg_url, namespace))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    versions = sorted(available())  # every migration, applied once, by exactly one of the callers
    assert sorted(results) == [[], [], [], versions] and versions[:2] == [1, 2]
    assert migrate(pg_url, namespace) == []
    assert schema_name("Prod-EU.1") == "mm_prod_eu_1" and notify_channel(namespace) == f"mm_{namespace}"
    with connect(pg_url, namespace) as conn:
        assert conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall() == [(v,) for v in versions]
        assert conn.execute("SELECT current_schema()").fetchone()[0] == f"mm_{namespace}"


def test_projects_a_workflow_lifecycle(writer: Writer, projector: Projector, kafka: str, pg_url: str, namespace: str) -> None:
    write_lifecycle(writer)
    drain(projector, kafka, pg_url, namespace)
    assert projector.events_applied == writer.written and projector.deadlettered == 0

    with connect(pg_url, namespace) as conn:
        order = read.get_workflow(conn, "order-1")
        assert order is not None
        assert (order["type"], order["status"], order["run_id"]) == ("app.Order", "completed", "o1")
        assert order["input"] == ["A-1"] and order["output"] == {"ok": True, "tracking": "TRACK-1"}
        assert order["created_at"] == order["started_at"] and order["closed_at"] is not None

        events = read.history(conn, "order-1")
        assert [e["seq"] for e in events] == list(range(1, 13))
        assert events[0]["type"] == "WorkflowStarted" and events[0]["input"] == ["A-1"]
        assert events[4] == {**events[4], "type": "ActivityCompleted", "result": {"paid": 100}, "attempt": 2}
        assert datetime.fromisoformat(events[0]["at"]) == T0

        attempts = read.activities(conn, "order-1")
        assert [(a["attempt"], a["name"], a["status"]) for a in attempts] == [(1, "charge", "retrying"), (2, "charge", "completed")]
        assert attempts[0]["error_type"] == "TimeoutError" and attempts[0]["retry_at"] is not None
        assert attempts[1]["result"] == {"paid": 100} and attempts[1]["input"] == [100]

        assert [(t["timer_id"], t["status"]) for t in read.timers(conn, "order-1")] == [(6, "fired")]
        assert [(s["name"], s["input"], s["command_id"]) for s in read.signals(conn, "order-1")] == [("approve", ["alice"], "sig-1")]
        kids = read.children(conn, "order-1")
        assert [(c["child_id"], c["child_run_id"], c["workflow_type"], c["status"]) for c in kids] == [
            ("order-1-ship", "s1", "app.Ship", "completed")
        ]
        ship = read.get_workflow(conn, "order-1-ship")
        assert ship is not None and (ship["parent_id"], ship["parent_run_id"]) == ("order-1", "o1")
        assert [w["id"] for w in read.list_workflows(conn, parent_id="order-1")] == ["order-1-ship"]

        # exceptions: both failed attempts of the activity, then the workflow's own failure, in order
        failures = read.exceptions(conn, "pay-2")
        assert [(e["activity"], e["attempt"], e["error_type"], e["message"], e["traceback"]) for e in failures] == [
            ("charge", 1, "ValueError", "declined", "tb-a"),
            ("charge", 2, "ValueError", "declined again", "tb-b"),
            (None, None, "ActivityFailed", "charge failed after 2 attempts", "tb-wf"),
        ]
        pay = read.get_workflow(conn, "pay-2")
        assert pay is not None and (pay["status"], pay["error_type"], pay["error_traceback"]) == ("failed", "ActivityFailed", "tb-wf")
        assert [a["status"] for a in read.activities(conn, "pay-2")] == ["retrying", "failed"]

        statuses = {w["id"]: w["status"] for w in read.list_workflows(conn)}
        assert statuses == {"order-1": "completed", "order-1-ship": "completed", "pay-2": "failed", "stuck-3": "blocked",
                            "cancel-4": "cancelled", "term-5": "terminated", "loop-6": "completed"}
        stuck = read.get_workflow(conn, "stuck-3")
        assert stuck is not None and stuck["error_type"] == "NondeterminismError"
        # docs/API.md §14: a rejected signal and a block are listed by exceptions(), with no activity
        assert [(e["activity"], e["error_type"], e["message"]) for e in read.exceptions(conn, "stuck-3")] == [
            (None, "NondeterminismError", "seq 2 differs")
        ]
        assert [(e["activity"], e["error_type"], e["message"]) for e in read.exceptions(conn, "order-1")] == [
            ("charge", "TimeoutError", "gateway slow"),
            (None, "LookupError", "no signal 'x'"),
        ]
        with pytest.raises(ValueError, match="unknown status 'bogus'"):
            read.list_workflows(conn, status="bogus")
        with pytest.raises(ValueError, match="unknown status"):
            read.list_workflows(conn, status=["blocked", "compleet"])
        assert read.get_workflow(conn, "term-5")["error_message"] == "ops"  # type: ignore[index]

        # listing: newest first, filters, paging
        listed = read.list_workflows(conn)
        assert [w["created_at"] for w in listed] == sorted((w["created_at"] for w in listed), reverse=True)
        assert {w["id"] for w in read.list_workflows(conn, status="completed")} == {"order-1", "order-1-ship", "loop-6"}
        assert {w["id"] for w in read.list_workflows(conn, status=["failed", "blocked"])} == {"pay-2", "stuck-3"}
        assert {w["id"] for w in read.list_workflows(conn, type="app.Order", status="completed")} == {"order-1"}
        assert [w["id"] for w in read.list_workflows(conn, limit=2, offset=1)] == [w["id"] for w in listed[1:3]]
        assert read.get_workflow(conn, "nope") is None and read.history(conn, "nope") == []


def test_continue_as_new_chain(writer: Writer, projector: Projector, kafka: str, pg_url: str, namespace: str) -> None:
    write_lifecycle(writer)
    drain(projector, kafka, pg_url, namespace)
    with connect(pg_url, namespace) as conn:
        loop = read.get_workflow(conn, "loop-6")
        assert loop is not None
        assert (loop["run_id"], loop["status"], loop["input"], loop["output"], loop["continued_from"]) == ("l3", "completed", [2], 3, "l2")
        chain = read.runs(conn, "loop-6")
        assert [(r["run_no"], r["run_id"], r["status"], r["continued_from"], r["continued_to"]) for r in chain] == [
            (1, "l1", "continued", None, "l2"), (2, "l2", "continued", "l1", "l3"), (3, "l3", "completed", "l2", None),
        ]
        # created_at is the first run's start; started_at the current run's
        assert loop["created_at"] == chain[0]["started_at"] and loop["started_at"] == chain[2]["started_at"]
        assert [e["type"] for e in read.history(conn, "loop-6")] == ["WorkflowStarted", "WorkflowCompleted"]
        assert [e["type"] for e in read.history(conn, "loop-6", run_id="l1")] == ["WorkflowStarted", "WorkflowContinued"]
        rels = conn.execute(
            "SELECT parent_run_id, child_id, child_run_id FROM relationships WHERE kind = 'continued' ORDER BY created_at"
        ).fetchall()
        assert rels == [("l1", "loop-6", "l2"), ("l2", "loop-6", "l3")]


def test_record_pending_then_projection_upserts(writer: Writer, projector: Projector, kafka: str, pg_url: str, namespace: str) -> None:
    migrate(pg_url, namespace)
    with connect(pg_url, namespace) as conn:
        assert record_pending(conn, "wf-p", "app.Order", ["X"]) is True
        assert record_pending(conn, "wf-p", "app.Order", ["X"]) is False  # a second start changes nothing
        pending = read.get_workflow(conn, "wf-p")
        assert pending is not None and (pending["status"], pending["run_id"], pending["input"]) == ("pending", None, ["X"])
        assert read.history(conn, "wf-p") == []
    writer.run("wf-p", "rp", [started("app.Order", ["X"]), scheduled(2, "charge", [1])])
    drain(projector, kafka, pg_url, namespace)
    with connect(pg_url, namespace) as conn:
        wf = read.get_workflow(conn, "wf-p")
        assert wf is not None and (wf["status"], wf["run_id"]) == ("running", "rp")
        assert datetime.fromisoformat(wf["created_at"]) >= T0  # from the event, no longer the client's clock
        assert record_pending(conn, "wf-p", "app.Order", ["X"]) is False  # late client: the projection wins
    writer.run("wf-p", "rp", [("ActivityCompleted", None, {"activity_id": 2, "attempt": 1, "result": p(1)}),
                              ("WorkflowCompleted", "completed", {"result": p("done")})])
    drain(projector, kafka, pg_url, namespace)
    with connect(pg_url, namespace) as conn:
        wf = read.get_workflow(conn, "wf-p")
        assert wf is not None and (wf["status"], wf["output"]) == ("completed", "done")


def test_zombie_events_after_a_higher_marker_are_not_projected(writer: Writer, kafka: str, pg_url: str, namespace: str) -> None:
    part = writer.log.partition_of("zz")
    writer.marker(part, 1)
    writer.run("zz", "z1", [started("app.Order", ["Z"]), scheduled(2, "charge", [1])], epoch=1)
    writer.marker(part, 2)  # a new owner took the partition; the old one still writes seq 3 with epoch 1
    zombie = writer.event("z1", "ActivityCompleted", None, activity_id=2, attempt=1, result=p("zombie"))
    writer.append("zz", [zombie], epoch=1)
    writer.seqs["z1"] = 2  # the new owner's own seq 3
    writer.append("zz", [writer.event("z1", "ActivityCompleted", None, activity_id=2, attempt=1, result=p("owner")),
                         writer.event("z1", "WorkflowCompleted", "completed", result=p("owner"))], epoch=2)
    writer.marker(part, 1)  # a stale marker does not lower the epoch either
    writer.append("zz", [writer.event("z1", "SignalReceived", None, name="late", input=p([]), command_id="c")], epoch=1)

    # one record per batch: the fence state must survive between transactions (it lives in PostgreSQL)
    with Projector(kafka, pg_url, namespace, batch_size=1, poll_timeout_ms=200) as proj:
        drain(proj, kafka, pg_url, namespace)
        assert proj.fenced == 3
    with connect(pg_url, namespace) as conn:
        assert [(e["seq"], e["type"], e.get("result")) for e in read.history(conn, "zz")] == [
            (1, "WorkflowStarted", None), (2, "ActivityScheduled", None), (3, "ActivityCompleted", "owner"),
            (4, "WorkflowCompleted", "owner"),
        ]
        assert conn.execute("SELECT epoch FROM projector_fence WHERE partition = %s", (part,)).fetchone() == (2,)
        assert read.activities(conn, "zz")[0]["result"] == "owner"
        assert read.signals(conn, "zz") == []


def test_undecodable_records_are_deadlettered_and_the_rest_projected(
    writer: Writer, projector: Projector, kafka: str, pg_url: str, namespace: str
) -> None:
    part = writer.log.partition_of("good")
    writer.run("good", "g1", [started("app.Order", [1])])
    writer.raw(part, b"good", b"this is not avro")
    unknown = codec.MARKER + bytes(8) + b"\x00\x01"  # well-formed header, fingerprint nobody knows
    writer.raw(part, b"good", unknown)
    writer.run("good", "g1", [scheduled(2, "charge", [1]), ("WorkflowCompleted", "completed", {"result": p(1)})])
    drain(projector, kafka, pg_url, namespace)
    assert projector.deadlettered == 2

    with connect(pg_url, namespace) as conn:
        wf = read.get_workflow(conn, "good")
        assert wf is not None and wf["status"] == "completed"
        assert [e["seq"] for e in read.history(conn, "good")] == [1, 2, 3]

    consumer = KafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False, auto_offset_reset="earliest")
    tp = TopicPartition(Topics(namespace).deadletter, 0)
    consumer.assign([tp])
    letters: list[dict] = []
    deadline = time.monotonic() + 10
    while len(letters) < 2 and time.monotonic() < deadline:
        for rec in consumer.poll(timeout_ms=500).get(tp, []):
            assert rec.key == b"good"
            letters.append(codec.decode(rec.value, "metamorph.DeadLetter"))
    consumer.close()
    assert [(d["source_topic"], d["partition"], d["offset"], d["value"]) for d in letters] == [
        (Topics(namespace).events, part, 1, b"this is not avro"), (Topics(namespace).events, part, 2, unknown),
    ]
    assert "not Avro single-object encoded" in letters[0]["reason"]
    assert "unknown schema fingerprint" in letters[1]["reason"]


def test_a_crash_before_the_kafka_commit_doubles_nothing(
    writer: Writer, kafka: str, pg_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_lifecycle(writer)
    first = Projector(kafka, pg_url, namespace, batch_size=7, poll_timeout_ms=200)
    # This projector applies its batches but "dies" before every Kafka commit: Kafka knows nothing.
    monkeypatch.setattr(first, "_commit_kafka", lambda ends: None)
    drain(first, kafka, pg_url, namespace)
    first.close()
    before = dump(pg_url, namespace)

    writer.run("after", "a1", [started("app.Order", [9]), ("WorkflowCompleted", "completed", {"result": p(9)})])
    with Projector(kafka, pg_url, namespace, poll_timeout_ms=200) as second:
        drain(second, kafka, pg_url, namespace)
        # it resumed at the offsets stored in PostgreSQL: only the two new events were read at all
        assert (second.events_applied, second.duplicates) == (2, 0)
    after = dump(pg_url, namespace)
    assert len(after["history"]) == len(before["history"]) + 2

    # Even a consumer positioned at 0 (say, a seek that went wrong) skips what PostgreSQL already has.
    with Projector(kafka, pg_url, namespace, poll_timeout_ms=200, assign=True) as third:
        consumer = third._ensure_consumer()
        third._position()
        for tp in consumer.assignment():
            consumer.seek(tp, 0)
        while third.run_once(500):
            pass
        assert third.events_applied == 0
    assert dump(pg_url, namespace) == after


def test_rebuild_into_a_fresh_database_is_identical(
    writer: Writer, kafka: str, pg_url: str, fresh_db: str, namespace: str
) -> None:
    write_lifecycle(writer)
    writer.marker(0, 3)
    with Projector(kafka, pg_url, namespace, batch_size=3, poll_timeout_ms=200) as live:
        drain(live, kafka, pg_url, namespace)
    rebuilt = rebuild(kafka, fresh_db, namespace, timeout=30)
    assert rebuilt.events_applied == writer.written
    original, copy = dump(pg_url, namespace), dump(fresh_db, namespace)
    assert copy == original
    assert len(copy["history"]) == writer.written and copy["projector_fence"]


PROJECTOR_PROCESS = """
import logging, sys, threading
sys.path.insert(0, {repo!r})
logging.basicConfig(level=logging.WARNING)
from projections import Projector

from tests.processes import wait_until
# Static membership (a stable group.instance.id, standard Kafka since 2.3): the restarted process takes over
# the killed one's place in the group at once instead of waiting for its session to expire.
options = {{"group_instance_id": "projector-1", "session_timeout_ms": 6000, "heartbeat_interval_ms": 500}}
Projector({kafka!r}, {url!r}, {ns!r}, batch_size=10, poll_timeout_ms=200, consumer_options=options).run(threading.Event())
"""


def _spawn_projector(kafka: str, url: str, namespace: str, log: Path) -> subprocess.Popen[bytes]:
    code = PROJECTOR_PROCESS.format(repo=str(REPO), kafka=kafka, url=url, ns=namespace)
    with log.open("ab") as err:
        return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=err)


def _bulk(writer: Writer, workflows: int, prefix: str = "bulk") -> None:
    for i in range(workflows):
        writer.run(f"{prefix}-{i}", f"{prefix}-r{i}", [
            started("app.Bulk", [i]), scheduled(2, "work", [i]),
            ("ActivityCompleted", None, {"activity_id": 2, "attempt": 1, "result": p(i)}),
            ("TimerStarted", "waiting", {"timer_id": 4, "fire_at": 0}), ("TimerFired", None, {"timer_id": 4}),
            ("WorkflowCompleted", "completed", {"result": p(i)}),
        ])


@pytest.mark.slow
def test_sigkill_of_a_projector_process_loses_and_doubles_nothing(
    writer: Writer, kafka: str, pg_url: str, fresh_db: str, namespace: str, tmp_path: Path
) -> None:
    _bulk(writer, 400)
    total = writer.written
    log = tmp_path / "projector.log"
    proc = _spawn_projector(kafka, pg_url, namespace, log)
    try:
        def progressed() -> bool:
            try:
                return sum(stored_offsets(pg_url, namespace).values()) >= total // 5
            except psycopg.Error:
                return False

        wait_until(progressed, 30, "the projector process to make progress")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        done = sum(stored_offsets(pg_url, namespace).values())
        assert done < total, "the projector finished before it could be killed mid-stream"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    proc = _spawn_projector(kafka, pg_url, namespace, log)  # the same projector, restarted
    try:
        wait_until(lambda: caught_up(kafka, pg_url, namespace), 30, f"the restarted projector to catch up ({log})")
    finally:
        proc.kill()
        proc.wait()
    n = counts(pg_url, namespace)
    assert (n["history"], n["workflows"], n["activities"], n["timers"]) == (total, 400, 400, 400)
    rebuild(kafka, fresh_db, namespace, timeout=30)
    assert dump(pg_url, namespace) == dump(fresh_db, namespace)


def test_postgres_restart_while_events_arrive(
    writer: Writer, kafka: str, pg_url: str, pg_server: Any, fresh_db: str, namespace: str
) -> None:
    proj = Projector(kafka, pg_url, namespace, batch_size=20, poll_timeout_ms=100, max_backoff=0.5)
    stop = threading.Event()
    thread = threading.Thread(target=proj.run, args=(stop,), daemon=True)
    thread.start()
    try:
        _bulk(writer, 20, "before")
        wait_until(lambda: caught_up(kafka, pg_url, namespace), 20, "the first events to be projected")
        pg_server.stop()
        try:
            _bulk(writer, 30, "during")  # the projector cannot write these yet: it must wait, not skip
            time.sleep(1.0)
        finally:
            pg_server.start()
        _bulk(writer, 20, "after")
        wait_until(lambda: caught_up(kafka, pg_url, namespace), 30, "the projector to catch up after the restart")
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive()
    assert proj.pg_errors > 0
    n = counts(pg_url, namespace)
    assert (n["history"], n["workflows"]) == (writer.written, 70)
    rebuild(kafka, fresh_db, namespace, timeout=30)
    assert dump(pg_url, namespace) == dump(fresh_db, namespace)


def test_wait_for_terminal_returns_promptly_via_notify(writer: Writer, kafka: str, pg_url: str, namespace: str) -> None:
    migrate(pg_url, namespace)
    t = time.monotonic()
    assert read.wait_for_terminal(pg_url, namespace, "never", timeout=0.5) is None
    assert 0.4 < time.monotonic() - t < 3

    proj = Projector(kafka, pg_url, namespace, poll_timeout_ms=100)
    stop = threading.Event()
    thread = threading.Thread(target=proj.run, args=(stop,), daemon=True)
    thread.start()
    results: dict[str, Any] = {}

    def waiter() -> None:
        results["workflow"] = read.wait_for_terminal(pg_url, namespace, "loop", timeout=30)
        results["at"] = time.monotonic()

    try:
        writer.run("loop", "r1", [started("app.Loop", [0])])
        wait_until(lambda: caught_up(kafka, pg_url, namespace), 20, "the start to be projected")
        waiting = threading.Thread(target=waiter)
        waiting.start()
        time.sleep(0.3)
        # continue-as-new is terminal for the run, not for the workflow: the waiter keeps waiting
        writer.run("loop", "r1", [("WorkflowContinued", "continued", {"new_run_id": "r2", "input": p([1])})])
        writer.run("loop", "r2", [started("app.Loop", [1], continued_from="r1")])
        wait_until(lambda: caught_up(kafka, pg_url, namespace), 20, "the continuation to be projected")
        time.sleep(0.3)
        assert waiting.is_alive()
        sent = time.monotonic()
        writer.run("loop", "r2", [("WorkflowCompleted", "completed", {"result": p("done")})])
        waiting.join(10)
        assert not waiting.is_alive()
    finally:
        stop.set()
        thread.join(15)
    workflow = results["workflow"]
    assert workflow is not None and (workflow["status"], workflow["output"], workflow["run_id"]) == ("completed", "done", "r2")
    assert results["at"] - sent < 3
    # already terminal: answered at once
    t = time.monotonic()
    assert read.wait_for_terminal(pg_url, namespace, "loop", timeout=10)["status"] == "completed"  # type: ignore[index]
    assert time.monotonic() - t < 1


def test_an_event_postgres_refuses_is_deadlettered_not_blocking(
    writer: Writer, projector: Projector, kafka: str, pg_url: str, namespace: str
) -> None:
    # A run id longer than an index entry can hold: PostgreSQL refuses that one event's rows.
    huge = os.urandom(10_000).hex()
    writer.run("bad", huge, [started("app.Order", [1])])
    writer.run("fine", "f1", [started("app.Order", [2]), ("WorkflowCompleted", "completed", {"result": p(2)})])
    drain(projector, kafka, pg_url, namespace)
    assert projector.deadlettered == 1
    with connect(pg_url, namespace) as conn:
        assert read.get_workflow(conn, "bad") is None
        assert read.get_workflow(conn, "fine")["status"] == "completed"  # type: ignore[index]


def test_client_reads_come_back_after_a_postgres_restart(writer: Writer, kafka: str, pg_url: str, pg_server: Any, namespace: str) -> None:
    """Pooled connections are not checked on checkout: a restart must still cost a read nothing but a retry."""
    from concurrent.futures import ThreadPoolExecutor

    from actors import Client

    proj = Projector(kafka, pg_url, namespace, poll_timeout_ms=100)
    stop = threading.Event()
    thread = threading.Thread(target=proj.run, args=(stop,), daemon=True)
    thread.start()
    client = Client(kafka, pg_url, namespace)
    try:
        writer.run("pooled", "r1", [started("app.Pooled", [1])])
        wait_until(lambda: caught_up(kafka, pg_url, namespace), 20, "the start to be projected")
        handle = client.get("pooled")
        with ThreadPoolExecutor(8) as pool:  # several pooled connections, all of which the restart kills
            assert set(pool.map(lambda _: handle.status(), range(32))) == {"running"}
        pg_server.stop()
        try:
            with pytest.raises(ConnectionError, match="unreachable"):
                handle.status()
        finally:
            pg_server.start()
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(lambda _: handle.status(), range(32))) == {"running"}
    finally:
        client.close()
        stop.set()
        thread.join(15)


def test_a_projection_bug_stalls_the_partition_instead_of_dead_lettering(
    writer: Writer, projector: Projector, kafka: str, pg_url: str, namespace: str, monkeypatch: Any
) -> None:
    """Only undecodable input is dead-lettered; the projector's own KeyError must not skip data (issue 15)."""
    from eventstore import metrics
    from projections import projector as projector_module

    writer.run("buggy", "b1", [started("app.Order", [1])])
    real = projector_module.apply_event

    def broken(cur: Any, event: dict, *args: Any) -> Any:
        if event["workflow_id"] == "buggy":
            raise KeyError("a bug in a projection")
        return real(cur, event, *args)

    monkeypatch.setattr(projector_module, "apply_event", broken)
    failures = metrics.projector_failures.labels("KeyError")._value.get()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            projector.run_once(500)
        except BaseException as exc:  # _Stopped once the test sets the stop event
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_until(lambda: metrics.projector_failures.labels("KeyError")._value.get() >= failures + 2, 20, "retries")
    assert thread.is_alive(), outcome  # stalled on the batch, retrying
    assert metrics.projector_stalled._value.get() == 1
    assert projector.deadlettered == 0
    assert stored_offsets(pg_url, namespace).get(writer.log.partition_of("buggy"), 0) == 0
    projector._stop.set()
    thread.join(10)
    monkeypatch.setattr(projector_module, "apply_event", real)  # the fix is deployed
    projector._stop.clear()
    drain(projector, kafka, pg_url, namespace)
    assert projector.deadlettered == 0 and metrics.projector_stalled._value.get() == 0
    with connect(pg_url, namespace) as conn:
        assert read.get_workflow(conn, "buggy")["status"] == "running"  # type: ignore[index]


def test_dead_letters_are_acknowledged_outside_any_transaction(
    writer: Writer, projector: Projector, kafka: str, pg_url: str, namespace: str, monkeypatch: Any
) -> None:
    """No broker round trip while the batch's transaction holds row locks; acknowledged before it commits."""
    huge = os.urandom(10_000).hex()  # a run id PostgreSQL refuses to index
    writer.run("bad", huge, [started("app.Order", [1])])
    writer.run("fine", "f1", [started("app.Order", [2])])
    seen: list[Any] = []
    real = Projector._send_letters

    def spy(self: Projector, letters: list) -> None:
        seen.append(self._conn.info.transaction_status if self._conn is not None else None)
        real(self, letters)
        seen.append(self._dead.pending if self._dead is not None else "no writer")

    monkeypatch.setattr(Projector, "_send_letters", spy)
    drain(projector, kafka, pg_url, namespace)
    assert projector.deadlettered == 1
    assert seen == [psycopg.pq.TransactionStatus.IDLE, 0], seen
    with connect(pg_url, namespace) as conn:
        assert read.get_workflow(conn, "bad") is None
        assert read.get_workflow(conn, "fine")["status"] == "running"  # type: ignore[index]


def _projector_lag() -> float:
    """Sum of ``metamorph_projector_lag_records`` over every partition, as a scrape would read it."""
    from prometheus_client import REGISTRY

    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "metamorph_projector_lag_records"
        for sample in family.samples
    )


def test_projector_lag_keeps_growing_while_postgres_is_down(writer: Writer, kafka: str, pg_url: str, pg_server: Any, namespace: str) -> None:
    """Monitoring must tell the truth during an outage: the lag is measured against the log's end, not only
    after a batch was written (which never happens while PostgreSQL is down)."""
    proj = Projector(kafka, pg_url, namespace, batch_size=20, poll_timeout_ms=100, max_backoff=0.5)
    stop = threading.Event()
    thread = threading.Thread(target=proj.run, args=(stop,), daemon=True)
    thread.start()
    try:
        _bulk(writer, 10, "before")
        wait_until(lambda: caught_up(kafka, pg_url, namespace), 20, "the first events to be projected")
        wait_until(lambda: _projector_lag() == 0, 10, "the lag to be 0 once caught up")
        pg_server.stop()
        try:
            _bulk(writer, 10, "during1")
            wait_until(lambda: _projector_lag() >= 60, 20, "the lag to show the 60 events written meanwhile")
            first = _projector_lag()
            _bulk(writer, 10, "during2")
            wait_until(lambda: _projector_lag() >= first + 60, 20, "the lag to keep growing")
        finally:
            pg_server.start()
        wait_until(lambda: caught_up(kafka, pg_url, namespace), 30, "the projector to catch up after the restart")
        wait_until(lambda: _projector_lag() == 0, 20, "the lag to drop back to 0")
    finally:
        stop.set()
        thread.join(15)
