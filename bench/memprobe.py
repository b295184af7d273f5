"""What one waiting workflow costs in memory, piece by piece (the evidence behind W5).

    python -m bench.memprobe [--n 1000]

In a fresh process, with no broker: takes the history a ``bench.Idle`` workflow has when it waits for its
signal, then measures VmRSS growth per item for

* ``instance``: a ``WorkflowInstance`` replayed to its waiting point (the suspended coroutine, the run, the
  history list): what a live workflow must keep;
* ``bare_thread_actor``: an empty ``pykka.ThreadingActor`` (one OS thread, its stack pages, an inbox);
* ``workflow_actor``: a ``WorkflowActor`` that was sent ``("load", history)``: what the node keeps per live
  workflow today;
* ``history_only``: the decoded history events (a list of dicts), what a store-backed cache would keep;
* ``partition_stores``: 8 ``PartitionStore`` SQLite files holding ``--store-n`` waiting workflows between them,
  every history read once (as the node does when it starts, signals or queries a passivated workflow): the
  page caches the node keeps, per workflow.

Prints one JSON line with bytes per item.
"""

from __future__ import annotations

import argparse
import gc
import json
import threading
import time
from datetime import UTC, datetime

import bench.workloads  # noqa: F401 - registers the workflows
from bench.procmon import rss_kb


def _idle_history() -> list[dict]:
    """The history of a bench.Idle workflow that waits for its signal (what WorkflowStarted looks like)."""
    from actors.engine.instance import WorkflowInstance
    from eventstore import payloads

    inst = WorkflowInstance("probe-0")
    command = {"type": "StartWorkflow", "command_id": "start:probe-0", "workflow_id": "probe-0",
               "at": datetime.now(UTC), "workflow_type": "bench.Idle", "input": payloads.encode(["probe-0"])}
    inst.handle([command])
    assert inst.run is not None and inst.run.status == "waiting", inst.run and inst.run.status
    return [dict(e) for e in inst.history]


def _per_item(make, n: int) -> tuple[float, list]:  # type: ignore[no-untyped-def]
    gc.collect()
    time.sleep(0.2)
    before = rss_kb(_pid())
    items = [make(i) for i in range(n)]
    gc.collect()
    time.sleep(0.5)
    return (rss_kb(_pid()) - before) * 1024 / n, items


def _stores(history: list[dict], n: int, partitions: int = 8) -> float:
    import tempfile
    from pathlib import Path

    from eventstore.store import PartitionStore
    from eventstore.topics import partition_for

    with tempfile.TemporaryDirectory(prefix="metamorph-memprobe-") as tmp:
        gc.collect()
        before = rss_kb(_pid())
        stores = [PartitionStore(Path(tmp) / f"partition-{p}.sqlite", p) for p in range(partitions)]
        offsets = [0] * partitions
        batches: list[list] = [[] for _ in range(partitions)]
        for i in range(n):
            wid = f"s{i}"
            p = partition_for(wid, partitions)
            for e in history:
                batches[p].append((offsets[p], dict(e, workflow_id=wid, run_id=f"r{i}", epoch=0, status="waiting")))
                offsets[p] += 1
            if len(batches[p]) >= 500:
                stores[p].apply(batches[p])
                batches[p] = []
        for p, batch in enumerate(batches):
            stores[p].apply(batch)
        for i in range(n):
            stores[partition_for(f"s{i}", partitions)].history(f"s{i}")
        gc.collect()
        after = rss_kb(_pid())
        for store in stores:
            store.close()
    return (after - before) * 1024 / n


def _pid() -> int:
    import os

    return os.getpid()


def main(argv: list[str] | None = None) -> int:
    import pykka

    from actors.engine.instance import WorkflowInstance
    from actors.node.actor import WorkflowActor
    from eventstore.topics import Topics

    p = argparse.ArgumentParser(prog="python -m bench.memprobe")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--store-n", type=int, default=10_000)
    a = p.parse_args(argv)
    threading.stack_size(512 * 1024)  # as the node sets it
    history = _idle_history()
    out: dict = {"n": a.n, "history_events": len(history)}

    out["history_only"], keep1 = _per_item(lambda i: [dict(e, workflow_id=f"p{i}") for e in history], a.n)

    def instance(i: int) -> WorkflowInstance:
        inst = WorkflowInstance(f"p{i}")
        inst.load([dict(e, workflow_id=f"p{i}") for e in history])
        return inst

    out["instance"], keep2 = _per_item(instance, a.n)

    class Bare(pykka.ThreadingActor):
        def on_receive(self, message):  # type: ignore[no-untyped-def]
            return None

    def bare(i: int) -> pykka.ActorRef:
        ref = Bare.start()
        ref.ask("ping")
        return ref

    out["bare_thread_actor"], keep3 = _per_item(bare, a.n)

    topics = Topics("probe")

    def actor(i: int) -> pykka.ActorRef:
        ref = WorkflowActor.start(f"q{i}", topics)
        ref.ask(("load", [dict(e, workflow_id=f"q{i}") for e in history]))
        return ref

    out["workflow_actor"], keep4 = _per_item(actor, a.n)
    out["partition_stores"] = _stores(history, a.store_n)
    out["store_n"] = a.store_n
    out = {k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}
    print(json.dumps(out))
    for ref in keep3 + keep4:
        ref.stop(block=False)
    del keep1, keep2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
