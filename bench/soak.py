"""Soak: mixed load on real Apache Kafka with a random SIGKILL every couple of minutes (issue 15, item 8).

Not part of CI (it runs for half an hour). What it does:

* starts a real Apache Kafka broker (``tests.apache``), an embedded PostgreSQL, two workflow nodes, an activity
  worker and a projector, each a real process (``tests.processes``), all under ``--workdir``;
* keeps starting ``soak.Mixed`` workflows (``bench/soak_app.py``: per run a timer, an activity, a child
  workflow and a signal, then continue-as-new) and sends each of them its signals while it runs;
* every ``--kill-every`` seconds SIGKILLs a random node, the worker or the projector, restarts it at once
  (as a supervisor would) and times the recovery: how long a few probe workflows started right after the
  kill take to complete and be visible in PostgreSQL;
* at the end waits for every workflow and checks: none lost (each completed with exactly the signals sent,
  in order, and every step's result), no result recorded twice (activity results per run, completions per
  workflow, in the log and in the projection), the projection equal to the log (the fenced events of every
  partition, one per (workflow, run, seq), are exactly the ``history`` rows), and no dead letters.

Usage::

    .venv/bin/python -m bench.soak --minutes 30 --kill-every 120 --out bench/results/soak.json
    .venv/bin/python -m bench.soak --minutes 3 --kill-every 40          # smoke run

Exit status 0 when every check passed, 1 otherwise; the figures are printed and written to ``--out``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from actors import Client
from bench.soak_app import SoakMixed, SoakProbe
from eventstore import codec
from eventstore import events as ev
from eventstore.embedded import EmbeddedPostgres
from eventstore.fencing import Fence
from eventstore.log import end_offsets, read_partition
from eventstore.topics import Topics, ensure_topics
from projections.migrate import connect, migrate
from tests.apache import ApacheKafka
from tests.processes import Processes

APP = "bench.soak_app"
TARGETS = ("n1", "n2", "w1", "p1")


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


class Cluster:
    """The soak's processes, by name; ``up(name)`` (re)starts one and returns the seconds it took."""

    def __init__(self, kafka: str, namespace: str, pg_url: str, work: Path, session_timeout: float) -> None:
        self.kafka, self.namespace, self.pg_url, self.work = kafka, namespace, pg_url, work
        self.session_timeout = str(session_timeout)
        self.procs = Processes(work / "logs")
        self.lock = threading.Lock()

    def up(self, name: str) -> float:
        started = time.monotonic()
        common = ["--kafka", self.kafka, "--namespace", self.namespace, "--log-level", "info",
                  "--session-timeout", self.session_timeout]  # fmt: skip
        if name.startswith("n"):
            argv = ["-m", "actors.interfaces.cli", "node", *common, "--app", APP, "--data-dir", str(self.work / "data"), "--name", name]
            ready = "node "
        elif name.startswith("w"):
            argv = ["-m", "actors.interfaces.cli", "worker", *common, "--app", APP, "--name", name]
            ready = "activity worker running"
        else:
            argv = ["-m", "actors.interfaces.cli", "projector", *common, "--postgres", self.pg_url, "--name", name]
            ready = "projector running"
        self.procs.start(name, argv, ready, timeout=120)
        return time.monotonic() - started

    def kill(self, name: str) -> None:
        self.procs.kill(name, signal.SIGKILL)


def completed(pg_url: str, namespace: str, ids: list[str]) -> dict[str, Any]:
    """id -> output of those of ``ids`` that completed (as projected)."""
    with connect(pg_url, namespace) as conn:
        rows = conn.execute("SELECT id, output FROM workflows WHERE id = ANY(%s) AND status = 'completed'", (ids,)).fetchall()
    return dict(rows)


class Chaos(threading.Thread):
    """Every ``every`` seconds: SIGKILL a random process, restart it, time probes until they complete."""

    def __init__(self, cluster: Cluster, client: Client, every: float, seed: int) -> None:
        super().__init__(name="soak-chaos", daemon=True)
        self.cluster, self.client, self.every = cluster, client, every
        self.random = random.Random(seed)
        self.stop = threading.Event()
        self.kills: list[dict[str, Any]] = []

    def run(self) -> None:
        while not self.stop.wait(self.every):
            target = self.random.choice(TARGETS)
            at = time.monotonic()
            self.cluster.kill(target)
            probes = [f"probe-{uuid.uuid4().hex[:10]}" for _ in range(8)]
            for pid in probes:
                self.client.start(SoakProbe, pid, id=pid)
            restart = self.cluster.up(target)
            recovery = None
            deadline = at + 600
            while time.monotonic() < deadline and not self.stop.is_set():
                if len(completed(self.cluster.pg_url, self.cluster.namespace, probes)) == len(probes):
                    recovery = time.monotonic() - at
                    break
                time.sleep(0.2)
            self.kills.append({"target": target, "restart_s": round(restart, 2),
                               "recovery_s": None if recovery is None else round(recovery, 2)})  # fmt: skip
            say(f"killed {target}: restarted in {restart:.1f}s, probes complete after "
                f"{'NEVER' if recovery is None else f'{recovery:.1f}s'}")


def expected(key: str, rounds: int) -> dict[str, Any]:
    return {
        "key": key,
        "signals": [f"s{i}" for i in range(rounds)],
        "steps": [f"w:{key}/{i}|w:child/{key}/{i}" for i in range(rounds)],
    }


def check(kafka: str, namespace: str, pg_url: str, started: dict[str, int], partitions: int) -> dict[str, Any]:
    """The end-of-soak checks; returns the figures (``problems`` lists every failure)."""
    problems: list[str] = []
    ids = list(started)
    outputs = completed(pg_url, namespace, ids)
    lost = [wid for wid in ids if wid not in outputs]
    wrong = [wid for wid, out in outputs.items() if out != expected(wid, started[wid])]
    for wid in lost[:10]:
        problems.append(f"lost: {wid} never completed")
    for wid in wrong[:10]:
        problems.append(f"wrong result: {wid}: {outputs[wid]!r} != {expected(wid, started[wid])!r}")
    topics = Topics(namespace)
    # The log: fenced events of every partition, one per (workflow, run, seq).
    log_events: dict[tuple[str, str, int], str] = {}
    log_doubles: list[tuple[str, str, int]] = []
    log_completions: Counter[str] = Counter()
    log_activity_results: Counter[tuple[str, str, Any]] = Counter()
    for p in range(partitions):
        fence = Fence()
        for _offset, envelope in read_partition(kafka, topics.events, p, expect="metamorph.EventEnvelope"):
            event = ev.from_envelope(envelope)
            if not fence.admit_flat(event) or event["type"] == "OwnershipMarker":
                continue
            key = (event["workflow_id"], event["run_id"], event["seq"])
            if key in log_events:
                log_doubles.append(key)  # written twice (a retried append): the projection keeps one
                continue
            log_events[key] = event["type"]
            if event["type"] == "WorkflowCompleted":
                log_completions[event["workflow_id"]] += 1
            elif event["type"] == "ActivityCompleted":
                log_activity_results[(event["workflow_id"], event["run_id"], event.get("activity_id"))] += 1
    twice = [wid for wid, n in log_completions.items() if n > 1]
    problems += [f"completed twice in the log: {wid}" for wid in twice[:10]]
    dup_results = [k for k, n in log_activity_results.items() if n > 1]
    problems += [f"activity result recorded twice in the log: {k}" for k in dup_results[:10]]
    with connect(pg_url, namespace) as conn:
        history = {(w, r, s): t for w, r, s, t in conn.execute("SELECT workflow_id, run_id, seq, type FROM history").fetchall()}
        pg_completions = conn.execute(
            "SELECT workflow_id, count(*) FROM history WHERE type = 'WorkflowCompleted' GROUP BY 1 HAVING count(*) > 1"
        ).fetchall()
        pg_dup_results = conn.execute(
            "SELECT workflow_id, run_id, data->>'activity_id', count(*) FROM history WHERE type = 'ActivityCompleted'"
            " GROUP BY 1, 2, 3 HAVING count(*) > 1"
        ).fetchall()
        (children,) = conn.execute("SELECT count(*) FROM workflows WHERE type = 'soak.Child' AND status = 'completed'").fetchone() or (0,)
        (runs,) = conn.execute("SELECT count(*) FROM runs WHERE type = 'soak.Mixed'").fetchone() or (0,)
    problems += [f"completed twice in the projection: {r}" for r in pg_completions[:10]]
    problems += [f"activity result twice in the projection: {r}" for r in pg_dup_results[:10]]
    missing = [k for k in log_events if k not in history]
    extra = [k for k in history if k not in log_events]
    differ = [k for k in log_events if k in history and history[k] != log_events[k]]
    problems += [f"in the log, not projected: {k} {log_events[k]}" for k in missing[:10]]
    problems += [f"projected, not in the log: {k} {history[k]}" for k in extra[:10]]
    problems += [f"projected with another type: {k}" for k in differ[:10]]
    dead = sum(end_offsets(kafka, topics.deadletter, [0]).values()) if _has_topic(kafka, topics.deadletter) else 0
    if dead:
        problems.append(f"{dead} dead letter(s) in {topics.deadletter}")
    return {
        "workflows": len(ids), "completed": len(outputs), "lost": len(lost), "wrong_results": len(wrong),
        "runs": runs, "children_completed": children, "log_events": len(log_events),
        "log_records_written_twice": len(log_doubles), "history_rows": len(history),
        "duplicate_completions": len(twice) + len(pg_completions),
        "duplicate_activity_results": len(dup_results) + len(pg_dup_results),
        "projection_missing": len(missing), "projection_extra": len(extra), "projection_differs": len(differ),
        "dead_letters": dead, "problems": problems,
    }  # fmt: skip


def _has_topic(kafka: str, topic: str) -> bool:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=kafka)
    try:
        return topic in consumer.topics()
    finally:
        consumer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the load and the kills last")
    parser.add_argument("--kill-every", type=float, default=120.0, help="seconds between two SIGKILLs")
    parser.add_argument("--rate", type=float, default=1.0, help="workflow starts per second")
    parser.add_argument("--rounds", type=int, default=3, help="runs (continue-as-new) per workflow")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--session-timeout", type=float, default=10.0)
    parser.add_argument("--drain-minutes", type=float, default=10.0, help="how long to wait for the last workflows")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--workdir", type=Path, default=None, help="data and logs (default: a new temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.kill_every <= 0 or args.rate <= 0 or args.rounds < 1:
        parser.error("--minutes, --kill-every and --rate must be positive, --rounds at least 1")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="metamorph-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    say(f"soak: {args.minutes} min, a kill every {args.kill_every:.0f}s, {args.rate}/s starts, work dir {work}")
    rng = random.Random(args.seed)
    kafka_server = ApacheKafka(work / "kafka").start()
    pg = EmbeddedPostgres(work / "pg").start()
    namespace = "soak" + uuid.uuid4().hex[:6]
    pg_url = pg.create_database(namespace)
    ensure_topics(kafka_server.bootstrap, namespace, partitions=args.partitions)
    migrate(pg_url, namespace)
    cluster = Cluster(kafka_server.bootstrap, namespace, pg_url, work, args.session_timeout)
    client = Client(kafka_server.bootstrap, pg_url, namespace)
    chaos_client = Client(kafka_server.bootstrap, pg_url, namespace)
    chaos = Chaos(cluster, chaos_client, args.kill_every, args.seed)
    started: dict[str, int] = {}
    figures: dict[str, Any] = {}
    try:
        for name in TARGETS:
            cluster.up(name)
        say(f"cluster up: kafka {kafka_server.bootstrap}, namespace {namespace}")
        chaos.start()
        signals: list[tuple[float, str, int]] = []  # (due, workflow id, signal index)
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        owed = 0.0
        last_report = t0
        signal_errors = 0
        while time.monotonic() < end:
            now = time.monotonic()
            owed += args.rate * 0.1
            while owed >= 1:
                owed -= 1
                wid = f"soak-{uuid.uuid4().hex[:10]}"
                client.start(SoakMixed, wid, args.rounds, rng.uniform(0.5, 30.0), [], [], id=wid)
                started[wid] = args.rounds
                due = now
                for i in range(args.rounds):  # in order: the workflow must see them in the order they were sent
                    due += rng.uniform(0.5, 6.0)
                    heapq.heappush(signals, (due, wid, i))
            while signals and signals[0][0] <= now:
                _due, wid, i = heapq.heappop(signals)
                try:
                    client.get(wid).signal("step", f"s{i}")
                except Exception as exc:  # counted: a signal the client could not send is a failure of the soak
                    signal_errors += 1
                    say(f"signal {i} to {wid} failed: {exc!r}")
            if now - last_report >= 60:
                last_report = now
                say(f"{(now - t0) / 60:.1f} min: {len(started)} started, {len(chaos.kills)} kills")
            time.sleep(0.1)
        while signals:  # the last workflows' remaining signals
            _due, wid, i = heapq.heappop(signals)
            client.get(wid).signal("step", f"s{i}")
        chaos.stop.set()
        chaos.join(700)
        say(f"load done: {len(started)} workflows started; waiting for them to complete")
        drain_end = time.monotonic() + args.drain_minutes * 60
        drained_at = None
        while time.monotonic() < drain_end:
            if len(completed(pg_url, namespace, list(started))) == len(started):
                drained_at = time.monotonic()
                break
            time.sleep(2)
        say("all completed" if drained_at else "drain timed out; checking anyway")
        figures = check(kafka_server.bootstrap, namespace, pg_url, started, args.partitions)
        recoveries = [k["recovery_s"] for k in chaos.kills if k["recovery_s"] is not None]
        figures.update({
            "minutes": args.minutes, "kill_every_s": args.kill_every, "rate_per_s": args.rate, "rounds": args.rounds,
            "partitions": args.partitions, "kills": chaos.kills, "kill_count": len(chaos.kills),
            "kills_by_target": dict(Counter(k["target"] for k in chaos.kills)),
            "recovery_max_s": max(recoveries, default=None),
            "recovery_median_s": sorted(recoveries)[len(recoveries) // 2] if recoveries else None,
            "unrecovered_kills": sum(1 for k in chaos.kills if k["recovery_s"] is None),
            "signal_errors": signal_errors, "workdir": str(work),
        })  # fmt: skip
        if figures["unrecovered_kills"]:
            figures["problems"].append(f"{figures['unrecovered_kills']} kill(s) without recovery in 10 minutes")
        if signal_errors:
            figures["problems"].append(f"{signal_errors} signal(s) could not be sent")
    finally:
        chaos.stop.set()
        client.close()
        chaos_client.close()
        cluster.procs.stop_all()
        kafka_server.stop()
        pg.stop()
    text = json.dumps(figures, indent=2, default=str)
    print(text, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    ok = not figures.get("problems")
    say("SOAK PASSED" if ok else f"SOAK FAILED: {len(figures.get('problems', []))} problem(s)")
    return 0 if ok else 1


if __name__ == "__main__":
    codec.registry()  # fail early if the schemas cannot load
    sys.exit(main())
