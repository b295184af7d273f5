"""Profile the node, the projector and the client with py-spy while a workload runs.

    python -m bench.profile [--workload W1] [--n 2000] [--phase throughput|restore] [--out DIR]

``throughput``: W1 (or W2-W4) throughput with ``n`` workflows, ``concurrency`` in flight, as the benchmark runs it.
``restore``: W6's query phase: n waiting workflows, kill -9 the node, restart it, query all of them.

py-spy (``pip install py-spy``) samples each process at 100 Hz (idle threads excluded, so the samples are
where CPU goes). For each process the summary lists the functions with the most samples on the stack
(inclusive) and at the top of the stack (self), with their share of the process's samples, and the CPU
seconds the process used; the raw collapsed stacks go to ``DIR/<process>.collapsed`` for flame graphs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from . import procmon
from .runner import Deployment, Infra, Options, Runner, run_latency, run_throughput

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m.group('fn')} ({path})"


def summarize(collapsed: Path, top: int = 25) -> dict:
    inclusive: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        for f in set(frames):
            inclusive[f] += n
        self_[frames[-1]] += n
    pct = lambda c: [[f, round(100 * n / total, 1)] for f, n in c.most_common(top)] if total else []  # noqa: E731
    return {"samples": total, "inclusive_pct": pct(inclusive), "self_pct": pct(self_)}


def _spy(pid: int, out: Path, duration: float) -> subprocess.Popen:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--duration", str(int(duration)), "--rate", "100", "--format", "raw",
         "--output", str(out), "--nonblocking", "--gil"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile")
    p.add_argument("--workload", default="W1", choices=["W1", "W2", "W3", "W4"])
    p.add_argument("--phase", default="throughput", choices=["throughput", "restore"])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--duration", type=float, default=0, help="seconds to sample (default: estimated from n)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    out = Path(a.out or tempfile.mkdtemp(prefix="metamorph-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    opts = Options(idle_n=a.n)
    with tempfile.TemporaryDirectory(prefix="metamorph-profile-stack-") as tmp:
        infra = Infra(Path(tmp)).start()
        monitor = procmon.Monitor()
        monitor.add("client", os.getpid())
        d = Deployment(infra, Path(tmp), opts, monitor)
        d.start()
        try:
            run_latency(d.client, a.workload, 10, "warm", 60)
            if a.phase == "throughput":
                duration = a.duration or max(5.0, a.n / 250)
                pids = {"node": d.node.pid, "projector": d.projector.pid, "client": os.getpid()}  # type: ignore[union-attr]
                spies = {k: _spy(pid, out / f"{k}.collapsed", duration) for k, pid in pids.items()}
                time.sleep(0.5)
                cpu0 = monitor.cpu()
                result = run_throughput(d.client, a.workload, a.n, opts.concurrency, "prof", 600)
                cpu = procmon.cpu_delta(cpu0, monitor.cpu())
            else:
                runner = Runner(opts)
                tag = "prof-i"
                _, to_waiting, errs = runner._start_idle(d, tag, a.n)
                time.sleep(1)
                d.client.get(f"{tag}-0").query("state", timeout=30)
                d.node.kill()  # type: ignore[union-attr]
                d.start_node()
                monitor.replace("node", d.node.pid)  # type: ignore[union-attr]
                duration = a.duration or 20
                pids = {"node": d.node.pid, "client": os.getpid()}  # type: ignore[union-attr]
                spies = {k: _spy(pid, out / f"{k}.collapsed", duration) for k, pid in pids.items()}
                cpu0 = monitor.cpu()
                t0 = time.perf_counter()
                done = [0]

                def ask(i: int) -> None:
                    d.client.get(f"{tag}-{i}").query("state", timeout=30)
                    done[0] += 1

                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(opts.concurrency) as pool:
                    list(pool.map(ask, range(a.n)))
                wall = time.perf_counter() - t0
                cpu = procmon.cpu_delta(cpu0, monitor.cpu())
                result = {"n": a.n, "queries": done[0], "wall_s": wall, "queries_per_s": done[0] / wall,
                          "start_to_all_waiting_s": to_waiting, "errors": errs}
            for spy in spies.values():
                try:
                    spy.wait(duration + 120)
                except subprocess.TimeoutExpired:  # a process with thousands of threads samples slowly
                    spy.send_signal(2)  # SIGINT: py-spy writes what it has and exits
                    spy.wait(60)
        finally:
            d.stop()
            infra.stop()
            monitor.stop()
    summary = {"workload": a.workload, "phase": a.phase, "result": result, "cpu_s": cpu,
               "profiles": {k: summarize(out / f"{k}.collapsed") for k in spies if (out / f"{k}.collapsed").exists()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
