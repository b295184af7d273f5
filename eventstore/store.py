"""The local state store of one owned partition: a SQLite file rebuilt from ``events[p]``.

It is a cache of the partition's event log, never the truth: histories of workflows (so a passivated or
restarted actor can replay without reading Kafka), the durable timers those histories imply, and the last
applied offset. Everything in it is derived from events, in the same transaction as the checkpoint, so a
crash leaves it consistent with some prefix of the log and restore reads only the tail after it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from . import events as ev
from .fencing import Fence

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workflows (
    workflow_id TEXT PRIMARY KEY, run_id TEXT NOT NULL, status TEXT, terminal INTEGER NOT NULL DEFAULT 0,
    blocked INTEGER NOT NULL DEFAULT 0, updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    workflow_id TEXT NOT NULL, run_id TEXT NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (workflow_id, run_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS activity_options (
    workflow_id TEXT NOT NULL, run_id TEXT NOT NULL, activity_id INTEGER NOT NULL, timeout REAL, heartbeat_timeout REAL,
    PRIMARY KEY (workflow_id, run_id, activity_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS timers (
    workflow_id TEXT NOT NULL, run_id TEXT NOT NULL, kind TEXT NOT NULL, timer_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0, fire_at INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, run_id, kind, timer_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS timers_due ON timers (fire_at);
CREATE TABLE IF NOT EXISTS in_flight (
    workflow_id TEXT NOT NULL, run_id TEXT NOT NULL, activity_id INTEGER NOT NULL, attempt INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, run_id, activity_id)
) WITHOUT ROWID;
"""

_TERMINAL = {
    "WorkflowCompleted", "WorkflowFailed", "WorkflowContinued", "WorkflowCancelled", "WorkflowTerminated", "WorkflowTimedOut",
}


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


