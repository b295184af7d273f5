"""The one row a client writes itself: a workflow it has just started, before the projector has seen it.

Why: ``client.start()`` returns once the StartWorkflow command is durable in Kafka, but the projection of
the resulting WorkflowStarted can lag behind. Without this row an immediate ``status()`` from another client
(the CLI, the HTTP API) would say "not found" for a workflow that certainly exists. The write is best effort:
starting needs Kafka only, so a client skips it when PostgreSQL does not answer at once (and answers
``pending`` for its own starts from memory). The row says ``pending`` with no run; the projector's upsert of
the real start replaces it (and never the other way round: a row that already exists is left alone).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from .apply import clean, payload


def record_pending(conn: psycopg.Connection, workflow_id: str, type: str, input_json: Any = None) -> bool:
    """Insert a ``pending`` workflows row unless the id exists; True if it was inserted.

    ``input_json`` is the JSON value of the arguments (or their converter-encoded bytes). The connection
    must point at the namespace's schema (``projections.connect``); the insert commits on its own unless
    the caller is already inside a transaction.
    """
    with conn.transaction():
        return conn.execute(PENDING_SQL, pending_params(workflow_id, type, input_json)).rowcount == 1


#: The insert of ``record_pending`` (shared with the AsyncClient's async connection).
PENDING_SQL = (
    "INSERT INTO workflows (id, type, status, input, created_at, updated_at)"
    " VALUES (%s, %s, 'pending', %s, now(), now()) ON CONFLICT (id) DO NOTHING"
)


def pending_params(workflow_id: str, type: str, input_json: Any = None) -> tuple:  # noqa: A002
    """The parameters of ``PENDING_SQL``: the input as the projector would store it."""
    value = payload(bytes(input_json)) if isinstance(input_json, bytes | bytearray) else clean(input_json)
    return (workflow_id, type, None if value is None else Jsonb(value))
