"""The raw cost of the hops on Metamorph's latency path, on the embedded stack.

    python -m bench.hops [--n 200]

Measures, one message at a time (nothing else running):

* ``produce_ack``: ``send`` + ``flush`` + ``future.get`` with the engine's producer settings (acks=all,
  idempotent, linger 0): what every durable step pays before it may go on;
* ``produce_to_consume``: from ``send`` until a consumer (assigned, ``fetch_max_wait_ms`` as the node uses,
  polling in a loop on another thread) has the record: one hop;
* ``pg_commit_notify``: an INSERT + NOTIFY transaction committed on one connection until a LISTENing
  connection sees the notification (the projector → client hop);
* ``pg_roundtrip``: one ``SELECT 1`` (what ``describe()`` / ``record_pending`` cost at the least).

Prints one JSON line with p50/p95/mean per hop, in ms.
"""

from __future__ import annotations

import argparse
import json
import queue
import tempfile
import threading
import time
import uuid

from .runner import percentile


def _stats(samples: list[float]) -> dict:
    s = sorted(samples)
    return {"n": len(s), "p50_ms": round(percentile(s, 50), 3), "p95_ms": round(percentile(s, 95), 3),
            "mean_ms": round(sum(s) / len(s), 3), "min_ms": round(s[0], 3)}


def measure(kafka: str, postgres: str, n: int = 200, fetch_wait_ms: int = 100) -> dict:
    import psycopg
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import NewTopic

    from eventstore.log import producer
    from eventstore.topics import admin

    topic = f"hops-{uuid.uuid4().hex[:6]}"
    adm = admin(kafka)
    adm.create_topics([NewTopic(topic, 1, 1)])
    adm.close()
    prod = producer(kafka)
    # produce -> ack
    acks = []
    for i in range(n):
        t = time.perf_counter()
        fut = prod.send(topic, key=b"k", value=f"a{i}".encode(), partition=0)
        prod.flush()
        fut.get(30)
        acks.append((time.perf_counter() - t) * 1000)
    # produce -> consume
    consumer = KafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False, fetch_max_wait_ms=fetch_wait_ms)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_end(tp)
    consumer.position(tp)
    seen: queue.Queue[tuple[bytes, float]] = queue.Queue()
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for recs in consumer.poll(timeout_ms=200).values():
                now = time.perf_counter()
                for r in recs:
                    seen.put((r.value, now))

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    time.sleep(0.5)
    hops = []
    for i in range(n):
        value = f"c{i}".encode()
        t = time.perf_counter()
        prod.send(topic, key=b"k", value=value, partition=0)
        prod.flush()
        while True:
            got, at = seen.get(timeout=10)
            if got == value:
                break
        hops.append((at - t) * 1000)
        time.sleep(0.003)  # let the consumer go back to a held fetch, as an idle node would be
    stop.set()
    thread.join(2)
    consumer.close()
    prod.close(5)
    # PostgreSQL: commit + NOTIFY -> LISTEN, and a bare round trip
    channel = f"hops_{uuid.uuid4().hex[:6]}"
    notes, trips = [], []
    with psycopg.connect(postgres, autocommit=True) as listener, psycopg.connect(postgres, autocommit=True) as writer:
        writer.execute("CREATE TEMP TABLE hop (id int)")
        listener.execute(f"LISTEN {channel}")
        for i in range(n):
            t = time.perf_counter()
            with writer.transaction():
                writer.execute("INSERT INTO hop VALUES (%s)", (i,))
                writer.execute(f"NOTIFY {channel}, '{i}'")
            for _note in listener.notifies(timeout=5, stop_after=1):
                pass
            notes.append((time.perf_counter() - t) * 1000)
        for _ in range(n):
            t = time.perf_counter()
            writer.execute("SELECT 1").fetchone()
            trips.append((time.perf_counter() - t) * 1000)
    return {"produce_ack": _stats(acks), "produce_to_consume": _stats(hops), "pg_commit_notify": _stats(notes),
            "pg_roundtrip": _stats(trips), "fetch_max_wait_ms": fetch_wait_ms}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hops")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--fetch-wait-ms", type=int, default=100)
    a = p.parse_args(argv)
    from eventstore.embedded import EmbeddedStack

    with tempfile.TemporaryDirectory(prefix="metamorph-hops-") as tmp, EmbeddedStack(tmp) as stack:
        print(json.dumps(measure(stack.kafka, stack.postgres, a.n, a.fetch_wait_ms)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
