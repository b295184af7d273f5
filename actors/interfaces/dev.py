"""``metamorph dev``: the whole system in one process, for a laptop; plus the process plumbing the CLI shares.

Why one process: trying Metamorph should not need five terminals. ``dev`` starts an embedded broker and
PostgreSQL when none is configured (under ``.metamorph/dev``, so workflows survive a restart of ``dev``),
applies topics and migrations, and runs a node, the projector and the HTTP API side by side. Ctrl-C or
SIGTERM stops everything in reverse order; the embedded servers additionally die with this process
(parent-death signal), so nothing is left behind even after a SIGKILL.

The helpers :func:`import_apps`, :func:`app_queues` and :func:`shutdown_event` are what every long-running
``metamorph`` command needs, so they live here rather than in the argument parsing.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

DEV_DIR = Path(".metamorph") / "dev"
DEV_KAFKA_PORT = 19092  # preferred, so METAMORPH_KAFKA stays valid across restarts of `metamorph dev`


class AppImportError(ImportError):
    """An ``--app`` module that cannot be imported (a usage error, not a crash)."""


def import_apps(modules: Iterable[str]) -> list[ModuleType]:
    """Import the user's app modules; importing is what registers their workflows and activities.

    The current directory goes on ``sys.path`` first, as ``python -m`` would do, so ``--app myapp`` finds
    ``./myapp.py``. A path to a ``.py`` file is accepted too (its directory is added instead).
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    imported = []
    for name in modules:
        target = name
        if name.endswith(".py"):
            path = Path(name).resolve()
            if str(path.parent) not in sys.path:
                sys.path.insert(0, str(path.parent))
            target = path.stem
        try:
            imported.append(importlib.import_module(target))
        except Exception as exc:
            raise AppImportError(f"cannot import app module {name!r}: {type(exc).__name__}: {exc}") from exc
    return imported


def app_queues(explicit: Iterable[str] | None = None) -> tuple[str, ...]:
    """The activity queues to serve: the explicit list, else every queue the imported apps use (+ default).

    Why derive them: an activity declared with ``queue="emails"`` would otherwise wait forever on a node
    started without ``--queues emails``.
    """
    if explicit:
        return tuple(dict.fromkeys(q.strip() for q in explicit if q.strip()))
    from actors.engine.definitions import activities, workflows

    queues = {"default"} | {a.queue for a in activities().values()}
    queues |= {q for cls in workflows().values() if (q := getattr(cls, "queue", None))}
    return tuple(sorted(queues))


