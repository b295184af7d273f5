"""What every benchmark child process (node, projector) does before it starts its component."""

from __future__ import annotations

import logging
import signal
import sys
import threading


def prepare(log_level: str) -> threading.Event:
    """Apply opt-in experiments, log to stderr, and return an event that SIGTERM or SIGINT sets.

    The runner stops its children with SIGTERM and waits, so a component must notice it and shut down
    cleanly (a node leaves its group, a projector commits) rather than die mid-batch.
    """
    from bench.experiments import apply_from_env

    apply_from_env()
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop
