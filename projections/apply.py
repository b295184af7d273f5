"""How one event changes the projection tables: the SQL behind each event type.

Every statement is written so that applying the events of ``<ns>.events`` in log order gives the same rows
however the log is cut into batches and however partitions interleave: timestamps come from the events,
a run's terminal status is sticky, and the two sides of a parent/child relationship merge with COALESCE and
LEAST. That is what makes a rebuild from offset 0 reproduce the tables exactly. The projector decides
*which* events to apply (fencing, offsets, duplicates); this module only knows *how*.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime
from typing import Any

from psycopg import Cursor
from psycopg.types.json import Jsonb

from eventstore import payloads
from eventstore.events import event_fields
from eventstore.statuses import BY_TERMINAL_EVENT

from .db import TERMINAL_STATUSES, stream_channel

#: The event that ends a run, and the run status it implies.
TERMINAL_EVENTS = {kind: str(status) for kind, status in BY_TERMINAL_EVENT.items()}
MARKER = "OwnershipMarker"
_ENVELOPE = ("workflow_id", "run_id", "seq", "epoch", "at", "status", "node", "type")


# -- values ------------------------------------------------------------------------------------------------

def clean(value: Any) -> Any:
    """Make a decoded value storable: PostgreSQL text and jsonb refuse NUL characters and NaN."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def payload(data: bytes | None) -> Any:
    """A user payload decoded to JSON where the converter can; otherwise kept, base64, as ``{"$base64"}``.

    An encrypted payload is never decrypted here, so PostgreSQL holds no plaintext of it: it is kept as
    ``{"$encrypted": base64}`` and the read side (``projections.read``) decrypts it for readers with the key.
    """
    if data is None:
        return None
    if payloads.is_encrypted(data):
        return {"$encrypted": base64.b64encode(bytes(data)).decode()}
    try:
        value = payloads.decode(bytes(data))
        return clean(_jsonable(value))
    except Exception:  # a custom converter, or bytes that were never JSON: keep them, readable
        return {"$base64": base64.b64encode(bytes(data)).decode()}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    raise TypeError(f"{type(value).__name__} is not JSON")


