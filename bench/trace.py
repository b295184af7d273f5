"""Where a W1 workflow's latency goes: a per-hop breakdown from Kafka record timestamps.

    python -m bench.trace [--n 50] [--workload W1]

Runs ``n`` workflows one at a time on a fresh embedded stack (node and projector as processes, as in the
benchmark), then reads back every record of the namespace's topics. Each record carries its producer's
send time (CreateTime, ms), and commands, activity tasks and events are keyed by workflow id, so the path of
each workflow can be cut into hops:

    client start() called ─► StartWorkflow command sent (client)
      ─► first events appended by the node (WorkflowStarted, ActivityScheduled)
      ─► activity task sent (node, after the events are durable)
      ─► CompleteActivity command sent (activity worker, after running greet)
      ─► last events appended by the node (ActivityCompleted, WorkflowCompleted)
      ─► result() returns in the client (the node's WorkflowResult on <ns>.replies → the client's replies
         consumer; before issue 16: projector → PostgreSQL → NOTIFY → client → SELECT)

Prints one JSON line with the median and p95 of each hop in ms, and the share of the total.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from . import procmon
from .runner import Deployment, Infra, Options, median, percentile
from .workloads import CLASSES, SIGNAL_NAME, SIGNAL_VALUE


def _records(kafka: str, topic: str) -> list:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        consumer.seek_to_beginning(*tps)
        out = []
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            for recs in consumer.poll(timeout_ms=500).values():
                out.extend(recs)
        return out
    finally:
        consumer.close()


def trace(d: Deployment, workload: str, n: int) -> dict:
    from eventstore import codec

    client = d.client
    marks: dict[str, tuple[float, float]] = {}
    for i in range(n):
        wid = f"trace-{workload}-{i}"
        t0 = time.time()
        h = client.start(CLASSES[workload], wid, id=wid)
        if workload == "W4":
            h.signal(SIGNAL_NAME, SIGNAL_VALUE)
        h.result(60)
        marks[wid] = (t0 * 1000, time.time() * 1000)
    time.sleep(0.5)
    topics = d.client.topics
    per: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for rec in _records(d.infra.kafka, topics.commands):
        kind = codec.decode(rec.value, "metamorph.CommandEnvelope")["command"][0].rsplit(".", 1)[1]
        per[rec.key.decode()].append((rec.timestamp, f"cmd:{kind}"))
    for rec in _records(d.infra.kafka, topics.activities("default")):
        per[rec.key.decode()].append((rec.timestamp, "task"))
    for rec in _records(d.infra.kafka, topics.events):
        if rec.key:
            kind = dict(rec.headers).get("metamorph-type", b"?").decode()
            per[rec.key.decode()].append((rec.timestamp, f"evt:{kind}"))
    hops: dict[str, list[float]] = defaultdict(list)
    paths: Counter[str] = Counter()
    for wid, (t_start, t_result) in marks.items():
        recs = sorted(per[wid])

        def first(label: str, recs: list = recs) -> int | None:
            return next((t for t, k in recs if k == label), None)

        last_event = max((t for t, k in recs if k.startswith("evt:")), default=None)
        points = [("client start()", t_start), ("StartWorkflow sent", first("cmd:StartWorkflow"))]
        if workload == "W4":
            points.append(("SignalWorkflow sent", first("cmd:SignalWorkflow")))
            points.append(("SignalReceived appended", first("evt:SignalReceived")))
        else:
            points.append(("WorkflowStarted appended", first("evt:WorkflowStarted")))
        points += [
            # absent when the node runs the activity in-process (eager dispatch): no task, no result command
            ("activity task sent", first("task")),
            ("CompleteActivity sent", first("cmd:CompleteActivity")),
            ("WorkflowCompleted appended", first("evt:WorkflowCompleted") or last_event),
            ("result() returned", t_result),
        ]
        paths[" → ".join(k for k, t in points if t is not None)] += 1
        timed: list[tuple[str, float]] = [(k, t) for k, t in points if t is not None]
        for (a, ta), (b, tb) in zip(timed, timed[1:], strict=False):
            hops[f"{a} → {b}"].append(tb - ta)
        hops["total"].append(t_result - t_start)
    wid0, (t0_, t1_) = next(iter(marks.items()))
    example = [[round(t - t0_, 1), k] for t, k in sorted(per[wid0])] + [[round(t1_ - t0_, 1), "result() returned"]]
    total = median(hops["total"]) if hops["total"] else float("nan")
    return {
        "workload": workload, "n": n, "traced": len(hops["total"]), "paths": dict(paths), "example_ms": example,
        "hops": {k: {"p50_ms": round(median(v), 2), "p95_ms": round(percentile(sorted(v), 95), 2),
                     "share_of_p50": round(median(v) / total, 3)} for k, v in hops.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.trace")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--workload", default="W1", choices=["W1", "W4"])
    p.add_argument("--partitions", type=int, default=8)
    a = p.parse_args(argv)
    opts = Options(partitions=a.partitions)
    with tempfile.TemporaryDirectory(prefix="metamorph-trace-") as tmp:
        infra = Infra(Path(tmp)).start()
        monitor = procmon.Monitor()
        d = Deployment(infra, Path(tmp), opts, monitor)
        try:
            d.start()
            for i in range(10):  # warm-up
                d.client.start(CLASSES["W1"], f"warm-{i}", id=f"warm-{i}").result(60)
            print(json.dumps(trace(d, a.workload, a.n)))
        finally:
            d.stop()
            infra.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
