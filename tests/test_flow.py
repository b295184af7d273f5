"""Flow control for activities (docs/API.md §9) with three real worker processes and a node that runs none.

Limits hold across the workers together (each takes its share by the partitions it owns), keyed tasks
never overlap and run in order, and waiting tasks start lowest priority first without their wait counting
as an attempt. Every execution leaves start/end wall-clock marks (``tests/apps/flow_app.py``); all
processes share this machine's clock, so the marks compare across processes.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from actors import ActivityOptions, Client, queue
from actors.activities.worker import _Gate, _Outcome, _QueueWorker
from actors.engine.definitions import QueueLimits, parse_rate, queue_limits, share
from actors.node.loop import Node
from eventstore.topics import ensure_topics, partition_for
from tests.apps import flow_app as app
from tests.processes import Processes, wait_until

pytestmark = pytest.mark.slow

PARTITIONS = 4
FLOW_APP = "tests.apps.flow_app"
#: A start mark is written a moment after the worker admitted the task (a thread or loop hop, a file
#: append), so two starts admitted exactly one window apart may be marked a little closer; 100 ms covers
#: that hop on a loaded 2-core machine. Concurrency needs no tolerance: a mark's interval lies inside the
#: slot it held (start marked after taking it, end marked before giving it back).
CLOCK_TOLERANCE = 0.1


def test_queue_limits_are_validated_where_declared():
    for bad in ("abc/s", "0/s", "5/d", "5", "/s", "-1/s", "1.5/s"):
        with pytest.raises(ValueError):
            queue("bad-rate", rate_limit=bad)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            queue("bad-concurrency", concurrency=bad)
    for bad in (-1, 10, 2.0, True):
        with pytest.raises(ValueError):
            ActivityOptions(priority=bad)
    with pytest.raises(ValueError):
        ActivityOptions(key="")
    assert parse_rate("60/m") == (60, 60.0) and parse_rate("20/s") == (20, 1.0) and parse_rate("3/h") == (3, 3600.0)
    assert queue_limits("limited").concurrency == 8


def test_shares_add_up_to_the_limit_whatever_the_assignment():
    """Integer shares by partition, remainder to the lowest ones: never more than the limit in total, and
    a limit smaller than the partition count narrows the routing so no routed partition gets zero."""
    import itertools

    for limit in range(1, 30):
        limits = queue(f"share-{limit}", concurrency=limit)
        routed = limits.routed_partitions(PARTITIONS)
        assert routed == min(limit, PARTITIONS)
        assert all(share(limit, [p], routed) >= 1 for p in range(routed))
        for cut in itertools.product(range(3), repeat=PARTITIONS):  # every split among three workers
            assert sum(share(limit, [p for p in range(PARTITIONS) if cut[p] == w], routed) for w in range(3)) == limit


def _gate_with_sent(limits: QueueLimits | None) -> tuple[_Gate, list[tuple[str, dict]]]:
    """A flow-control gate over a stand-in queue worker that records the commands it would send."""
    sent: list[tuple[str, dict]] = []
    worker = SimpleNamespace(
        worker=SimpleNamespace(name="stand-in", partitions=PARTITIONS, concurrency=4, was_cancelled=lambda _key: False),
        in_flight=0, producer=SimpleNamespace(flush=lambda: None), _execute=lambda _out: None,
        send_command=lambda _wid, kind, _cid, **body: sent.append((kind, body)),
    )  # fmt: skip
    gate = _Gate(worker, limits)  # type: ignore[arg-type]
    gate.assigned(set(range(PARTITIONS)))
    return gate, sent


def _task(activity_id: int, timeout: float | None = 2.0, key: str | None = None) -> _Outcome:
    task = {"workflow_id": "wf", "run_id": "r", "activity_id": activity_id, "attempt": 1, "timeout": timeout, "key": key}
    return _Outcome(None, activity_id, task)


def test_a_gated_task_that_starts_at_once_tells_its_owner_it_started():
    """The owner's start-to-close timer runs from dispatch; a task of a limited or keyed queue may have sat
    in the topic before a worker read it, so the worker reports every such start (not only after a wait in
    the gate), and the owner's deadline moves to start + timeout. No timeout, nothing to report."""
    gate, sent = _gate_with_sent(QueueLimits("limited-here", concurrency=2))
    gate.worker.in_flight = 2
    gate.hold(_task(1))
    gate.hold(_task(2, timeout=None))
    gate.admit()
    assert [(kind, body["activity_id"], body.get("waiting")) for kind, body in sent] == [("HeartbeatActivity", 1, True)]
    keyed, sent = _gate_with_sent(None)
    keyed.worker.in_flight = 1
    keyed.hold(_task(3, key="user-1"))
    keyed.admit()
    assert [(kind, body["activity_id"]) for kind, body in sent] == [("HeartbeatActivity", 3)]


