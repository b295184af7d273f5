"""The read side of the projections, as the Client and the HTTP API use it.

Plain functions over a connection that points at the namespace's schema (``projections.connect`` or
``projections.pool``), returning JSON-ready dicts: timestamps are ISO-8601 strings and payloads are the
JSON values the projector decoded, so the HTTP API can return them as they are. Per-workflow views default
to the workflow's current run, the one a handle that follows continue-as-new sees.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from eventstore import payloads, statuses
from eventstore.backoff import Backoff

from .db import FINAL_STATUSES, connect, notify_channel

log = logging.getLogger(__name__)

_SUMMARY = (
    "id, run_id, type, status, error_type, error_message, parent_id, parent_run_id, continued_from,"
    " created_at, updated_at, started_at, closed_at, search, memo"
)
#: JSON type of a search value, so a comparison only meets attributes of the same type (jsonb orders
#: booleans above numbers above strings, which is never what a filter means).
_JSON_TYPE = {bool: "boolean", int: "number", float: "number", str: "string"}


def _json(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else reveal(v) for k, v in row.items()}


def reveal(value: Any) -> Any:
    """``value`` with every ``{"$encrypted": base64}`` the projector stored decrypted, or ``"<encrypted>"``.

    The projector keeps encrypted payloads encrypted (no plaintext in PostgreSQL); this is where a reader
    with the key sees them, and where a reader without it (or with a rotated-out key, or data that fails
    authentication) gets a placeholder instead of an error, so listings and the UI keep working.
    """
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("$encrypted"), str):
            return _decrypt(value["$encrypted"])
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


def _decrypt(encoded: str) -> Any:
    from eventstore.encryption import ENCRYPTED, EncryptedPayloadError
    from projections.apply import clean

    try:
        return clean(payloads.decode(base64.b64decode(encoded)))
    except EncryptedPayloadError:
        return ENCRYPTED
    except (ValueError, payloads.PayloadError) as exc:
        log.warning("stored encrypted payload cannot be read: %s", exc)
        return ENCRYPTED


def _rows(conn: psycopg.Connection, query: str, params: Any = ()) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return [_json(row) for row in cur.execute(query, params).fetchall()]


# The statements the sync functions below and the AsyncClient (``projections.aread``) both run, kept here
# once so the two read the same rows the same way.
CURRENT_RUN_SQL = "SELECT run_id FROM workflows WHERE id = %s"
GET_WORKFLOW_SQL = "SELECT * FROM workflows WHERE id = %s"
HISTORY_SQL = (
    "SELECT workflow_id, seq, type, at, run_id, status, data FROM history WHERE workflow_id = %s AND run_id = %s ORDER BY seq"
)
# Stream items of a workflow id after a position (migration 003); the item is the event's payload in history.
STREAM_SQL = (
    "SELECT s.position, s.run_id, h.at, h.data->'value' AS value FROM stream_items s"
    " JOIN history h ON h.workflow_id = s.workflow_id AND h.run_id = s.run_id AND h.seq = s.seq"
    " WHERE s.workflow_id = %s AND s.position > %s ORDER BY s.position LIMIT %s"
)
EXCEPTIONS_SQL = (
    "SELECT error_type, message, traceback, activity, attempt, at, seq, activity_id FROM exceptions"
    " WHERE workflow_id = %s AND run_id = %s ORDER BY seq"
)
RUN_KNOWN_SQL = "SELECT 1 FROM runs WHERE workflow_id = %s AND run_id = %s"


def _current_run(conn: psycopg.Connection, workflow_id: str) -> str | None:
    row = conn.execute(CURRENT_RUN_SQL, (workflow_id,)).fetchone()
    return row[0] if row else None


def get_workflow(conn: psycopg.Connection, id: str) -> dict | None:
    """The workflow as of its newest run (or its pending row), None if it is unknown."""
    rows = _rows(conn, GET_WORKFLOW_SQL, (id,))
    return rows[0] if rows else None


def list_workflows(
    conn: psycopg.Connection,
    status: str | Iterable[str] | None = None,
    type: str | None = None,
    limit: int = 100,
    offset: int = 0,
    parent_id: str | None = None,
    search: list[tuple[str, str, Any]] | None = None,
    started_after: datetime | None = None,
    started_before: datetime | None = None,
    after: tuple[datetime, str] | None = None,
) -> list[dict]:
    """Workflows newest first (by creation), without their payloads; ``status`` may be one or several.

    ``search`` holds ``(key, operator, value)`` filters (checked by ``actors.search.parse_filters``);
    ``after`` is a keyset position ``(created_at, id)``: only rows older than it, which keeps a page
    stable while new workflows arrive (an offset would shift). An unknown status raises ValueError:
    answering a typo with an empty list would read as "none".
    """
    return _rows(conn, *list_query(status, type, limit, offset, parent_id, search, started_after, started_before, after))


def list_query(
    status: str | Iterable[str] | None = None, type: str | None = None, limit: int = 100, offset: int = 0,
    parent_id: str | None = None, search: list[tuple[str, str, Any]] | None = None,
    started_after: datetime | None = None, started_before: datetime | None = None,
    after: tuple[datetime, str] | None = None,
) -> tuple[str, list[Any]]:
    """The statement and parameters of ``list_workflows`` (shared with the async read side)."""
    clause, params = _where(status, type, parent_id, search, started_after, started_before, after)
    params += [max(0, int(limit)), max(0, int(offset))]
    return f"SELECT {_SUMMARY} FROM workflows {clause} ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s", params


def count_workflows(
    conn: psycopg.Connection,
    status: str | Iterable[str] | None = None,
    type: str | None = None,
    search: list[tuple[str, str, Any]] | None = None,
    started_after: datetime | None = None,
    started_before: datetime | None = None,
    parent_id: str | None = None,
) -> int:
    """How many workflows ``list_workflows`` would return with the same filters (all pages)."""
    row = conn.execute(*count_query(status, type, search, started_after, started_before, parent_id)).fetchone()
    return int(row[0]) if row is not None else 0


def count_query(
    status: str | Iterable[str] | None = None, type: str | None = None,
    search: list[tuple[str, str, Any]] | None = None, started_after: datetime | None = None,
    started_before: datetime | None = None, parent_id: str | None = None,
) -> tuple[str, list[Any]]:
    """The statement and parameters of ``count_workflows`` (shared with the async read side).

    With no filter but status and/or type it sums the counters the triggers of migration 004 keep per
    (type, status) — a few dozen rows however many workflows there are. Any other filter counts the
    matching rows: fast when the filter is selective (the GIN index on ``search`` or the status/type
    indexes find few rows), proportional to the matches when it is broad (``region=eu`` over 20 % of a
    million rows takes ~100 ms), as README "Finding workflows" says.
    """
    if not search and started_after is None and started_before is None and parent_id is None:
        where: list[str] = []
        counted: list[Any] = []
        if status is not None:
            where.append("status = ANY(%s)")
            counted.append([str(s) for s in statuses.parse_many(status)])
        if type is not None:
            where.append("type = %s")
            counted.append(type)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        return f"SELECT coalesce(sum(n), 0) FROM workflow_counts {clause}", counted
    clause, params = _where(status, type, parent_id, search, started_after, started_before, None)
    return f"SELECT count(*) FROM workflows {clause}", params


def _where(
    status: str | Iterable[str] | None, type: str | None, parent_id: str | None,
    search: list[tuple[str, str, Any]] | None, started_after: datetime | None, started_before: datetime | None,
    after: tuple[datetime, str] | None,
) -> tuple[str, list[Any]]:
    """The WHERE clause of a list or count; every value is a parameter, keys included.

    Equality and ``in`` are written as containment (``search @> {"k": v}``) so the GIN index on ``search``
    answers them; ``!=`` and the orderings meet only attributes that exist with a value of the operand's
    JSON type.
    """
    where: list[str] = []
    params: list[Any] = []
    if status is not None:
        where.append("status = ANY(%s)")
        params.append([str(s) for s in statuses.parse_many(status)])
    if type is not None:
        where.append("type = %s")
        params.append(type)
    if parent_id is not None:
        where.append("parent_id = %s")
        params.append(parent_id)
    for key, op, value in search or ():
        if op == "=":
            where.append("search @> %s")
            params.append(Jsonb({key: value}))
        elif op == "in":
            where.append("(" + " OR ".join(["search @> %s"] * len(value)) + ")")
            params.extend(Jsonb({key: v}) for v in value)
        elif op == "!=":
            where.append("(search ? %s AND NOT search @> %s)")
            params += [key, Jsonb({key: value})]
        elif op in ("<", "<=", ">", ">="):
            where.append(f"(jsonb_typeof(search -> %s) = %s AND search -> %s {op} %s)")
            params += [key, _JSON_TYPE[type_of(value)], key, Jsonb(value)]
        else:
            raise ValueError(f"unknown search operator {op!r}")
    if started_after is not None:
        where.append("created_at >= %s")
        params.append(started_after)
    if started_before is not None:
        where.append("created_at < %s")
        params.append(started_before)
    if after is not None:
        where.append("(created_at, id) < (%s, %s)")
        params += [after[0], after[1]]
    return (f"WHERE {' AND '.join(where)}" if where else ""), params


def type_of(value: Any) -> type:
    return bool if isinstance(value, bool) else int if isinstance(value, int) else type(value)


def history(conn: psycopg.Connection, id: str, run_id: str | None = None) -> list[dict]:
    """A run's events in order (the current run by default): ``workflow_id``, ``seq``, ``type``, ``at``,
    ``run_id``, ``status`` (the run's status after the event, when the node recorded it) and the event's own
    fields. Self-contained on purpose: this list is the replayable history (``actors.testing.replay``)."""
    run_id = run_id or _current_run(conn, id)
    if run_id is None:
        return []
    return history_rows(_rows(conn, HISTORY_SQL, (id, run_id)))


def stream_items(conn: psycopg.Connection, id: str, after: int = 0, limit: int = 500) -> list[dict]:
    """Up to ``limit`` stream items of workflow ``id`` with a position above ``after``, in order: ``position``
    (1, 2, ... per workflow id, across runs), ``value``, ``run_id``, ``at``."""
    return _rows(conn, STREAM_SQL, (id, after, limit))


def history_rows(rows: list[dict]) -> list[dict]:
    """History rows as events: the event's own fields with the row's columns over them."""
    return [{**row.pop("data"), **row} for row in rows]


def exceptions(conn: psycopg.Connection, id: str, run_id: str | None = None) -> list[dict]:
    """Failed activity attempts and the workflow's own failure, in history order.

    Each has ``error_type``, ``message``, ``traceback``, ``activity`` and ``attempt`` (both None for the
    workflow's failure), ``at``, ``seq`` and ``activity_id``.
    """
    run_id = run_id or _current_run(conn, id)
    if run_id is None:
        return []
    return _rows(conn, EXCEPTIONS_SQL, (id, run_id))


def activities(conn: psycopg.Connection, id: str, run_id: str | None = None) -> list[dict]:
    """One entry per activity attempt, by activity then attempt."""
    run_id = run_id or _current_run(conn, id)
    if run_id is None:
        return []
    return _rows(
        conn,
        "SELECT activity_id, attempt, name, queue, status, input, started_at, finished_at, result, error_type,"
        " message, traceback, retry_at FROM activities WHERE workflow_id = %s AND run_id = %s"
        " ORDER BY activity_id, attempt",
        (id, run_id),
    )


def signals(conn: psycopg.Connection, id: str, run_id: str | None = None) -> list[dict]:
    """Signals the run received, in order."""
    run_id = run_id or _current_run(conn, id)
    if run_id is None:
        return []
    return _rows(
        conn,
        "SELECT seq, name, input, command_id, at FROM signals WHERE workflow_id = %s AND run_id = %s ORDER BY seq",
        (id, run_id),
    )


def timers(conn: psycopg.Connection, id: str, run_id: str | None = None) -> list[dict]:
    """Durable timers of the run, in the order they were started."""
    run_id = run_id or _current_run(conn, id)
    if run_id is None:
        return []
    return _rows(
        conn,
        "SELECT timer_id, fire_at, status, started_at, fired_at FROM timers"
        " WHERE workflow_id = %s AND run_id = %s ORDER BY timer_id",
        (id, run_id),
    )


def children(conn: psycopg.Connection, id: str) -> list[dict]:
    """Child workflows started by any run of ``id``, oldest first, with each child's current status."""
    return _rows(
        conn,
        "SELECT r.child_id, r.child_run_id, r.parent_run_id, r.child_ref, r.workflow_type, r.created_at,"
        " w.status, w.closed_at FROM relationships r LEFT JOIN workflows w ON w.id = r.child_id"
        " WHERE r.parent_id = %s AND r.kind = 'child' ORDER BY r.created_at, r.parent_run_id, r.child_ref",
        (id,),
    )


def runs(conn: psycopg.Connection, id: str) -> list[dict]:
    """The workflow's runs in the order they started: the continue-as-new (and retry) chain."""
    return _rows(
        conn,
        "SELECT run_id, run_no, type, status, input, output, error_type, error_message, continued_from,"
        " continued_to, started_at, updated_at, closed_at FROM runs WHERE workflow_id = %s ORDER BY run_no",
        (id,),
    )


def wait_for_terminal(conninfo: str, namespace: str, id: str, timeout: float | None) -> dict | None:
    """Wait until workflow ``id`` has a final status and return it (``get_workflow``); None on timeout.

    No polling: LISTEN first, check once (it may already be over), then sleep on notifications, which the
    projector sends when a run ends. ``continued`` is not final: the wait follows continue-as-new to the run
    that really ends. If PostgreSQL goes away meanwhile, reconnect (within the timeout) and check again.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    channel = sql.SQL("LISTEN {}").format(sql.Identifier(notify_channel(namespace)))
    backoff = Backoff(0.1, 2.0)
    while True:
        try:
            with connect(conninfo, namespace, autocommit=True, connect_timeout=5) as conn:
                conn.execute(channel)
                backoff.reset()
                while True:
                    workflow = get_workflow(conn, id)
                    if workflow is not None and workflow["status"] in FINAL_STATUSES:
                        return workflow
                    if not _await_notification(conn, id, deadline):
                        return None
        except psycopg.OperationalError:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            delay = backoff.next()
            time.sleep(delay if left is None else min(delay, left))


def _await_notification(conn: psycopg.Connection, id: str, deadline: float | None) -> bool:
    """Block until a notification for ``id`` arrives (True) or the deadline passes (False)."""
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        for note in conn.notifies(timeout=left, stop_after=1):
            if note.payload == id:
                return True


def run_known(conn: psycopg.Connection, id: str, run_id: str) -> bool:
    """True once the projector has seen run ``run_id`` of workflow ``id`` (a handle waits for its own run)."""
    return conn.execute(RUN_KNOWN_SQL, (id, run_id)).fetchone() is not None