def shutdown_event(announce: bool = True) -> threading.Event:
    """An event set by the first SIGINT/SIGTERM; a second one exits at once (status 130).

    The main thread then waits on the event and stops components in order, instead of dying inside
    whatever it was doing. Signal handlers can only be installed from the main thread; elsewhere the event
    is simply never set by a signal.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        return stop

    def handle(signum: int, frame: Any) -> None:
        if stop.is_set():
            print("forced exit", file=sys.stderr, flush=True)
            os._exit(130)
        if announce:
            print(
                f"\n{signal.Signals(signum).name}: stopping (again to force)...", file=sys.stderr, flush=True
            )
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return stop


def wait(stop: threading.Event, alive: Callable[[], str | None] = lambda: None) -> str | None:
    """Block until ``stop`` is set or ``alive()`` names a component that died; returns that reason.

    Polling with a short timeout keeps the main thread responsive to signals on every platform.
    """
    while not stop.wait(0.5):
        dead = alive()
        if dead:
            return dead
    return None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _embedded(
    stack: contextlib.ExitStack, data_dir: Path, kafka: str | None, postgres: str | None
) -> tuple[str, str, list[str]]:
    """Start an embedded broker and/or PostgreSQL for whichever of the two is not configured."""
    from eventstore.embedded import EmbeddedKafka, EmbeddedPostgres

    notes = []
    if kafka is None:
        port = DEV_KAFKA_PORT if _port_free(DEV_KAFKA_PORT) else None
        broker = EmbeddedKafka(data_dir / "kafka", port=port)
        print(f"starting the embedded Kafka broker (data in {broker.data_dir}) ...", flush=True)
        stack.callback(broker.stop)
        broker.start()
        kafka = broker.bootstrap
        notes.append("Kafka: embedded, for development only (in memory with periodic snapshots)")
    if postgres is None:
        pg = EmbeddedPostgres(data_dir)
        print(f"starting the embedded PostgreSQL (data in {pg.pgdata}) ...", flush=True)
        stack.callback(pg.stop)
        pg.start()
        postgres = pg.uri
        notes.append("PostgreSQL: embedded")
    return kafka, postgres, notes


def run_dev(
    apps: list[str],
    *,
    kafka: str | None = None,
    postgres: str | None = None,
    namespace: str = "default",
    host: str = "127.0.0.1",
    port: int = 8080,
    metrics_port: int = 0,
    partitions: int | None = None,
    data_dir: str | Path = DEV_DIR,
    queues: list[str] | None = None,
) -> int:
    """Run broker (if needed), node, projector and HTTP API until SIGINT/SIGTERM; returns an exit status."""
    from actors.client.sync import Client
    from actors.interfaces import http
    from actors.node.loop import Node
    from eventstore import metrics
    from eventstore.topics import ensure_topics
    from projections.migrate import migrate
    from projections.projector import Projector

    modules = import_apps(apps)
    stop = shutdown_event()
    data_dir = Path(data_dir)
    embedded = kafka is None  # our own broker: see the node name below
    own_servers = kafka is None or postgres is None
    with contextlib.ExitStack() as stack:
        kafka, postgres, notes = _embedded(stack, data_dir, kafka, postgres)
        if stop.is_set():
            return 130
        served = app_queues(queues)
        ensure_topics(kafka, namespace, partitions, served)
        migrate(postgres, namespace)
        sock = http.bind(host, port)
        stack.callback(sock.close)
        if metrics_port:
            try:
                metrics.serve(metrics_port)
            except OSError as exc:
                notes.append(f"metrics: port {metrics_port} unavailable ({exc.strerror}); metrics are off")
                metrics_port = 0

        # A fixed node name (and so a reused local store) only with our own broker: a store's checkpoints
        # are offsets of one cluster and must never be applied to another.
        node = Node(
            kafka,
            namespace,
            data_dir=data_dir / "nodes",
            queues=served,
            partitions=partitions,
            name="dev" if embedded else None,
        )
        stack.callback(node.stop)
        node.start()

        projector_stop = threading.Event()
        projector = threading.Thread(
            target=Projector(kafka, postgres, namespace).run,
            args=(projector_stop,),
            name="metamorph-projector",
            daemon=True,
        )
        stack.callback(projector.join, 10)
        stack.callback(projector_stop.set)
        projector.start()

        client = Client(kafka, postgres, namespace)
        stack.callback(client.close)
        server = http.server(http.create_app(client), sock)
        web = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="metamorph-http", daemon=True
        )
        stack.callback(web.join, 10)
        stack.callback(setattr, server, "should_exit", True)
        web.start()

        _await_ready(node, stop)
        _banner(
            modules,
            namespace,
            f"http://{sock.getsockname()[0]}:{sock.getsockname()[1]}",
            kafka,
            postgres,
            metrics_port,
            served,
            notes,
        )

        def dead() -> str | None:
            if not web.is_alive():
                return "the HTTP server stopped"
            if not projector.is_alive():
                return "the projector stopped"
            return None

        reason = wait(stop, dead)
        print(
            "stopping: HTTP server, projector, node" + (", embedded servers" if own_servers else "") + " ...",
            flush=True,
        )
    if reason:
        print(f"error: {reason}", file=sys.stderr, flush=True)
        return 1
    print("stopped", flush=True)
    return 0


def _await_ready(node: Any, stop: threading.Event, timeout: float = 60.0) -> None:
    """Wait for the node's first assignment, but stay responsive to Ctrl-C meanwhile."""
    for _ in range(int(timeout / 0.5)):
        if stop.is_set() or node.wait_ready(0.5):
            return
    log.warning("the node owns no partitions yet (still joining the consumer group?)")


def _banner(
    modules: list[ModuleType],
    namespace: str,
    url: str,
    kafka: str,
    postgres: str,
    metrics_port: int,
    queues: tuple[str, ...],
    notes: list[str],
) -> None:
    from actors.engine.definitions import workflows

    names = {m.__name__ for m in modules}
    mine = sorted(n for n, cls in workflows().items() if cls.__module__ in names) or ["(none)"]
    lines = [
        f"Metamorph dev is running (namespace {namespace!r})",
        f"  HTTP API    {url}   (OpenAPI at {url}/openapi.json)",
        f"  Kafka       {kafka}",
        f"  PostgreSQL  {postgres}",
        f"  metrics     {f'http://127.0.0.1:{metrics_port}/metrics' if metrics_port else 'off (--metrics-port N)'}",
        f"  workflows   {', '.join(mine)}",
        f"  queues      {', '.join(queues)}",
        *(f"  note        {n}" for n in notes),
        "From another shell:",
        f"  export METAMORPH_KAFKA={kafka} METAMORPH_POSTGRES='{postgres}' METAMORPH_NAMESPACE={namespace}",
        "  metamorph start TYPE [JSON_ARGS...]; metamorph list",
        "Press Ctrl-C to stop.",
    ]
    print("\n".join(lines), flush=True)
