"""Numbered SQL migrations, applied at start by every process that needs the projections.

Schema changes are files ``migrations/NNN_name.sql``; version NNN is applied once per namespace schema and
recorded in ``schema_migrations``. The node, the projector, the HTTP server and ``metamorph init`` may all
start at the same moment, so everything happens in one transaction under a transaction-scoped advisory
lock: concurrent callers queue up, the first applies the missing versions, the others then find nothing
left to do. A failing migration rolls back entirely and leaves the schema as it was.

``connect`` and ``record_pending`` are re-exported here because callers that apply the schema usually need
a connection to it next (and the client records pending starts).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import psycopg
from psycopg import sql

from .db import connect, schema_name
from .pending import record_pending

__all__ = ["MIGRATIONS_DIR", "available", "connect", "migrate", "record_pending"]

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_FILE = re.compile(r"^(\d+)_[\w-]+\.sql$")


def available(directory: Path = MIGRATIONS_DIR) -> dict[int, Path]:
    """The migration files by version; two files with the same number are a packaging error."""
    found: dict[int, Path] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise RuntimeError(f"two migrations with version {version}: {found[version].name}, {path.name}")
        found[version] = path
    return found


def migrate(conninfo: str, namespace: str, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Create the namespace's schema if needed and apply missing migrations; returns the versions applied."""
    schema = schema_name(namespace)
    files = available(directory)
    with connect(conninfo, namespace) as conn:
        with conn.transaction():
            # Serialize with every other migrator of this schema (even before the schema exists).
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s)::bigint)", (f"metamorph.migrate.{schema}",))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            applied = []
            for version, path in sorted(files.items()):
                if version in done:
                    continue
                log.info("applying migration %s to schema %s", path.name, schema)
                try:
                    conn.execute(path.read_text())  # no parameters: several statements in one go
                except psycopg.Error as exc:
                    raise RuntimeError(f"migration {path.name} failed in schema {schema}: {exc}") from exc
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                applied.append(version)
    return applied
