"""``python -m bench``: run the Metamorph benchmark (W1-W7) on an embedded stack.

Prints one JSON line per workload run on stdout (``--out FILE`` also appends them to FILE), progress on stderr,
and a Markdown table at the end. Exit status 0 iff every run had correct results and no errors.

    python -m bench                                # everything, 3 reps (about 25 min on 2 cores)
    python -m bench --workloads W1,W4 --reps 1
    python -m bench --quick                        # tiny sizes, 1 rep: checks that it all works
    python -m bench --table results.jsonl          # only render the table of saved lines
"""

from __future__ import annotations

import argparse
import json
import sys

from .report import render
from .runner import ALL_WORKLOADS, Options, Runner, dumps


def _workloads(text: str) -> tuple[str, ...]:
    names = {"hello": "W1", "chain": "W2", "fanout": "W3", "signal": "W4", "idle": "W5", "restore": "W6", "replay": "W7"}
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        w = names.get(item.lower(), item.upper())
        if w not in ALL_WORKLOADS:
            raise argparse.ArgumentTypeError(f"unknown workload {item!r}; use {', '.join(ALL_WORKLOADS)}")
        out.append(w)
    return tuple(out)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, Options]:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", type=_workloads, default=ALL_WORKLOADS, help="comma-separated, default W1..W7")
    p.add_argument("--reps", type=int, help="repetitions per workload (default 3; --quick: 1)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (3 workflows per workload, 20 for W5/W6), 1 rep")
    p.add_argument("--out", help="append the JSON lines to this file")
    p.add_argument("--latency-n", type=int, help="sequential workflows per latency rep (default 50)")
    p.add_argument("--throughput-n", type=int, help="workflows per throughput rep, all of W1-W4 (default 1000/200/50/500)")
    p.add_argument("--concurrency", type=int, help="start(+signal) calls in flight (default 50)")
    p.add_argument("--warmup", type=int, help="warm-up workflows (default 10)")
    p.add_argument("--idle-n", type=int, help="waiting workflows for W5/W6 (default 10000)")
    p.add_argument("--idle-max-live", type=_ints, help="W5 is run once per value of --max-live-workflows (default 1000,100)")
    p.add_argument("--replay-activities", type=int, help="W7 activities (2 events each; default 500)")
    p.add_argument("--partitions", type=int, help="partitions of the namespace's topics (default 8)")
    p.add_argument("--max-live", type=int, help="node --max-live-workflows for W1-W4, W6 (default 1000)")
    p.add_argument("--activity-concurrency", type=int, help="node --activity-concurrency (default 32)")
    p.add_argument("--broker", choices=["noida", "apache"], help="noida-db (embedded, default) or real Apache Kafka")
    p.add_argument("--shared-stack", action="store_true", help="one broker + PostgreSQL for all runs (default: fresh per run)")
    p.add_argument("--workdir", help="where stacks and logs go (default: a new temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, data) afterwards")
    p.add_argument("--table", metavar="JSONL", help="print the Markdown table of saved JSON lines and exit")
    a = p.parse_args(argv)
    kw: dict = {"workloads": a.workloads}
    for name in ("reps", "latency_n", "concurrency", "warmup", "idle_n", "idle_max_live", "replay_activities", "partitions",
                 "max_live", "activity_concurrency", "workdir", "out", "broker"):
        value = getattr(a, name)
        if value is not None:
            kw[name] = value
    if a.throughput_n is not None:
        kw["throughput_n"] = dict.fromkeys(("W1", "W2", "W3", "W4"), a.throughput_n)
    if a.shared_stack:
        kw["shared_stack"] = True
    if a.keep:
        kw["keep"] = True
    opts = Options.quick_options(**kw) if a.quick else Options(**kw)
    return a, opts


def main(argv: list[str] | None = None) -> int:
    args, opts = parse(argv)
    if args.table:
        with open(args.table) as fh:
            print(render([json.loads(line) for line in fh if line.strip()]))
        return 0

    def emit(rec: dict) -> None:
        line = dumps(rec)
        print(line, flush=True)
        if opts.out:
            with open(opts.out, "a") as fh:
                fh.write(line + "\n")

    records = Runner(opts, emit).run_all()
    print(render(records), flush=True)
    return 0 if records and all(r.get("ok") for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