@pytest.fixture
def slow_pickup(kafka, namespace, tmp_path, monkeypatch):
    """A node whose own activity worker reads each task of the ``single`` queue a second late: the pickup
    delay of a loaded worker, made deterministic."""
    marks = tmp_path / "marks"
    monkeypatch.setattr(app, "MARKS", marks)
    late_submit = _QueueWorker._submit

    def submit(self: _QueueWorker, tp: object, rec: object) -> None:
        time.sleep(PICKUP_DELAY)
        late_submit(self, tp, rec)

    monkeypatch.setattr(_QueueWorker, "_submit", submit)
    node = Node(kafka, namespace, data_dir=tmp_path / "node", queues=("single",), partitions=PARTITIONS).start()
    client = Client(kafka, None, namespace)
    try:
        assert node.wait_ready(30)
        yield client, marks
    finally:
        client.close()
        node.stop()


PICKUP_DELAY = 1.0


def test_start_to_close_counts_from_the_real_start_after_a_slow_pickup(slow_pickup):
    """A 1.5 s job with a 2 s start-to-close timeout, read 1 s after dispatch, runs once: its attempt is
    timed from when it started, not from when the owner sent it (the flake of the priority test under load)."""
    client, marks = slow_pickup
    client.start(app.Job, "slow-pickup", 1.5, id=f"slow-pickup-{uuid.uuid4().hex[:6]}")
    wait_until(lambda: any(w == "end" for w, _, _ in _marks(marks / "single")), 60, "the job to finish")
    time.sleep(PICKUP_DELAY + 2.0)  # an attempt timed out at 2 s would have been retried and read by now
    started = [label for w, label, _ in _marks(marks / "single") if w == "start"]
    assert started == ["slow-pickup#1"], f"the job was timed from its dispatch: {started}"


def _marks(path: Path) -> list[tuple[str, str, float]]:
    if not path.exists():
        return []
    return [(w, label, float(t)) for w, label, t, _pid in (line.split() for line in path.read_text().splitlines())]


def _intervals(path: Path) -> dict[str, tuple[float, float]]:
    starts = {label: t for w, label, t in _marks(path) if w == "start"}
    ends = {label: t for w, label, t in _marks(path) if w == "end"}
    return {label: (starts[label], ends[label]) for label in starts if label in ends}


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda p: (p[0], p[1]))
    best = now = 0
    for _, step in points:
        now += step
        best = max(best, now)
    return best


def _max_in_window(starts: list[float], window: float) -> int:
    starts = sorted(starts)
    return max(sum(1 for t in starts[i:] if t < s + window) for i, s in enumerate(starts))


def _shares_logged(log: Path, queue_name: str) -> tuple[set[int], int] | None:
    """The last assignment a worker logged for ``queue_name``: (partitions, concurrency share)."""
    found = re.findall(rf"owns partitions \[([\d, ]*)\] of queue {queue_name}: concurrency share (\d+)",
                       log.read_text(errors="replace") if log.exists() else "")  # fmt: skip
    if not found:
        return None
    parts, conc = found[-1]
    return {int(p) for p in re.findall(r"\d+", parts)}, int(conc)


@pytest.fixture
def cluster(kafka, namespace, tmp_path):
    """A node that runs no activities, and three `metamorph worker` processes of tests.apps.flow_app."""
    ensure_topics(kafka, namespace, partitions=PARTITIONS)
    for q in ("limited", "keyed", "single"):
        ensure_topics(kafka, namespace, partitions=PARTITIONS, queues=(q,))
    marks = tmp_path / "marks"
    procs = Processes(tmp_path / "logs", {"METAMORPH_TEST_MARKS": str(marks)})
    app.MARKS = marks
    node = Node(kafka, namespace, data_dir=tmp_path / "node", run_activities=False).start()
    client = Client(kafka, None, namespace)
    try:
        assert node.wait_ready(30)
        for w in ("w1", "w2", "w3"):
            procs.cli(w, "worker", kafka, namespace, "--app", FLOW_APP, "--name", w, "--session-timeout", "6",
                      ready="activity worker running")  # fmt: skip

        def settled() -> bool:
            logged = [_shares_logged(procs.log(w), "limited") for w in ("w1", "w2", "w3")]
            return all(logged) and set().union(*(p for p, _ in logged)) == set(range(PARTITIONS)) and sum(
                len(p) for p, _ in logged) == PARTITIONS  # fmt: skip

        wait_until(settled, 60, "the three workers to share the limited queue's partitions")
        yield client, marks, procs
    finally:
        client.close()
        procs.stop_all()
        node.stop()


