"""One namespace with a node and a projector running in this process: the stack most tests talk to."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from actors import Client
from actors.node.loop import Node
from eventstore.topics import ensure_topics
from projections.migrate import migrate
from projections.projector import Projector


@contextlib.contextmanager
def running_stack(
    kafka: str, pg_server: Any, data_dir: Path, max_live_workflows: int = 1000, prefix: str = "m", partitions: int = 2
) -> Iterator[tuple[Client, Node, str]]:
    """Fresh topics and database under a new namespace; yields ``(client, node, namespace)``."""
    namespace = prefix + uuid.uuid4().hex[:8]
    postgres = pg_server.create_database(namespace)
    ensure_topics(kafka, namespace, partitions=partitions)
    migrate(postgres, namespace)
    node = Node(kafka, namespace, data_dir=data_dir, max_live_workflows=max_live_workflows).start()
    stop = threading.Event()
    thread = threading.Thread(target=Projector(kafka, postgres, namespace).run, args=(stop,), daemon=True)
    client = None
    try:
        assert node.wait_ready(30), "node did not get its partitions"
        thread.start()
        client = Client(kafka, postgres, namespace)
        yield client, node, namespace
    finally:
        if client is not None:
            client.close()
        stop.set()
        if thread.is_alive():
            thread.join(10)
        node.stop()


@contextlib.contextmanager
def module_stack(kafka_server: Any, pg_server: Any, data_dir: Path, prefix: str) -> Iterator[Client]:
    """``running_stack`` for a whole test module, on the session's servers (restarted first if an earlier
    test stopped them); yields the client."""
    if not kafka_server.running:
        kafka_server.start()
    if not pg_server.running:
        pg_server.start()
    with running_stack(kafka_server.bootstrap, pg_server, data_dir, prefix=prefix) as (client, _node, _ns):
        yield client
