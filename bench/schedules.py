"""Firing lateness of many active ``every=`` schedules (docs/API.md §8 target: p99 < 100 ms at 1,000).

    .venv/bin/python -m bench.schedules --schedules 1000 --seconds 30 [--broker apache|noida]

One node and a projector in this process on an embedded stack (bench.runner.Infra). Intervals are mixed
(5, 7, 11, 13 s, epoch-aligned, so some seconds see several hundred firings together). Two numbers per run,
from the recorded histories in PostgreSQL:
  * wake: a schedule's TimerFired time minus its fire time (the node's timer resolution under load);
  * start: the target's WorkflowStarted time minus the fire time in its id (wake + the child-start hop).
Not a test: the numbers depend on the machine (this one is a shared 2-core box).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import REGISTRY

from actors import Client, Workflow
from actors.node.loop import Node
from bench.runner import Infra, percentile
from eventstore.topics import ensure_topics
from projections.migrate import connect, migrate
from projections.projector import Projector

INTERVALS = (5, 7, 11, 13)


class Noop(Workflow):
    name = "bench.schedules.Noop"

    async def execute(self) -> None:
        return None


def _stats(values: list[float]) -> dict:
    values = sorted(values)
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_ms": round(percentile(values, 50) * 1000, 1), "p95_ms": round(percentile(values, 95) * 1000, 1),
            "p99_ms": round(percentile(values, 99) * 1000, 1), "max_ms": round(values[-1] * 1000, 1)}


def _work() -> dict[str, float]:
    """Load-independent counters of the node in this process: events replayed to reload evicted actors, and
    actors stopped by reason (an evicted schedule replays its history at its next firing)."""
    samples = {(s.name, s.labels.get("reason", "")): s.value for m in REGISTRY.collect() for s in m.samples}
    return {"replayed_events": samples.get(("metamorph_replayed_events_total", ""), 0.0),
            **{f"passivated_{r}": samples.get(("metamorph_passivations_total", r), 0.0) for r in ("lru", "idle", "finished")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--broker", default="apache", choices=("apache", "noida"))
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mm-bench-sched-") as tmp:
        infra = Infra(Path(tmp), args.broker).start()
        try:
            run(infra, args)
        finally:
            infra.stop()


def run(infra: Infra, args: argparse.Namespace) -> None:
    ns = "benchsched"
    ensure_topics(infra.kafka, ns, partitions=args.partitions)
    migrate(infra.postgres, ns)
    node = Node(infra.kafka, ns, data_dir=Path(infra.workdir) / "node", max_live_workflows=max(1000, args.schedules + 100)).start()
    stop = threading.Event()
    projector = threading.Thread(target=Projector(infra.kafka, infra.postgres, ns).run, args=(stop,), daemon=True)
    projector.start()
    client = Client(infra.kafka, infra.postgres, ns)
    try:
        assert node.wait_ready(60)
        t0 = time.time()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: client.schedule(f"s{i}", Noop, every=INTERVALS[i % len(INTERVALS)], catchup_window=60),
                          range(args.schedules)))
        created = datetime.now(UTC)
        print(f"created {args.schedules} schedules in {time.time() - t0:.1f}s; measuring {args.seconds:.0f}s", flush=True)
        before = _work()
        time.sleep(args.seconds)
        window_end = datetime.now(UTC)
        work = {k: v - before[k] for k, v in _work().items()}
        time.sleep(5)  # let the projector catch up
        with connect(infra.postgres, ns) as conn:
            starts = conn.execute(
                "SELECT workflow_id, at FROM history WHERE type = 'WorkflowStarted' AND workflow_id LIKE 's%%@%%'"
            ).fetchall()
            wakes = conn.execute(
                "SELECT f.at, (s.data->>'fire_at')::bigint FROM history f JOIN history s ON s.workflow_id = f.workflow_id "
                "AND s.run_id = f.run_id AND s.seq = (f.data->>'timer_id')::int "
                "WHERE f.type = 'TimerFired' AND f.workflow_id LIKE 'schedule:%%'"
            ).fetchall()
        start_late = []
        for wid, at in starts:
            fire = datetime.strptime(wid.split("@", 1)[1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            if created < fire <= window_end and at:
                start_late.append((at - fire).total_seconds())
        wake_late = [(at - datetime.fromtimestamp(fire_at / 1000, UTC)).total_seconds() for at, fire_at in wakes if at]
        result = {"schedules": args.schedules, "seconds": args.seconds, "broker": args.broker, "partitions": args.partitions,
                  "start_lateness": _stats(start_late), "wake_lateness": _stats(wake_late), "in_window": work}
        print(json.dumps(result), flush=True)
    finally:
        client.close()
        stop.set()
        projector.join(10)
        node.stop()


if __name__ == "__main__":
    main()
