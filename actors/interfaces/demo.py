"""``metamorph demo``: the tutorial order workflow, end to end, on an embedded broker and PostgreSQL.

It starts everything itself (broker, PostgreSQL, a node, the projector), runs one order through
activities, a retry, a durable timer and a signal, prints each recorded step as the projector sees it,
then stops everything it started.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

NAMESPACE = "demo"


def _say(text: str = "") -> None:
    print(text, flush=True)


def _show(event: dict) -> None:
    detail = {k: v for k, v in event.items() if k not in ("seq", "type", "at", "workflow_id", "run_id", "data") and v not in (None, "", [], {})}
    brief = ", ".join(f"{k}={v}" for k, v in list(detail.items())[:3])
    _say(f"   #{event['seq']:<3} {event['type']:<22} {brief[:90]}")


APP = "examples.orders"


def main(argv: list[str] | None = None, app: str = APP) -> int:
    """Run the demo with the tutorial module ``app`` (found from the current directory, like ``--app`` of
    ``node``: the examples are files of the repository, not an installed package)."""
    logging.basicConfig(level=logging.ERROR)
    from actors.client.sync import Client
    from actors.interfaces.dev import import_apps
    from actors.node.loop import Node
    from eventstore.embedded import EmbeddedStack
    from eventstore.topics import ensure_topics
    from projections.migrate import migrate
    from projections.projector import Projector

    OrderWorkflow = import_apps([app])[0].OrderWorkflow  # noqa: N806 - a class

    data = Path(tempfile.mkdtemp(prefix="metamorph-demo-"))
    _say("Metamorph demo: one durable order workflow, end to end")
    _say(f"-> starting an embedded Kafka-protocol broker and PostgreSQL under {data}")
    stack = EmbeddedStack(data)
    stack.start()
    node = projector_thread = None
    stop = threading.Event()
    try:
        _say(f"   broker {stack.kafka}, PostgreSQL {stack.postgres}")
        counts = ensure_topics(stack.kafka, NAMESPACE, partitions=4)
        migrate(stack.postgres, NAMESPACE)
        _say(f"-> created topics {', '.join(sorted(counts))} and the projection tables (schema mm_{NAMESPACE})")
        node = Node(stack.kafka, NAMESPACE, data_dir=data / "node").start()
        node.wait_ready(30)
        projector = Projector(stack.kafka, stack.postgres, NAMESPACE)
        projector_thread = threading.Thread(target=projector.run, args=(stop,), daemon=True)
        projector_thread.start()
        _say(f"-> a node owns partitions {node.owned_partitions}; the projector is running")
        with Client(stack.kafka, stack.postgres, NAMESPACE) as client:
            handle = client.start(OrderWorkflow, "A-1", 250, id="order-A-1")
            _say(f"-> started {OrderWorkflow.name}('A-1', 250) as {handle.id}; its history, as recorded:")
            seen = _follow(handle, 0, until=lambda: handle.query("current_stage") == "awaiting approval", timeout=30)
            _say(f"-> status {handle.status()!r}; query current_stage -> {handle.query('current_stage')!r}")
            handle.signal("approve", "alice")
            _say("-> sent signal approve('alice')")
            result = handle.result(timeout=30)
            _follow(handle, seen, until=lambda: True, timeout=5)
            _say(f"-> status {handle.status()!r}; result: {result}")
            retries = [e for e in handle.exceptions() if e.get("activity")]
            for e in retries:
                _say(f"   (attempt {e['attempt']} of {e['activity']} failed with {e['error_type']}: {e['message']}; retried)")
        _say()
        _say("Where to look next:")
        _say(f"  - the projections: tables workflows, history, activities, exceptions in schema mm_{NAMESPACE}")
        _say("  - keep a stack running with the HTTP API and metrics:  metamorph dev --app examples.orders")
        _say("  - the tutorial code: examples/orders.py; the authoring API: README.md")
        return 0
    except Exception as exc:
        _say(f"demo failed: {type(exc).__name__}: {exc}")
        return 1
    finally:
        stop.set()
        if projector_thread is not None:
            projector_thread.join(10)
        if node is not None:
            node.stop()
        stack.stop()
        shutil.rmtree(data, ignore_errors=True)
        _say("-> stopped the node, the projector, the broker and PostgreSQL")


def _follow(handle: object, seen: int, until: object, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        history = handle.history()  # type: ignore[attr-defined]
        for event in history[seen:]:
            _show(event)
        seen = len(history)
        if until() or time.monotonic() > deadline:  # type: ignore[operator]
            return seen
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
