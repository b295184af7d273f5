"""Message fencing (issue 15, item 7): what a node sends carries its ownership (partition, epoch, marker offset,
event offset) in a Kafka header, and receivers drop what a former owner sent about events after a newer
owner's marker -- a zombie's activity tasks, cancellations, replies and commands -- counting each drop."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime

from prometheus_client import REGISTRY

from actors import Client, WorkflowNotFound
from actors.activities.worker import ActivityWorker
from actors.engine.dispatch import Message, _command, reply_message, task_message
from actors.node.loop import Node
from eventstore import events as ev
from eventstore import payloads
from eventstore.fencing import EPOCH_HEADER, MessageFence, epoch_header, stamp_of
from eventstore.log import EventLog, producer
from eventstore.topics import Topics, ensure_topics, partition_for
from projections.migrate import migrate
from projections.projector import Projector
from tests.apps import runtime_app as app
from tests.processes import wait_until

PARTITIONS = 2


def _dropped(component: str, topic: str) -> float:
    return REGISTRY.get_sample_value("metamorph_stale_messages_dropped_total", {"component": component, "topic": topic}) or 0.0


# -- the rule ------------------------------------------------------------------------------------------------
def test_the_stamp_round_trips_and_garbage_is_no_stamp():
    assert stamp_of([epoch_header(3, 7, 120, 130)]) == (3, 7, 120, 130)
    assert stamp_of(None) is None
    assert stamp_of([("other", b"1:2:3:4")]) is None
    assert stamp_of([(EPOCH_HEADER, b"not-a-stamp")]) is None
    assert stamp_of([(EPOCH_HEADER, b"\xff\xfe")]) is None


def test_a_former_owners_message_about_an_event_after_the_new_marker_is_dropped_and_counted():
    fence = MessageFence("unit")
    before = _dropped("unit", "t")
    assert fence.admit("t", None)  # unstamped (clients, workers): always
    assert fence.admit("t", [epoch_header(0, 5, 100, 110)])  # owner of epoch 5, marker at 100
    assert fence.admit("t", [epoch_header(0, 6, 200, 210)])  # a new owner took over at 200
    assert fence.newest(0) == (6, 200)
    assert not fence.admit("t", [epoch_header(0, 5, 100, 230)])  # the old owner wrote after 200: a zombie
    assert fence.admit("t", [epoch_header(0, 5, 100, 150)])  # its event precedes 200: history, delivered late
    assert fence.admit("t", [epoch_header(0, 6, 200, 240)])  # the owner itself
    assert fence.admit("t", [epoch_header(1, 1, 5, 6)])  # another partition has its own owners
    assert fence.dropped == 1 and _dropped("unit", "t") == before + 1


def test_a_node_learns_its_own_epoch_so_it_drops_what_a_zombie_sends_to_its_partition():
    fence = MessageFence("unit")
    fence.observe(2, 9, 500)
    fence.observe(2, 8, 400)  # an older owner never lowers what is known
    assert fence.newest(2) == (9, 500)
    assert not fence.admit("t", [epoch_header(2, 8, 400, 501)])
    assert fence.admit("t", [epoch_header(2, 8, 400, 499)])


# -- a zombie on real Kafka ------------------------------------------------------------------------------------
def test_a_zombie_nodes_tasks_replies_and_commands_are_dropped_and_counted(kafka, pg_url, namespace, tmp_path, monkeypatch):
    """n1 owns the partitions, then n2 takes them over. n1, as a zombie that has not noticed, writes an event
    (fenced out of history by n2's marker) and sends what it would oblige: an activity task, a reply to a
    waiting client and a start of another workflow. The worker, the client and n2 drop all three and count
    them; a task n1 sent about an event *before* n2's marker (history, delivered late) still runs."""
    topics = Topics(namespace)
    ensure_topics(kafka, namespace, partitions=PARTITIONS)
    migrate(pg_url, namespace)
    marks = tmp_path / "marks"
    monkeypatch.setattr(app, "MARKS", marks)  # the worker runs in this process: rt.mark writes here
    stop = threading.Event()
    projector = threading.Thread(target=Projector(kafka, pg_url, namespace).run, args=(stop,), daemon=True)
    projector.start()
    worker = ActivityWorker(kafka, namespace, name="w").start()
    client = Client(kafka, pg_url, namespace)
    n1 = Node(kafka, namespace, data_dir=tmp_path / "n1", name="n1", run_activities=False).start()
    n2: Node | None = None
    try:
        wait_until(lambda: n1.owned_partitions == list(range(PARTITIONS)), 60, "n1 to own every partition")
        first = client.start(app.Hello, "one", id=f"before-{uuid.uuid4().hex[:6]}")
        assert first.result(timeout=60) == "hello one"
        n1.stop()  # leaves the group: n2 takes every partition over with a higher epoch and a new marker
        n2 = Node(kafka, namespace, data_dir=tmp_path / "n2", name="n2", run_activities=False).start()
        wait_until(lambda: n2.owned_partitions == list(range(PARTITIONS)), 60, "n2 to own every partition")
        wid = f"after-{uuid.uuid4().hex[:6]}"
        p = partition_for(wid, PARTITIONS)
        old_epoch, old_marker = n1._epochs[p]
        new_epoch, new_marker = n2._epochs[p]
        assert new_epoch > old_epoch and new_marker > old_marker
        # The worker and the client hear from the new owner of p: a task, and a query reply.
        waiting = client.start(app.Signalled, "two", id=wid)
        wait_until(lambda: _status(waiting) == "waiting", 60, "the workflow on n2 to wait")
        assert waiting.query("peek") is None
        waiting.signal("go", "v")
        assert waiting.result(timeout=60) == "hello two/v"

        # n1 wakes up as a zombie: it still believes it owns p and writes after n2's marker.
        n1._log = EventLog(kafka, topics, PARTITIONS, producer(kafka))
        now = datetime.now(UTC)
        late = n1._log.append(p, [ev.to_envelope(ev.ownership_marker(p, old_epoch, "n1", now), "", old_epoch, "n1")])[0]
        assert late > new_marker
        zombie_key, history_key = f"zombie-{uuid.uuid4().hex[:6]}", f"history-{uuid.uuid4().hex[:6]}"
        replies = client._reply_listener()
        request = f"req-{uuid.uuid4().hex}"
        waiter = replies.expect(request)
        ghost = f"ghost-{uuid.uuid4().hex[:6]}"
        before = {c: _dropped(c, t) for c, t in (("worker", topics.activities("default")), ("client", topics.replies), ("node", topics.commands))}
        start = _command(topics, "StartWorkflow", ghost, f"{wid}:start:{ghost}", now, workflow_type=app.Hello.name,
                         input=payloads.encode(["ghost"]))  # fmt: skip
        n1._send([
            replace(_task(topics, zombie_key), origin=p, origin_offset=late),
            replace(reply_message(topics, request, True, payloads.encode("forged")), origin=p, origin_offset=late),
            replace(start, origin=p, origin_offset=late),
            # About an event before n2's marker: history (n2 restored it), merely delivered late. It must run.
            replace(_task(topics, history_key), origin=p, origin_offset=old_marker),
        ])
        wait_until(lambda: (marks / history_key).exists(), 60, "the late but legitimate task to run")
        wait_until(lambda: _dropped("worker", topics.activities("default")) == before["worker"] + 1, 30, "the worker to drop the zombie's task")
        wait_until(lambda: _dropped("client", topics.replies) == before["client"] + 1, 30, "the client to drop the zombie's reply")
        wait_until(lambda: _dropped("node", topics.commands) == before["node"] + 1, 30, "n2 to drop the zombie's start")
        assert replies.wait(request, waiter, 0.5) is None, "the client took a zombie's reply"
        assert not (marks / zombie_key).exists(), "the worker ran a zombie's task"
        time.sleep(1)  # the projector had time to see a start, had n2 made one
        assert _status(client.get(ghost)) is None, "n2 started a workflow on a zombie's command"
    finally:
        client.close()
        if n2 is not None:
            n2.stop()
        n1.stop()
        worker.stop()
        stop.set()
        projector.join(10)


def _task(topics: Topics, key: str) -> Message:
    """An attempt of ``rt.mark`` (which writes ``MARKS/key`` when it runs) for a workflow nobody runs."""
    scheduled = {
        "run_id": "r1", "activity_id": 1, "name": "rt.mark",
        "queue": "default", "input": payloads.encode([key]), "kwargs": b"{}", "timeout": None,
        "heartbeat_timeout": None, "key": None, "priority": None,
    }  # fmt: skip
    return task_message(topics, f"wf-{key}", "rt.Nobody", scheduled, 1, datetime.now(UTC))


def _status(handle) -> str | None:
    try:
        return handle.status()
    except WorkflowNotFound:
        return None


def test_a_zombie_never_puts_a_batch_fenced_out_of_history_in_its_store(kafka, namespace, tmp_path):
    """Found by bench/soak.py under a broker stall: a node the group had replaced kept processing commands, its
    events landed after the new owner's marker (fenced: no reader has them), yet it applied them to its store.
    Owning the partition again later, it restored from its checkpoint past them and deduplicated the re-sent
    starts against them: three workflows stayed `pending` for ever. The zombie must notice the newer marker
    in the gap before its own append, keep the batch out of its store and its messages unsent, and rejoin."""
    from collections import OrderedDict

    from actors.client.sync import command_record
    from actors.node.loop import _Owned
    from eventstore import codec
    from eventstore.store import PartitionStore

    ensure_topics(kafka, namespace, partitions=PARTITIONS)
    n1 = Node(kafka, namespace, data_dir=tmp_path / "n1", name="n1", run_activities=False).start()
    n2: Node | None = None
    store = None
    try:
        wait_until(lambda: n1.owned_partitions == list(range(PARTITIONS)), 60, "n1 to own every partition")
        n1.stop()
        n2 = Node(kafka, namespace, data_dir=tmp_path / "n2", name="n2", run_activities=False).start()
        wait_until(lambda: n2.owned_partitions == list(range(PARTITIONS)), 60, "n2 to own every partition")
        wid = f"zombie-start-{uuid.uuid4().hex[:6]}"
        p = partition_for(wid, PARTITIONS)
        # n1 wakes up believing it still owns p, with its store and epoch, and handles a start.
        n1._log = EventLog(kafka, Topics(namespace), PARTITIONS, producer(kafka))
        store = PartitionStore(n1.data_dir / f"partition-{p}.sqlite", p)
        n1._owned = {p: _Owned(store, n1._epochs[p][0])}
        value = command_record("StartWorkflow", wid, f"start:{wid}", workflow_type=app.Hello.name, input=payloads.encode(["z"]))
        command = ev.flat_command(codec.decode(value, "metamorph.CommandEnvelope"))
        n1._process({p: OrderedDict({wid: [command]})})
        assert store.history(wid) == [], "a batch fenced out of history reached the zombie's store"
        assert n1._fenced == {p}, "the zombie did not notice the newer owner's marker before its append"
    finally:
        if store is not None:
            store.close()
        if n2 is not None:
            n2.stop()
        n1._owned = {}
        n1.stop()