def _jsonb(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


def body(event: dict) -> dict:
    """The event's own fields (envelope fields excluded), payload bytes decoded: ``history.data``."""
    out = {}
    for name in event_fields(event["type"]):
        if name in _ENVELOPE:
            continue
        value = event.get(name)
        out[name] = payload(bytes(value)) if isinstance(value, bytes | bytearray) else clean(value)
    return out


def run_status(event: dict) -> str | None:
    """The run's status after ``event``; None when the event does not say (the status stays as it was)."""
    kind = event["type"]
    if kind in TERMINAL_EVENTS:
        return TERMINAL_EVENTS[kind]
    if event.get("status"):
        return event["status"]
    if kind == "WorkflowBlocked":
        return "blocked"
    if kind == "WorkflowPaused":
        return "paused"
    if kind in ("WorkflowStarted", "WorkflowUnblocked"):
        return "running"
    return None


def _ms(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC)


# -- statements --------------------------------------------------------------------------------------------

_HISTORY = """
INSERT INTO history (workflow_id, run_id, seq, type, at, status, epoch, node, partition, log_offset, data)
VALUES (%(workflow_id)s, %(run_id)s, %(seq)s, %(type)s, %(at)s, %(status)s, %(epoch)s, %(node)s,
        %(partition)s, %(offset)s, %(data)s)
ON CONFLICT (workflow_id, run_id, seq) DO NOTHING
"""

# A new run: insert it, and make it the workflow's current run (over a client's pending row, if any).
_START = """
WITH r AS (
    INSERT INTO runs (workflow_id, run_id, run_no, type, status, input, parent_id, parent_run_id, parent_ref,
                      continued_from, started_at, updated_at)
    VALUES (%(workflow_id)s, %(run_id)s,
            (SELECT count(*) + 1 FROM runs WHERE workflow_id = %(workflow_id)s),
            %(type)s, %(status)s, %(input)s, %(parent_id)s, %(parent_run_id)s, %(parent_ref)s,
            %(continued_from)s, %(at)s, %(at)s)
    ON CONFLICT (workflow_id, run_id) DO NOTHING
    RETURNING *
)
INSERT INTO workflows AS w (id, run_id, type, status, input, parent_id, parent_run_id, continued_from,
                            created_at, updated_at, started_at, search, memo)
SELECT workflow_id, run_id, type, status, input, parent_id, parent_run_id, continued_from,
       started_at, updated_at, started_at, %(search)s::jsonb, %(memo)s::jsonb
FROM r
ON CONFLICT (id) DO UPDATE SET
    run_id = excluded.run_id, type = excluded.type, status = excluded.status, input = excluded.input,
    output = NULL, error_type = NULL, error_message = NULL, error_traceback = NULL,
    parent_id = excluded.parent_id, parent_run_id = excluded.parent_run_id,
    continued_from = excluded.continued_from,
    created_at = CASE WHEN w.run_id IS NULL THEN excluded.created_at ELSE w.created_at END,
    updated_at = excluded.updated_at, started_at = excluded.started_at, closed_at = NULL,
    -- a continuation (continue-as-new, retry) keeps the attributes and memo of the run it continues
    search = CASE WHEN w.run_id IS NOT NULL AND excluded.continued_from IS NOT NULL
                  THEN jsonb_strip_nulls(w.search || excluded.search) ELSE excluded.search END,
    memo = CASE WHEN w.run_id IS NOT NULL AND excluded.continued_from IS NOT NULL
                THEN w.memo || excluded.memo ELSE excluded.memo END
"""

# workflow.upsert_search / workflow.memo of the workflow's current run: merged, a null attribute removed.
_ATTRIBUTES = """
UPDATE workflows SET search = jsonb_strip_nulls(search || %(search)s::jsonb), memo = memo || %(memo)s::jsonb
WHERE id = %(workflow_id)s AND run_id = %(run_id)s
"""

_CONTINUED_TO = """
UPDATE runs SET continued_to = %(to)s
WHERE workflow_id = %(workflow_id)s AND run_id = %(run_id)s AND continued_to IS NULL
"""

_RELATIONSHIP = """
INSERT INTO relationships AS r (parent_id, parent_run_id, kind, child_id, child_run_id, child_ref,
                                workflow_type, created_at)
VALUES (%(parent_id)s, %(parent_run_id)s, %(kind)s, %(child_id)s, %(child_run_id)s, %(child_ref)s,
        COALESCE(%(workflow_type)s::text,
                 (SELECT type FROM runs WHERE workflow_id = %(parent_id)s AND run_id = %(parent_run_id)s)),
        %(at)s)
ON CONFLICT (parent_id, parent_run_id, kind, child_id) DO UPDATE SET
    child_run_id = COALESCE(r.child_run_id, excluded.child_run_id),
    child_ref = COALESCE(r.child_ref, excluded.child_ref),
    workflow_type = COALESCE(r.workflow_type, excluded.workflow_type),
    created_at = LEAST(r.created_at, excluded.created_at)
"""

# Insert or update one activity attempt. Later attempts (and outcomes whose attempt row is missing, as after a
# retry-workflow cut) take name, queue and input from the activity's first recorded attempt.
_ACTIVITY = """
INSERT INTO activities AS a (workflow_id, run_id, activity_id, attempt, name, queue, status, input, started_at,
                             finished_at, result, error_type, message, traceback, retry_at)
SELECT %(workflow_id)s, %(run_id)s, %(activity_id)s, %(attempt)s,
       COALESCE(%(name)s::text, f.name, ''), COALESCE(%(queue)s::text, f.queue, ''), %(status)s,
       COALESCE(%(input)s::jsonb, f.input), %(at)s, %(finished_at)s, %(result)s, %(error_type)s, %(message)s,
       %(traceback)s, %(retry_at)s
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (
    SELECT name, queue, input FROM activities
    WHERE workflow_id = %(workflow_id)s AND run_id = %(run_id)s AND activity_id = %(activity_id)s
    ORDER BY attempt LIMIT 1
) AS f ON true
ON CONFLICT (workflow_id, run_id, activity_id, attempt) DO UPDATE SET
    status = excluded.status,
    started_at = CASE WHEN excluded.status = 'scheduled' THEN excluded.started_at ELSE a.started_at END,
    finished_at = excluded.finished_at, result = excluded.result, error_type = excluded.error_type,
    message = excluded.message, traceback = excluded.traceback, retry_at = excluded.retry_at
"""

_EXCEPTION = """
INSERT INTO exceptions (workflow_id, run_id, seq, activity_id, activity, attempt, error_type, message, traceback, at)
VALUES (%(workflow_id)s, %(run_id)s, %(seq)s, %(activity_id)s,
        (SELECT name FROM activities
         WHERE workflow_id = %(workflow_id)s AND run_id = %(run_id)s AND activity_id = %(activity_id)s
         ORDER BY attempt LIMIT 1),
        %(attempt)s, %(error_type)s, %(message)s, %(traceback)s, %(at)s)
ON CONFLICT (workflow_id, run_id, seq) DO NOTHING
"""

_SIGNAL = """
INSERT INTO signals (workflow_id, run_id, seq, name, input, command_id, at)
VALUES (%(workflow_id)s, %(run_id)s, %(seq)s, %(name)s, %(input)s, %(command_id)s, %(at)s)
ON CONFLICT (workflow_id, run_id, seq) DO NOTHING
"""

_TIMER_STARTED = """
INSERT INTO timers (workflow_id, run_id, timer_id, fire_at, status, started_at)
VALUES (%(workflow_id)s, %(run_id)s, %(timer_id)s, %(fire_at)s, 'started', %(at)s)
ON CONFLICT (workflow_id, run_id, timer_id) DO NOTHING
"""

_TIMER_FIRED = """
UPDATE timers SET status = 'fired', fired_at = %(at)s
WHERE workflow_id = %(workflow_id)s AND run_id = %(run_id)s AND timer_id = %(timer_id)s
"""

_ACTIVITY_CANCELLED = """
UPDATE activities SET status = 'cancelled', finished_at = %(at)s
WHERE workflow_id = %(workflow_id)s AND run_id = %(run_id)s AND status IN ('scheduled', 'retrying')
  AND (%(activity_id)s::bigint IS NULL OR activity_id = %(activity_id)s::bigint)
"""

_TIMER_CANCELLED = """
UPDATE timers SET status = 'cancelled', fired_at = %(at)s
WHERE workflow_id = %(workflow_id)s AND run_id = %(run_id)s AND timer_id = %(timer_id)s AND status = 'started'
"""

_NOTIFY = "SELECT pg_notify(%s, %s)"

# workflow.stream: the next position of the workflow id's stream (see migration 003). Not for a copy: a run
# begun by reset/retry starts with a copy of its predecessor's history (same seq, type and time), whose
# items the readers already have. A continue-as-new run (predecessor 'continued') copies nothing.
_STREAM_ITEM = """
INSERT INTO stream_items (workflow_id, position, run_id, seq)
SELECT %(workflow_id)s, COALESCE(MAX(position), 0) + 1, %(run_id)s, %(seq)s
FROM stream_items WHERE workflow_id = %(workflow_id)s
HAVING NOT EXISTS (
    SELECT 1 FROM runs r
    JOIN runs old ON old.workflow_id = r.workflow_id AND old.run_id = r.continued_from AND old.status <> 'continued'
    JOIN history h ON h.workflow_id = r.workflow_id AND h.run_id = old.run_id AND h.seq = %(seq)s
                  AND h.type = 'StreamAppended' AND h.at = %(at)s
    WHERE r.workflow_id = %(workflow_id)s AND r.run_id = %(run_id)s
)
ON CONFLICT DO NOTHING
"""

_run_update_sql: dict[tuple[str, ...], str] = {}


def _run_update(columns: tuple[str, ...]) -> str:
    """UPDATE of a run (then of its workflow, when it is the current run) setting status and ``columns``.

    A run that reached a terminal status keeps it and its outcome: later events of the same run (a late
    CommandRejected, say) only move ``updated_at``. In SET, ``runs.*`` are the values before the update.
    """
    if columns not in _run_update_sql:
        done = "runs.status = ANY(%(terminal)s)"
        sets = "".join(f",\n        {c} = CASE WHEN {done} THEN runs.{c} ELSE %({c})s END" for c in columns)
        copied = ", ".join(f"{c} = r.{c}" for c in ("status", "output", "error_type", "error_message",
                                                    "error_traceback", "closed_at", "updated_at"))
        _run_update_sql[columns] = f"""
WITH r AS (
    UPDATE runs SET
        status = CASE WHEN {done} THEN runs.status ELSE COALESCE(%(status)s, runs.status) END,
        updated_at = GREATEST(runs.updated_at, %(at)s){sets}
    WHERE runs.workflow_id = %(workflow_id)s AND runs.run_id = %(run_id)s
    RETURNING runs.*
)
UPDATE workflows AS w SET {copied}
FROM r WHERE w.id = r.workflow_id AND w.run_id = r.run_id
"""
    return _run_update_sql[columns]


def _run_patch(event: dict) -> dict[str, Any]:
    """Columns of the run (besides status) that ``event`` sets, unless the run has already ended."""
    kind, at = event["type"], event["at"]
    if kind == "WorkflowCompleted":
        return {"output": _jsonb(payload(event.get("result"))), "closed_at": at}
    if kind == "WorkflowFailed":
        return {"error_type": event["error_type"], "error_message": event["message"],
                "error_traceback": event.get("traceback") or "", "closed_at": at}
    if kind in ("WorkflowCancelled", "WorkflowTerminated"):
        return {"error_message": event.get("reason"), "closed_at": at}
    if kind == "WorkflowTimedOut":
        return {"error_type": "WorkflowTimedOut", "error_message": event.get("message"), "closed_at": at}
    if kind == "WorkflowContinued":
        return {"closed_at": at}
    if kind == "WorkflowBlocked":
        return {"error_type": event["error_type"], "error_message": event["message"], "error_traceback": None}
    if kind == "WorkflowUnblocked":
        return {"error_type": None, "error_message": None, "error_traceback": None}
    return {}


# -- per event ---------------------------------------------------------------------------------------------

def apply_event(cur: Cursor, event: dict, partition: int, offset: int, channel: str) -> None:
    """Apply one (admitted, not yet applied) workflow event to every table it concerns."""
    kind = event["type"]
    key = {"workflow_id": event["workflow_id"], "run_id": event["run_id"]}
    at = event["at"]
    data = body(event)
    cur.execute(_HISTORY, {
        **key, "seq": event["seq"], "type": kind, "at": at, "status": event.get("status"),
        "epoch": event["epoch"], "node": event.get("node") or "", "partition": partition, "offset": offset,
        "data": Jsonb(data),
    })
    if kind == "WorkflowStarted":
        _started(cur, event, key, data)
    else:
        columns = _run_patch(event)
        cur.execute(_run_update(tuple(columns)), {
            **key, **columns, "at": at, "status": run_status(event), "terminal": list(TERMINAL_STATUSES),
        })
    handler = _HANDLERS.get(kind)
    if handler is not None:
        handler(cur, event, key, data)
    if kind in TERMINAL_EVENTS:
        cur.execute(_NOTIFY, (channel, event["workflow_id"]))
        cur.execute(_NOTIFY, (stream_channel(channel), event["workflow_id"]))  # stream readers end too
    elif kind == "StreamAppended":
        cur.execute(_STREAM_ITEM, {**key, "seq": event["seq"], "at": at})
        # One notification per workflow id per transaction: PostgreSQL folds identical ones of a batch.
        cur.execute(_NOTIFY, (stream_channel(channel), event["workflow_id"]))


def _started(cur: Cursor, event: dict, key: dict, data: dict) -> None:
    at = event["at"]
    cur.execute(_START, {
        **key, "type": event["workflow_type"], "status": run_status(event), "input": _jsonb(data.get("input")),
        "parent_id": event.get("parent_id"), "parent_run_id": event.get("parent_run_id"),
        "parent_ref": event.get("parent_ref"), "continued_from": event.get("continued_from"), "at": at,
        "search": Jsonb(_object(event.get("search"))), "memo": Jsonb(_object(event.get("memo"))),
    })
    if event.get("continued_from"):
        _continued(cur, event["workflow_id"], event["continued_from"], event["run_id"], event["workflow_type"], at)
    if event.get("parent_id"):
        cur.execute(_RELATIONSHIP, {
            "parent_id": event["parent_id"], "parent_run_id": event.get("parent_run_id") or "", "kind": "child",
            "child_id": event["workflow_id"], "child_run_id": event["run_id"], "child_ref": event.get("parent_ref"),
            "workflow_type": event["workflow_type"], "at": at,
        })


def _object(text: str | None) -> dict:
    """A JSON-object field of an event (search attributes, memo); anything else counts as empty."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return clean(value) if isinstance(value, dict) else {}


def _attributes(cur: Cursor, event: dict, key: dict, data: dict) -> None:
    cur.execute(_ATTRIBUTES, {**key, "search": Jsonb(_object(event.get("search"))),
                              "memo": Jsonb(_object(event.get("memo")))})


def _continued(cur: Cursor, workflow_id: str, old_run: str, new_run: str, workflow_type: str | None, at: datetime) -> None:
    cur.execute(_CONTINUED_TO, {"workflow_id": workflow_id, "run_id": old_run, "to": new_run})
    cur.execute(_RELATIONSHIP, {
        "parent_id": workflow_id, "parent_run_id": old_run, "kind": "continued", "child_id": workflow_id,
        "child_run_id": new_run, "child_ref": None, "workflow_type": workflow_type, "at": at,
    })


def _workflow_continued(cur: Cursor, event: dict, key: dict, data: dict) -> None:
    _continued(cur, event["workflow_id"], event["run_id"], event["new_run_id"], None, event["at"])


def _activity(cur: Cursor, key: dict, event: dict, status: str, **fields: Any) -> None:
    params = {
        **key, "activity_id": event["activity_id"], "attempt": fields.pop("attempt", event.get("attempt")),
        "status": status, "at": event["at"], "name": None, "queue": None, "input": None, "finished_at": None,
        "result": None, "error_type": None, "message": None, "traceback": None, "retry_at": None,
    }
    params.update(fields)
    cur.execute(_ACTIVITY, params)


def _activity_scheduled(cur: Cursor, event: dict, key: dict, data: dict) -> None:
    _activity(cur, key, event, "scheduled", attempt=1, name=event["name"], queue=event["queue"],
              input=_jsonb(data.get("input")))


def _activity_retried(cur: Cursor, event: dict, key: dict, data: dict) -> None:
    _activity(cur, key, event, "scheduled")


def _activity_completed(cur: Cursor, event: dict, key: dict, data: dict) -> None:
    _activity(cur, key, event, "completed", finished_at=event["at"], result=_jsonb(data.get("result")))


def _activity_attempt_failed(cur: Cursor, event: dict, key: dict, data: dict) -> None:
    retry_at = _ms(event["retry_at"]) if event.get("retry_at") is not None else None
    _activity(cur, key, event, "retrying", finished_at=event["at"], error_type=event["error_type"],
              message=event["message"], traceback=event.get("traceback") or "", retry_at=retry_at)
    _exception(cur, event, key)


def _activity_failed(cur: Cursor, event: dict, key: dict, data: dict) -> None:
    _activity(cur, key, event, "failed", finished_at=event["at"], error_type=event["error_type"],
              message=event["message"], traceback=event.get("traceback") or "")
    _exception(cur, event, key)


def _workflow_failed(cur: Cursor, event: dict, key: dict, data: dict) -> None:
    _exception(cur, event, key)


def _not_applied(cur: Cursor, event: dict, key: dict, data: dict) -> None:
    """A rejected command (say, a signal the workflow has no handler for) or a block (a replay mismatch, a
    type no node knew): not failures, but what a user looking at ``exceptions()`` needs to see."""
    _exception(cur, event, key)


def _exception(cur: Cursor, event: dict, key: dict) -> None:
    cur.execute(_EXCEPTION, {
        **key, "seq": event["seq"], "activity_id": event.get("activity_id"), "attempt": event.get("attempt"),
        "error_type": event["error_type"], "message": event["message"],
        "traceback": event.get("traceback") or "", "at": event["at"],
    })


def _signal(cur: Cursor, event: dict, key: dict, data: dict) -> None:
    cur.execute(_SIGNAL, {**key, "seq": event["seq"], "name": event["name"], "input": _jsonb(data.get("input")),
                          "command_id": event["command_id"], "at": event["at"]})


def _timer_started(cur: Cursor, event: dict, key: dict, data: dict) -> None:
    cur.execute(_TIMER_STARTED, {**key, "timer_id": event["timer_id"], "fire_at": _ms(event["fire_at"]),
                                 "at": event["at"]})


def _timer_fired(cur: Cursor, event: dict, key: dict, data: dict) -> None:
    cur.execute(_TIMER_FIRED, {**key, "timer_id": event["timer_id"], "at": event["at"]})


def _activity_cancelled(cur: Cursor, event: dict, key: dict, data: dict) -> None:
    """A lost race cancels one activity; a cancelled workflow (CancelRequested) all of its open ones."""
    cur.execute(_ACTIVITY_CANCELLED, {**key, "activity_id": event.get("activity_id"), "at": event["at"]})


def _timer_cancelled(cur: Cursor, event: dict, key: dict, data: dict) -> None:
    cur.execute(_TIMER_CANCELLED, {**key, "timer_id": event["timer_id"], "at": event["at"]})


def _child_started(cur: Cursor, event: dict, key: dict, data: dict) -> None:
    cur.execute(_RELATIONSHIP, {
        "parent_id": event["workflow_id"], "parent_run_id": event["run_id"], "kind": "child",
        "child_id": event["child_id"], "child_run_id": None, "child_ref": event["child_ref"],
        "workflow_type": event["workflow_type"], "at": event["at"],
    })


_HANDLERS = {
    "ActivityScheduled": _activity_scheduled,
    "ActivityRetried": _activity_retried,
    "ActivityCompleted": _activity_completed,
    "ActivityAttemptFailed": _activity_attempt_failed,
    "ActivityFailed": _activity_failed,
    "WorkflowFailed": _workflow_failed,
    "CommandRejected": _not_applied,
    "WorkflowBlocked": _not_applied,
    "WorkflowContinued": _workflow_continued,
    "SignalReceived": _signal,
    "TimerStarted": _timer_started,
    "TimerFired": _timer_fired,
    "ChildStarted": _child_started,
    "ActivityCancelRequested": _activity_cancelled,
    "CancelRequested": _activity_cancelled,
    "TimerCancelled": _timer_cancelled,
    "AttributesUpserted": _attributes,
}
