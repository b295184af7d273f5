"""A benchmark node as a real process (so its RSS can be measured and W6 can ``kill -9`` it).

    python -m bench.node_process --kafka HOST:PORT --namespace NS --data-dir DIR --name NAME [options]

Like ``tests/apps/node_runner.py``, but importing ``bench.workloads``. ``--name`` is fixed by the runner,
so a restarted node is the same static group member and reclaims its partitions at once. Prints
``READY <partitions>`` on stdout once it owns partitions; stops cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse

import bench.workloads  # noqa: F401 - registers the workflows and the activity
from actors.node.loop import Node
from bench._child import prepare


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.node_process")
    parser.add_argument("--kafka", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--max-live-workflows", type=int, default=1000)
    parser.add_argument("--activity-concurrency", type=int, default=32)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    stop = prepare(args.log_level)
    node = Node(
        args.kafka, args.namespace, data_dir=args.data_dir, name=args.name,
        max_live_workflows=args.max_live_workflows, activity_concurrency=args.activity_concurrency,
        idle_seconds=args.idle_seconds,
    ).start()
    ready = node.wait_ready(60)
    print(f"READY {node.owned_partitions}" if ready else "NOT-READY", flush=True)
    stop.wait()
    node.stop()


if __name__ == "__main__":
    main()
