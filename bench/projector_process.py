"""The projector as its own process, so its CPU and RSS are measured apart from the node and the client.

    python -m bench.projector_process --kafka HOST:PORT --postgres URI --namespace NS

Prints ``READY`` once started; stops cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import threading

from bench._child import prepare
from projections.projector import Projector


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.projector_process")
    parser.add_argument("--kafka", required=True)
    parser.add_argument("--postgres", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    stop = prepare(args.log_level)
    projector = Projector(args.kafka, args.postgres, args.namespace)
    thread = threading.Thread(target=projector.run, args=(stop,), name="projector", daemon=True)
    thread.start()
    print("READY", flush=True)
    stop.wait()
    thread.join(15)


if __name__ == "__main__":
    main()