def _balanced_ids(n: int, prefix: str) -> list[str]:
    """Workflow ids whose tasks (keyed ``<id>/<activity id 2>`` on a limited queue) fill the partitions
    evenly, so throughput measures the limits rather than the luck of the hash."""
    ids: list[str] = []
    per = {p: 0 for p in range(PARTITIONS)}
    while len(ids) < n:
        wid = f"{prefix}-{uuid.uuid4().hex[:8]}"
        p = partition_for(f"{wid}/2", PARTITIONS)
        if per[p] < n // PARTITIONS:
            per[p] += 1
            ids.append(wid)
    return ids


def test_queue_limits_hold_across_three_workers_and_are_reached(cluster):
    client, marks, procs = cluster
    shares = [_shares_logged(procs.log(w), "limited") for w in ("w1", "w2", "w3")]
    assert sum(c for _, c in shares) == 8, f"concurrency shares {shares} must add up to the limit"
    n = 60
    for i, wid in enumerate(_balanced_ids(n, "tick")):
        client.start(app.Tick, f"t{i}", id=wid)
    wait_until(lambda: len(_intervals(marks / "limited")) >= n, 90, f"{n} limited activities to finish")
    spans = list(_intervals(marks / "limited").values())
    starts = [s for s, _ in spans]
    concurrency = _max_overlap(spans)
    in_window = _max_in_window(starts, 1.0 - CLOCK_TOLERANCE)
    elapsed = max(e for _, e in spans) - min(starts)
    throughput = n / elapsed
    print(f"\nlimited queue: {len(spans)} runs, max concurrency {concurrency} (limit 8), max starts in a "
          f"{1 - CLOCK_TOLERANCE:.1f}s window {in_window} (limit 20/s), max in 1.0s {_max_in_window(starts, 1.0)}, "
          f"{throughput:.1f}/s over {elapsed:.2f}s; shares {shares}")  # fmt: skip
    assert len(spans) == n, "every task ran exactly once"
    assert concurrency <= 8
    assert in_window <= 20
    assert throughput >= 0.6 * 20, f"throughput {throughput:.1f}/s is under 60% of the 20/s limit"


def test_keyed_tasks_never_overlap_and_run_in_order(cluster):
    client, marks, _ = cluster
    keys = [f"user-{k}-{uuid.uuid4().hex[:4]}" for k in range(3)]
    for key in keys:
        client.start(app.Keyed, key, 5, id=f"keyed-{key}")
    wait_until(lambda: len(_intervals(marks / "keyed")) >= 15, 90, "15 keyed activities to finish")
    spans = _intervals(marks / "keyed")
    assert len(spans) == 15
    for key in keys:
        mine = sorted((s, e, label) for label, (s, e) in spans.items() if label.startswith(f"{key}:"))
        assert [label for _, _, label in mine] == [f"{key}:{i}" for i in range(5)], f"{key} not FIFO: {mine}"
        assert _max_overlap([(s, e) for s, e, _ in mine]) == 1, f"{key} ran two at once"
    together = _max_overlap(list(spans.values()))
    print(f"\nkeyed: 3 keys x 5, at most {together} running at once across keys")
    assert together > 1, "one key waiting must not hold up the others"


def test_waiting_tasks_run_lowest_priority_first_and_waiting_is_no_attempt(cluster):
    client, marks, _ = cluster
    run = uuid.uuid4().hex[:6]
    client.start(app.Job, "blocker", 1.5, id=f"blocker-{run}")  # concurrency 1: the backlog waits behind it
    wait_until(lambda: any(label == "blocker#1" for w, label, _ in _marks(marks / "single") if w == "start"), 30,
               "the blocker to start")  # fmt: skip
    # Workflow-level priority (client.start) and per-call ActivityOptions(priority) that overrides it.
    backlog = [("p7", 7, None), ("p3", 3, None), ("p9", 9, None), ("p0", 9, 0), ("p5", 5, None), ("p1", 1, None)]
    for label, wf_priority, activity_priority in backlog:
        client.start(app.Job, label, 0.6, activity_priority, id=f"{label}-{run}",
                     **({} if wf_priority is None else {"priority": wf_priority}))  # fmt: skip
    wait_until(lambda: len(_intervals(marks / "single")) >= 7, 60, "the backlog to finish")
    time.sleep(1.0)  # a timed-out attempt would run again: give it the chance to show up
    order = [label for w, label, _ in sorted(_marks(marks / "single"), key=lambda m: m[2]) if w == "start"]
    print(f"\npriority order: {order}")
    assert order == ["blocker#1", "p0#1", "p1#1", "p3#1", "p5#1", "p7#1", "p9#1"]
    assert _max_overlap(list(_intervals(marks / "single").values())) == 1
