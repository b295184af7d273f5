"""Runs a node (plus activity workers) as a real process, until SIGTERM; crash tests SIGKILL it."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

import tests.apps.runtime_app  # noqa: F401 - registers the workflows and activities
import tests.apps.schedules_app  # noqa: F401 - targets of the schedule tests
from actors.node.loop import Node


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kafka", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--max-live", type=int, default=1000)
    parser.add_argument("--session-timeout", type=float, default=None)
    parser.add_argument("--no-activities", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    node = Node(
        args.kafka, args.namespace, data_dir=args.data_dir, name=args.name, max_live_workflows=args.max_live,
        session_timeout=args.session_timeout, run_activities=not args.no_activities,
    ).start()
    node.wait_ready(30)
    print(f"READY {node.owned_partitions}", flush=True)
    stop.wait()
    node.stop()


if __name__ == "__main__":
    main()
