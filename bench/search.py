"""How fast filtered lists and counts are with many workflows in the projection (docs/API.md §7; issue 11).

Not a test: ``python -m bench.search [--rows 1000000] [--postgres URL] [--explain]``. It fills the
``workflows`` table of a fresh namespace schema directly (one INSERT ... SELECT over generate_series, so
no broker or node is involved), ANALYZEs it, then times the Client's own ``list`` and ``count`` calls,
i.e. the SQL that serves the CLI and the HTTP API, over a connection pool as an application would.

Data: ``rows`` workflows, one a second, 2 types, 90 % completed / 5 % running / 5 % waiting, and search
attributes ``customer`` (10,000 distinct, 1 row in 10,000), ``amount`` (0..999), ``vip`` (1 in 10) and
``region`` (1 in 5). Without --postgres an embedded PostgreSQL is started in a temporary directory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

FILL = """
INSERT INTO workflows (id, run_id, type, status, created_at, updated_at, started_at, closed_at, search, memo)
SELECT 'wf-' || i, 'run-' || i,
       CASE WHEN i %% 7 = 0 THEN 'bench.Refund' ELSE 'bench.Order' END,
       CASE WHEN i %% 20 = 0 THEN 'running' WHEN i %% 20 = 1 THEN 'waiting' ELSE 'completed' END,
       ts, ts, ts, CASE WHEN i %% 20 > 1 THEN ts + interval '1 minute' END,
       jsonb_build_object('customer', 'c-' || (i %% 10000), 'amount', i %% 1000, 'vip', i %% 10 = 0,
                          'region', (ARRAY['eu', 'us', 'apac', 'latam', 'mea'])[1 + i %% 5]),
       jsonb_build_object('note', 'order ' || i)
FROM generate_series(1, %(rows)s) AS i, LATERAL (SELECT timestamptz '2026-01-01' + i * interval '1 second') AS t(ts)
"""


def _time(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    fn()  # warm the pool, the plan cache and the buffer cache
    samples, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), max(samples), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--postgres", help="a PostgreSQL URL (default: an embedded server in a temp dir)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of each list/count")
    args = parser.parse_args(argv)

    from actors import Client
    from eventstore.embedded import EmbeddedPostgres
    from projections.db import connect
    from projections.migrate import migrate

    server = None
    postgres = args.postgres
    if postgres is None:
        server = EmbeddedPostgres(tempfile.mkdtemp(prefix="bench-search-"))
        server.start()
        postgres = server.uri
    namespace = "bsearch" + uuid.uuid4().hex[:6]
    try:
        migrate(postgres, namespace)
        started = time.perf_counter()
        with connect(postgres, namespace, autocommit=True) as conn:
            conn.execute(FILL, {"rows": args.rows})
            conn.execute("VACUUM ANALYZE workflows")
        print(f"filled {args.rows:,} workflows in {time.perf_counter() - started:.1f}s", flush=True)
        client = Client(kafka="127.0.0.1:9", postgres=postgres, namespace=namespace)
        first = client.list(search={"region": "eu"}, limit=100)
        cases: list[tuple[str, Callable[[], Any]]] = [
            ("list customer=c-7 (100 rows match)", lambda: client.list(search={"customer": "c-7"})),
            ("list type+status+region=eu", lambda: client.list(type="bench.Order", status="running", search={"region": "eu"})),
            ("list amount>990", lambda: client.list(search={"amount": (">", 990)})),
            ("list vip=true, page 2 by cursor", lambda: client.list(search={"region": "eu"}, cursor=first.next_cursor)),
            ("list customer in (c-7,c-8) and amount<500",
             lambda: client.list(search={"customer": ("in", ["c-7", "c-8"]), "amount": ("<", 500)})),
            ("count customer=c-7", lambda: client.count(search={"customer": "c-7"})),
            ("count customer=c-7 and amount>500", lambda: client.count(search={"customer": "c-7", "amount": (">", 500)})),
            ("count all", lambda: client.count()),
            ("count type=bench.Order", lambda: client.count(type="bench.Order")),
            ("count status=running", lambda: client.count(status="running")),
            ("count type+status=completed", lambda: client.count(type="bench.Order", status="completed")),
            ("count status=running and vip=true", lambda: client.count(status="running", search={"vip": True})),
            ("count type+status=running and amount>500",
             lambda: client.count(type="bench.Order", status="running", search={"amount": (">", 500)})),
            ("count region=eu (20% of rows)", lambda: client.count(search={"region": "eu"})),
        ]
        print(f"{'query':<48} {'median ms':>10} {'max ms':>8}  result")
        for name, fn in cases:
            median, worst, result = _time(fn, args.repeat)
            shown = result if isinstance(result, int) else f"{len(result)} rows"
            print(f"{name:<48} {median:>10.2f} {worst:>8.2f}  {shown}", flush=True)
        if args.explain:
            _explain(postgres, namespace)
        client.close()
    finally:
        if server is not None:
            server.stop()
    return 0


def _explain(postgres: str, namespace: str) -> None:
    from psycopg.types.json import Jsonb

    from projections.db import connect

    queries: list[tuple[str, list[Any]]] = [
        ("SELECT id FROM workflows WHERE search @> %s ORDER BY created_at DESC, id DESC LIMIT 101", [Jsonb({"customer": "c-7"})]),
        ("SELECT count(*) FROM workflows WHERE search @> %s", [Jsonb({"customer": "c-7"})]),
        ("SELECT count(*) FROM workflows WHERE search @> %s", [Jsonb({"region": "eu"})]),
        ("SELECT coalesce(sum(n), 0) FROM workflow_counts WHERE status = ANY(%s)", [["running"]]),
        ("SELECT count(*) FROM workflows WHERE status = ANY(%s) AND search @> %s", [["running"], Jsonb({"vip": True})]),
    ]
    with connect(postgres, namespace) as conn:
        for query, params in queries:
            print("\n" + query)
            for (line,) in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + query, params):
                print("  " + line)


if __name__ == "__main__":
    sys.exit(main())
