"""The per-(type, status) workflow counters of migration 004 that answer ``client.count`` (issue 11).

They must equal count(*) after every kind of write the table sees — the projector's upserts (insert, or
update of a client's pending row), status changes, updates that change nothing counted, bulk inserts,
deletes — and after an upgrade of a database that already holds workflows. PostgreSQL only, no broker.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from projections.db import connect
from projections.migrate import MIGRATIONS_DIR, migrate
from projections.read import count_query, count_workflows

INSERT = """
INSERT INTO workflows (id, type, status, created_at, updated_at) VALUES (%s, %s, %s, now(), now())
ON CONFLICT (id) DO UPDATE SET status = excluded.status, type = excluded.type
"""


def _check(conn) -> None:
    truth = {(t, s): n for t, s, n in conn.execute("SELECT type, status, count(*) FROM workflows GROUP BY 1, 2")}
    kept = {
        (t, s): n for t, s, n in conn.execute("SELECT type, status, sum(n) FROM workflow_counts GROUP BY 1, 2")
        if n != 0
    }
    assert kept == truth
    assert count_workflows(conn) == sum(truth.values())
    for (t, s), n in truth.items():
        assert count_workflows(conn, status=s, type=t) == n
    assert count_workflows(conn, status=["running", "waiting"]) == sum(
        n for (_, s), n in truth.items() if s in ("running", "waiting"))
    assert count_workflows(conn, type="A") == sum(n for (t, _), n in truth.items() if t == "A")


def test_counters_follow_every_write_and_answer_counts(pg_url, namespace, tmp_path: Path) -> None:
    # An upgraded deployment: rows written before migration 004 existed are counted by it.
    old = tmp_path / "migrations"
    old.mkdir()
    for path in MIGRATIONS_DIR.glob("*.sql"):
        if not path.name.startswith("004_"):
            shutil.copy(path, old / path.name)
    migrate(pg_url, namespace, old)
    with connect(pg_url, namespace, autocommit=True) as conn:
        for i in range(30):
            conn.execute(INSERT, (f"old-{i}", "A" if i % 3 else "B", "completed" if i % 2 else "running"))
    assert migrate(pg_url, namespace) == [4]
    with connect(pg_url, namespace, autocommit=True) as conn:
        _check(conn)
        conn.execute(INSERT, ("w-1", "A", "pending"))  # a client's pending row
        conn.execute(INSERT, ("w-1", "A", "running"))  # the projector's start: the upsert's update path
        conn.execute("UPDATE workflows SET status = 'waiting' WHERE id = 'w-1'")
        conn.execute("UPDATE workflows SET updated_at = now() WHERE id = 'w-1'")  # nothing counted changes
        conn.execute("UPDATE workflows SET status = 'waiting' WHERE id = 'w-1'")  # same status again
        _check(conn)
        conn.execute(
            "INSERT INTO workflows (id, type, status, created_at, updated_at) "
            "SELECT 'bulk-' || i, 'B', 'failed', now(), now() FROM generate_series(1, 500) AS i"
        )
        conn.execute("UPDATE workflows SET status = 'completed' WHERE id LIKE 'bulk-%%' AND id < 'bulk-3'")
        conn.execute("UPDATE workflows SET type = 'A' WHERE id = 'old-0'")
        _check(conn)
        conn.execute("DELETE FROM workflows WHERE id LIKE 'bulk-4%%'")
        conn.execute("DELETE FROM workflows WHERE id = 'w-1'")
        _check(conn)
    with connect(pg_url, namespace) as conn:  # a rolled-back write leaves the counters as they were
        conn.execute(INSERT, ("w-gone", "A", "running"))
        conn.rollback()
        _check(conn)


def test_only_filters_the_counters_cannot_answer_count_rows() -> None:
    assert "workflow_counts" in count_query(status="running", type="T")[0]
    assert "workflow_counts" in count_query()[0]
    for filters in ({"search": [("customer", "=", "c-7")]}, {"parent_id": "p"}):
        assert "FROM workflows" in count_query(**filters)[0]
