"""The projector as its own process, so its CPU and RSS are measured apart from the node and the client.

    python -m bench.projector_process --kafka HOST:PORT --postgres URI --namespace NS

Prints ``READY`` once started; stops cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from projections.projector import Projector


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.projector_process")
    parser.add_argument("--kafka", required=True)
    parser.add_argument("--postgres", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    from bench.experiments import apply_from_env

    apply_from_env()
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    projector = Projector(args.kafka, args.postgres, args.namespace)
    thread = threading.Thread(target=projector.run, args=(stop,), name="projector", daemon=True)
    thread.start()
    print("READY", flush=True)
    stop.wait()
    thread.join(15)


if __name__ == "__main__":
    main()
