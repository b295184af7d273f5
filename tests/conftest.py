"""Shared fixtures: every test run brings up its own broker and PostgreSQL.

Why: tests must never touch servers that happen to run on the machine (a system PostgreSQL on
5432, a developer's Kafka), and parallel runs must not collide. So one embedded noida-db broker
(on a free port) and one embedded PostgreSQL (Unix socket only) are started per session in
pytest's temporary directory, and each test gets its own namespace (topic prefix) and database.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest

from eventstore.embedded import EmbeddedKafka, EmbeddedPostgres


@pytest.fixture(autouse=True)
def _no_outside_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop METAMORPH_* from the environment so no test silently falls back to a configured server."""
    for var in ("METAMORPH_KAFKA", "METAMORPH_POSTGRES", "METAMORPH_NAMESPACE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka]:
    """The session's broker; stopped (SIGTERM) at session end."""
    server = EmbeddedKafka(tmp_path_factory.mktemp("kafka"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """The session's PostgreSQL; stopped (fast shutdown) at session end."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kafka(kafka_server: EmbeddedKafka) -> str:
    """Bootstrap string of the session broker, restarted first if an earlier test stopped or killed it."""
    if not kafka_server.running:
        kafka_server.start()
    return kafka_server.bootstrap


@pytest.fixture
def namespace() -> str:
    """A namespace unique to this test (``t`` + 8 hex chars), so topics and groups never clash.

    It is also a valid unquoted SQL identifier, which is why ``pg_url`` reuses it as the database name.
    """
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def pg_url(pg_server: EmbeddedPostgres, namespace: str) -> Iterator[str]:
    """URI of a fresh database for this test, dropped afterwards to keep the session's disk use flat."""
    if not pg_server.running:
        pg_server.start()
    url = pg_server.create_database(namespace)
    yield url
    if pg_server.running:
        import psycopg
        from psycopg import sql

        # FORCE: a test may leave pooled connections open; they must not keep the database alive.
        with contextlib.suppress(psycopg.Error), psycopg.connect(pg_server.uri, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(namespace)))
