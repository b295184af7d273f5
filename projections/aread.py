"""The read side for asyncio callers (``actors.AsyncClient``): psycopg 3's native async connections.

Why a second module: ``projections.read`` works on a blocking ``psycopg.Connection``, and running it in an
event loop would stall every other task for the length of each round trip. These functions run the very
statements ``read`` runs (its SQL constants and query builders are shared, not copied) on a
``psycopg.AsyncConnection`` and shape the rows with the same helpers, so both clients see the same dicts.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from . import read
from .db import _options, schema_name


async def pool(conninfo: str, namespace: str, min_size: int = 1, max_size: int = 8,
               connect_kwargs: dict[str, Any] | None = None, **pool_options: Any) -> AsyncConnectionPool:
    """An open async pool pointing at the namespace's schema: autocommit, unchecked on checkout (as
    ``projections.db.pool``; the caller checks it after a failed read)."""
    kwargs = dict(connect_kwargs or {})
    kwargs["options"] = _options(namespace, kwargs)
    kwargs.setdefault("autocommit", True)
    pool_options.setdefault("name", f"metamorph-async-{schema_name(namespace)}")
    p = AsyncConnectionPool(conninfo, min_size=min_size, max_size=max_size, kwargs=kwargs, open=False, **pool_options)
    await p.open()
    return p


async def connect(conninfo: str, namespace: str, **kwargs: Any) -> psycopg.AsyncConnection:
    """An async connection whose ``search_path`` is the namespace's schema (for LISTEN)."""
    return await psycopg.AsyncConnection.connect(conninfo, options=_options(namespace, kwargs), **kwargs)


async def _rows(conn: psycopg.AsyncConnection, query: str, params: Any = ()) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        return [read._json(row) for row in await cur.fetchall()]


async def _current_run(conn: psycopg.AsyncConnection, workflow_id: str) -> str | None:
    row = await (await conn.execute(read.CURRENT_RUN_SQL, (workflow_id,))).fetchone()
    return row[0] if row else None


async def get_workflow(conn: psycopg.AsyncConnection, id: str) -> dict | None:  # noqa: A002
    rows = await _rows(conn, read.GET_WORKFLOW_SQL, (id,))
    return rows[0] if rows else None


async def list_workflows(conn: psycopg.AsyncConnection, **filters: Any) -> list[dict]:
    return await _rows(conn, *read.list_query(**filters))


async def count_workflows(conn: psycopg.AsyncConnection, **filters: Any) -> int:
    row = await (await conn.execute(*read.count_query(**filters))).fetchone()
    return int(row[0]) if row is not None else 0


async def history(conn: psycopg.AsyncConnection, id: str, run_id: str | None = None) -> list[dict]:  # noqa: A002
    run_id = run_id or await _current_run(conn, id)
    return [] if run_id is None else read.history_rows(await _rows(conn, read.HISTORY_SQL, (id, run_id)))


async def stream_items(conn: psycopg.AsyncConnection, id: str, after: int = 0, limit: int = 500) -> list[dict]:  # noqa: A002
    return await _rows(conn, read.STREAM_SQL, (id, after, limit))


async def exceptions(conn: psycopg.AsyncConnection, id: str, run_id: str | None = None) -> list[dict]:  # noqa: A002
    run_id = run_id or await _current_run(conn, id)
    return [] if run_id is None else await _rows(conn, read.EXCEPTIONS_SQL, (id, run_id))


async def run_known(conn: psycopg.AsyncConnection, id: str, run_id: str) -> bool:  # noqa: A002
    return await (await conn.execute(read.RUN_KNOWN_SQL, (id, run_id))).fetchone() is not None


async def record_pending(conn: psycopg.AsyncConnection, workflow_id: str, type: str, input_json: Any = None) -> bool:  # noqa: A002
    """``projections.pending.record_pending`` on an async connection."""
    from .pending import PENDING_SQL, pending_params

    async with conn.transaction():
        return (await conn.execute(PENDING_SQL, pending_params(workflow_id, type, input_json))).rowcount == 1
