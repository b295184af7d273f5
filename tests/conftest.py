"""Shared fixtures: every test run brings up its own broker and PostgreSQL.

Why: tests must never touch servers that happen to run on the machine (a system PostgreSQL on
5432, a developer's Kafka), and parallel runs must not collide. So one broker (on free ports) and
one embedded PostgreSQL (Unix socket only) are started per session in pytest's temporary directory,
and each test gets its own namespace (topic prefix) and database.

The broker is real Apache Kafka (KRaft, ``tests/apache``) unless ``METAMORPH_TEST_BROKER=noida``
picks the embedded noida-db broker. Tests marked ``noida`` run on noida-db as well, whatever the
choice (``noida_kafka``): it stays the zero-install default of ``metamorph demo``/``dev``. Tests that
need a replicated cluster take ``kafka_cluster`` (three Apache Kafka JVMs, RF 3, min ISR 2).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from eventstore.embedded import EmbeddedKafka, EmbeddedPostgres
from tests.apache import ApacheKafka, ApacheKafkaCluster

BROKERS = ("apache", "noida")


def test_broker() -> str:
    """The broker this run uses: ``METAMORPH_TEST_BROKER`` (apache, the default, or noida)."""
    choice = os.environ.get("METAMORPH_TEST_BROKER", "apache").strip().lower() or "apache"
    if choice not in BROKERS:
        raise pytest.UsageError(f"METAMORPH_TEST_BROKER={choice!r}: expected one of {', '.join(BROKERS)}")
    return choice


test_broker.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def pytest_configure(config: pytest.Config) -> None:
    test_broker()  # refuse a bad choice before anything starts
    config.addinivalue_line("markers", "noida: also runs on the embedded noida-db broker")
    # A base temp dir of this session's own. pytest's default (/tmp/pytest-of-USER/pytest-N) keeps only the
    # newest three: a second pytest on the machine deletes the data dirs of this session's live broker and
    # PostgreSQL under it. Removed at the end unless METAMORPH_KEEP_TMP is set.
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="metamorph-tests-")
        config._metamorph_basetemp = config.option.basetemp  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    base = getattr(config, "_metamorph_basetemp", None)
    if base and not os.environ.get("METAMORPH_KEEP_TMP"):
        shutil.rmtree(base, ignore_errors=True)


def pytest_report_header(config: pytest.Config) -> str:
    return f"metamorph: broker = {test_broker()} (METAMORPH_TEST_BROKER)"


@pytest.fixture(autouse=True)
def _no_outside_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop METAMORPH_* from the environment so no test silently falls back to a configured server."""
    for var in ("METAMORPH_KAFKA", "METAMORPH_POSTGRES", "METAMORPH_NAMESPACE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The session's broker (Apache Kafka or noida-db, see the module docstring); stopped at session end."""
    server: Any
    if test_broker() == "apache":
        server = ApacheKafka(tmp_path_factory.mktemp("kafka"))
    else:
        server = EmbeddedKafka(tmp_path_factory.mktemp("kafka"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def noida_server(tmp_path_factory: pytest.TempPathFactory, kafka_server: Any) -> Iterator[EmbeddedKafka]:
    """An embedded noida-db broker for the ``noida`` subset (the session broker itself when it is noida)."""
    if isinstance(kafka_server, EmbeddedKafka):
        yield kafka_server
        return
    server = EmbeddedKafka(tmp_path_factory.mktemp("noida"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafkaCluster]:
    """Three Apache Kafka brokers (RF 3, min ISR 2) for the broker-fault tests of one module."""
    cluster = ApacheKafkaCluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


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
def kafka(kafka_server: Any) -> str:
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
