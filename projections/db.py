"""Where a namespace's projections live in PostgreSQL, and how every module connects to them.

Each namespace gets its own schema (``mm_<namespace>``), so several namespaces (or a test per namespace) can
share one database without their tables colliding, and a rebuild can target a fresh schema or database. The
schema is selected with ``search_path`` at connect time, so every SQL statement in this package names its
tables unqualified and works in whichever schema the connection points at.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from eventstore import statuses

# Plain ``str`` tuples (in lifecycle order) of the sets in ``eventstore.statuses``, ready to be SQL parameters.
#: Terminal statuses of a run; ``continued`` is terminal for the run but not for the workflow.
TERMINAL_STATUSES = tuple(str(s) for s in statuses.ALL if s in statuses.TERMINAL)
#: Statuses after which a workflow (following continue-as-new to its newest run) has a final outcome.
FINAL_STATUSES = tuple(str(s) for s in statuses.ALL if s in statuses.FINAL)

_MAX_IDENTIFIER = 63  # PostgreSQL truncates longer identifiers silently; we would rather be explicit


def schema_name(namespace: str) -> str:
    """``"mm_" + namespace`` lowered and reduced to ``[a-z0-9_]``, so it is a safe unquoted identifier.

    Names longer than PostgreSQL's 63-byte limit are shortened with a hash suffix instead of being cut,
    so two long namespaces with a common prefix still get different schemas.
    """
    name = "mm_" + re.sub(r"[^a-z0-9_]", "_", namespace.lower())
    if len(name) > _MAX_IDENTIFIER:
        digest = hashlib.sha1(namespace.encode()).hexdigest()[:8]
        name = f"{name[: _MAX_IDENTIFIER - 9]}_{digest}"
    return name


def notify_channel(namespace: str) -> str:
    """The LISTEN/NOTIFY channel on which the projector announces terminal workflows (payload: the id)."""
    return schema_name(namespace)


def stream_channel(channel: str) -> str:
    """The channel announcing new stream items (and ends) of a workflow (payload: the id), beside ``channel``.

    Separate from the terminal channel so that ``result()`` waiters are not woken by every streamed item;
    kept within PostgreSQL's 63-byte identifier limit like the schema name.
    """
    name = f"{channel}_stream"
    if len(name) > _MAX_IDENTIFIER:
        digest = hashlib.sha1(channel.encode()).hexdigest()[:8]
        name = f"{channel[: _MAX_IDENTIFIER - 16]}_{digest}_stream"
    return name


def _options(namespace: str, kwargs: dict[str, Any]) -> str:
    extra = kwargs.pop("options", "")
    return f"-c search_path={schema_name(namespace)} {extra}".strip()


def connect(conninfo: str, namespace: str, **kwargs: Any) -> psycopg.Connection:
    """A psycopg 3 connection whose ``search_path`` is the namespace's schema (extra kwargs go to psycopg)."""
    options = _options(namespace, kwargs)
    return psycopg.connect(conninfo, options=options, **kwargs)


def pool(
    conninfo: str,
    namespace: str,
    min_size: int = 1,
    max_size: int = 8,
    connect_kwargs: dict[str, Any] | None = None,
    **pool_options: Any,
) -> ConnectionPool:
    """An open connection pool for the read side (HTTP API, clients), pointing at the namespace's schema.

    Connections are autocommit (reads need no transaction). They are not checked on checkout: that is a
    round trip per read, a fifth of a busy client's CPU. After a PostgreSQL restart the first read on a
    dead connection fails instead, and the caller runs ``ConnectionPool.check()`` (which replaces every
    dead connection at once) and tries again; see ``actors.client.sync.Client._with_conn``.
    """
    kwargs = dict(connect_kwargs or {})
    kwargs["options"] = _options(namespace, kwargs)
    kwargs.setdefault("autocommit", True)
    pool_options.setdefault("name", f"metamorph-{schema_name(namespace)}")
    return ConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        kwargs=kwargs,
        open=True,
        **pool_options,
    )