class PartitionStore:
    """One partition's SQLite store; used by the single thread that owns the partition."""

    def __init__(self, path: str | Path, partition: int) -> None:
        self.path = Path(path)
        self.partition = partition
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self.fence = Fence(int(self._meta("epoch", "-1")))
        self.restored_records = 0  # records read by the last restore (tests count the tail)

    def _meta(self, key: str, default: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    @property
    def checkpoint(self) -> int:
        """The offset after the last event applied (where restore resumes)."""
        return int(self._meta("next_offset", "0"))

    # -- writing ---------------------------------------------------------------------------------------
    def apply(self, records: Iterable[tuple[int, dict]], fired: Iterable[tuple[str, str, str, int]] = ()) -> list[dict]:
        """Apply ``(offset, flat event)`` pairs and drop ``fired`` timer keys, in one transaction.

        Returns the events that passed the fence (zombie writes are dropped here, as in every reader).
        """
        admitted: list[dict] = []
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN")
            try:
                cur.executemany("DELETE FROM timers WHERE workflow_id=? AND run_id=? AND kind=? AND timer_id=?", list(fired))
                last = None
                for offset, event in records:
                    last = offset
                    if not self.fence.admit_flat(event):
                        continue
                    admitted.append(event)
                    self._apply_one(cur, event)
                if last is not None:
                    cur.execute("INSERT OR REPLACE INTO meta VALUES ('next_offset', ?)", (str(last + 1),))
                cur.execute("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (str(self.fence.epoch),))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return admitted

    def _apply_one(self, cur: sqlite3.Cursor, e: dict) -> None:
        kind = e["type"]
        if kind == "OwnershipMarker":
            return
        wid, run, at = e["workflow_id"], e["run_id"], _ms(e["at"])
        data = e.get("_encoded") or ev.encode_event(e, wid, e.get("epoch", 0), e.get("node") or "")
        if kind == "WorkflowStarted":
            cur.execute("DELETE FROM in_flight WHERE workflow_id=?", (wid,))
            cur.execute("DELETE FROM history WHERE workflow_id=?", (wid,))
            cur.execute("DELETE FROM timers WHERE workflow_id=?", (wid,))
            cur.execute("DELETE FROM activity_options WHERE workflow_id=?", (wid,))
            cur.execute(
                "INSERT OR REPLACE INTO workflows VALUES (?, ?, ?, 0, 0, ?)", (wid, run, e.get("status") or "running", at)
            )
        cur.execute("INSERT OR REPLACE INTO history VALUES (?, ?, ?, ?)", (wid, run, e["seq"], data))
        status = e.get("status")
        if kind in _TERMINAL:
            cur.execute("UPDATE workflows SET terminal=1, blocked=0, status=?, updated_ms=? WHERE workflow_id=?", (status, at, wid))
            cur.execute("DELETE FROM timers WHERE workflow_id=?", (wid,))
            cur.execute("DELETE FROM in_flight WHERE workflow_id=?", (wid,))
            return
        if kind == "WorkflowBlocked":
            cur.execute("UPDATE workflows SET blocked=1, status='blocked' WHERE workflow_id=?", (wid,))
        elif kind == "WorkflowUnblocked":
            cur.execute("UPDATE workflows SET blocked=0 WHERE workflow_id=?", (wid,))
        if status:
            cur.execute("UPDATE workflows SET status=?, updated_ms=? WHERE workflow_id=?", (status, at, wid))
        self._derive_timers(cur, e, wid, run, at)

    def _derive_timers(self, cur: sqlite3.Cursor, e: dict, wid: str, run: str, at: int) -> None:
        kind = e["type"]
        if kind in ("ActivityScheduled", "ActivityRetried"):
            attempt = e.get("attempt", 1) if kind == "ActivityRetried" else 1
            cur.execute("INSERT OR REPLACE INTO in_flight VALUES (?, ?, ?, ?)", (wid, run, e["activity_id"], attempt))
        elif kind in ("ActivityAttemptFailed", "ActivityCompleted", "ActivityFailed", "ActivityCancelRequested"):
            cur.execute("DELETE FROM in_flight WHERE workflow_id=? AND run_id=? AND activity_id=?", (wid, run, e["activity_id"]))
        elif kind == "CancelRequested":  # the workflow's activities in flight are cancelled with it
            cur.execute("DELETE FROM in_flight WHERE workflow_id=? AND run_id=?", (wid, run))
            cur.execute(
                "DELETE FROM timers WHERE workflow_id=? AND run_id=? AND kind IN ('timeout','heartbeat','retry')", (wid, run)
            )
        put = "INSERT OR REPLACE INTO timers VALUES (?, ?, ?, ?, ?, ?)"
        if kind == "WorkflowStarted":
            if e.get("start_at"):  # start_delay: the first step waits for this timer (id = the event's seq)
                cur.execute(put, (wid, run, "timer", e["seq"], 0, e["start_at"]))
            if e.get("timeout_at"):  # the execution timeout
                cur.execute(put, (wid, run, "deadline", 0, 0, e["timeout_at"]))
        elif kind == "TimerStarted":
            cur.execute(put, (wid, run, "timer", e["timer_id"], 0, e["fire_at"]))
        elif kind in ("TimerFired", "TimerCancelled"):
            cur.execute("DELETE FROM timers WHERE workflow_id=? AND run_id=? AND kind='timer' AND timer_id=?", (wid, run, e["timer_id"]))
        elif kind == "ActivityScheduled":
            cur.execute(
                "INSERT OR REPLACE INTO activity_options VALUES (?, ?, ?, ?, ?)",
                (wid, run, e["activity_id"], e["timeout"], e["heartbeat_timeout"]),
            )
            self._attempt_timers(cur, wid, run, e["activity_id"], 1, at, e["timeout"], e["heartbeat_timeout"])
        elif kind == "ActivityRetried":
            row = cur.execute(
                "SELECT timeout, heartbeat_timeout FROM activity_options WHERE workflow_id=? AND run_id=? AND activity_id=?",
                (wid, run, e["activity_id"]),
            ).fetchone()
            self._clear_activity(cur, wid, run, e["activity_id"])
            if row:
                self._attempt_timers(cur, wid, run, e["activity_id"], e["attempt"], at, row[0], row[1])
        elif kind == "ActivityAttemptFailed":
            self._clear_activity(cur, wid, run, e["activity_id"])
            cur.execute(put, (wid, run, "retry", e["activity_id"], e["attempt"] + 1, e["retry_at"]))
        elif kind in ("ActivityCompleted", "ActivityFailed", "ActivityCancelRequested"):
            self._clear_activity(cur, wid, run, e["activity_id"])

    @staticmethod
    def _attempt_timers(cur: sqlite3.Cursor, wid: str, run: str, aid: int, attempt: int, at: int, timeout: float | None, hb: float | None) -> None:
        put = "INSERT OR REPLACE INTO timers VALUES (?, ?, ?, ?, ?, ?)"
        if timeout:
            cur.execute(put, (wid, run, "timeout", aid, attempt, at + int(timeout * 1000)))
        if hb:
            cur.execute(put, (wid, run, "heartbeat", aid, attempt, at + int(hb * 1000)))

    @staticmethod
    def _clear_activity(cur: sqlite3.Cursor, wid: str, run: str, aid: int) -> None:
        cur.execute(
            "DELETE FROM timers WHERE workflow_id=? AND run_id=? AND timer_id=? AND kind IN ('timeout','heartbeat','retry')",
            (wid, run, aid),
        )

    def heartbeat(self, beats: Iterable[tuple]) -> None:
        """Push heartbeat deadlines of attempts in flight: ``(wid, run, activity_id, attempt, at[, waiting])``.

        ``waiting``: the attempt has not started, it waits in a worker for a queue slot (docs/API.md §9). Such
        a wait is not part of the attempt, so its start-to-close deadline moves to ``at`` + timeout too."""
        with self._lock:
            for wid, run, aid, attempt, at, *waiting in beats:
                if waiting and waiting[0]:
                    self._db.execute(
                        "UPDATE timers SET fire_at = ? + COALESCE((SELECT CAST(timeout * 1000 AS INTEGER) FROM activity_options o"
                        " WHERE o.workflow_id=timers.workflow_id AND o.run_id=timers.run_id AND o.activity_id=timers.timer_id), 0)"
                        " WHERE workflow_id=? AND run_id=? AND kind='timeout' AND timer_id=? AND attempt=?",
                        (_ms(at), wid, run, aid, attempt),
                    )
                self._db.execute(
                    "UPDATE timers SET fire_at = ? + COALESCE((SELECT CAST(heartbeat_timeout * 1000 AS INTEGER) FROM activity_options o"
                    " WHERE o.workflow_id=timers.workflow_id AND o.run_id=timers.run_id AND o.activity_id=timers.timer_id), 0)"
                    " WHERE workflow_id=? AND run_id=? AND kind='heartbeat' AND timer_id=? AND attempt=?",
                    (_ms(at), wid, run, aid, attempt),
                )

    def reset_heartbeats(self, now: datetime) -> None:
        """After a restore nobody knows when attempts last beat: give each a full timeout from now."""
        with self._lock:
            self._db.execute(
                "UPDATE timers SET fire_at = ? + (SELECT CAST(heartbeat_timeout * 1000 AS INTEGER) FROM activity_options o"
                " WHERE o.workflow_id=timers.workflow_id AND o.run_id=timers.run_id AND o.activity_id=timers.timer_id)"
                " WHERE kind='heartbeat'",
                (_ms(now),),
            )

    # -- reading ---------------------------------------------------------------------------------------
    def history(self, workflow_id: str) -> list[dict]:
        """The current run's events in order (empty for an unknown id)."""
        row = self._db.execute("SELECT run_id FROM workflows WHERE workflow_id=?", (workflow_id,)).fetchone()
        if row is None:
            return []
        rows = self._db.execute(
            "SELECT data FROM history WHERE workflow_id=? AND run_id=? ORDER BY seq", (workflow_id, row[0])
        ).fetchall()
        return [ev.decode_event(r[0]) for r in rows]

    def known(self, workflow_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM workflows WHERE workflow_id=?", (workflow_id,)).fetchone() is not None

    def due_timers(self, now_ms: int, limit: int = 1000) -> list[tuple[str, str, str, int, int, int]]:
        """``(workflow_id, run_id, kind, timer_id, attempt, fire_at)`` of timers due at ``now_ms``, earliest first."""
        return self._db.execute(
            "SELECT workflow_id, run_id, kind, timer_id, attempt, fire_at FROM timers WHERE fire_at <= ? ORDER BY fire_at LIMIT ?",
            (now_ms, limit),
        ).fetchall()

    def next_timer_ms(self) -> int | None:
        return self._db.execute("SELECT MIN(fire_at) FROM timers").fetchone()[0]

    def timer_count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM timers").fetchone()[0]

    def open_count(self, exclude: list[str] | tuple[str, ...] = ()) -> int:
        """Open (non-terminal) workflows, not counting those in ``exclude`` (e.g. the ones live in memory)."""
        total = self._db.execute("SELECT COUNT(*) FROM workflows WHERE terminal=0").fetchone()[0]
        for i in range(0, len(exclude), 500):
            chunk = list(exclude[i : i + 500])
            marks = ",".join("?" * len(chunk))
            total -= self._db.execute(f"SELECT COUNT(*) FROM workflows WHERE terminal=0 AND workflow_id IN ({marks})", chunk).fetchone()[0]
        return total

    def in_flight(self) -> list[tuple[str, str, int, int]]:
        """``(workflow_id, run_id, activity_id, attempt)`` of every activity attempt dispatched and unsettled."""
        return self._db.execute("SELECT workflow_id, run_id, activity_id, attempt FROM in_flight").fetchall()

    def blocked(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT workflow_id FROM workflows WHERE blocked=1")]

    def live_workflow_ids(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT workflow_id FROM workflows WHERE terminal=0")]

    def counts(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT COALESCE(status, '?'), COUNT(*) FROM workflows GROUP BY status").fetchall())

    # -- restore ---------------------------------------------------------------------------------------
    def restore(self, records: Iterator[tuple[int, dict]], batch: int = 2000) -> list[dict]:
        """Apply the log tail after the checkpoint; returns the admitted tail events (to re-dispatch)."""
        self.restored_records = 0
        tail: list[dict] = []
        chunk: list[tuple[int, dict]] = []
        for offset, envelope in records:
            self.restored_records += 1
            chunk.append((offset, ev.from_envelope(envelope)))
            if len(chunk) >= batch:
                tail.extend(self.apply(chunk))
                chunk = []
        if chunk:
            tail.extend(self.apply(chunk))
        return tail

    def close(self) -> None:
        with self._lock:
            self._db.close()


def describe(store: PartitionStore) -> str:
    return json.dumps({"partition": store.partition, "checkpoint": store.checkpoint, "epoch": store.fence.epoch,
                       "workflows": store.counts(), "timers": store.timer_count(), "at": datetime.now(UTC).isoformat()})
