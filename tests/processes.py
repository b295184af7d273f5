"""Real Metamorph processes for crash and failover tests, and the checks those tests share.

A test starts nodes, workers and projectors as child processes (so SIGKILL means what it means in
production), waits for the line each prints when it runs, and kills them by name. Everything still running
is stopped at the end of the test.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from actors import Client
from eventstore.topics import ensure_topics
from projections.migrate import connect, migrate
from projections.projector import Projector

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.apps.runtime_app"


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it is truthy and return that value; AssertionError naming ``what`` after
    ``timeout`` seconds. The one wait helper of the suite."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
    return result


class Processes:
    """Child processes of one test, by name; each logs to ``<logs>/<name>.log``."""

    def __init__(self, logs: Path, env: dict[str, str] | None = None) -> None:
        self.logs = logs
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def start(self, name: str, argv: list[str], ready: str, timeout: float = 60.0) -> subprocess.Popen[str]:
        """Run ``python argv...``; return once its stdout printed a line starting with ``ready``."""
        self.logs.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [sys.executable, *argv], cwd=ROOT, env=self.env, text=True, stdout=subprocess.PIPE,
            stderr=open(self.log(name), "ab"),
        )  # fmt: skip
        self.procs[name] = proc
        seen: list[str] = []
        got = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                seen.append(line)
                if line.startswith(ready):
                    got.set()

        threading.Thread(target=read, daemon=True).start()
        if not got.wait(timeout):
            raise AssertionError(f"{name} did not print {ready!r} in {timeout:.0f}s: {seen!r}, log {self.log(name)}")
        return proc

    def node(self, name: str, kafka: str, namespace: str, data: Path, *extra: str) -> subprocess.Popen[str]:
        """A workflow node (plus its activity workers unless ``--no-activities``) from ``tests.apps``."""
        argv = ["-m", "tests.apps.node_runner", "--kafka", kafka, "--namespace", namespace,
                "--data-dir", str(data), "--name", name, *extra]  # fmt: skip
        return self.start(name, argv, "READY")

    def cli(self, name: str, command: str, kafka: str, namespace: str, *extra: str, ready: str) -> subprocess.Popen[str]:
        """``metamorph COMMAND`` (worker, projector, ...) with INFO logs, as a real process."""
        argv = ["-m", "actors.interfaces.cli", command, "--kafka", kafka, "--namespace", namespace, "--log-level", "info", *extra]
        return self.start(name, argv, ready)

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(30)

    def stop_all(self) -> None:
        for name in list(self.procs):
            try:
                self.kill(name, signal.SIGTERM)
            except subprocess.TimeoutExpired:
                self.kill(name, signal.SIGKILL)


def owned_partitions(log: Path, pattern: str) -> set[int]:
    """Partitions a process's log says it took, e.g. ``node b owns partition (\\d+)``."""
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return set()
    found: set[int] = set()
    for match in re.finditer(pattern, text):
        found.update(int(p) for p in re.findall(r"\d+", match.group(1)))
    return found


def assert_exactly_once(pg_url: str, namespace: str, ids: list[str]) -> None:
    """Each workflow completed once, each activity result recorded once, no history row projected twice.

    result() may return from ``<ns>.replies`` before the projector has written the end (issue 16), so this
    first waits (up to 60 s) until every id's history has its WorkflowCompleted row; a duplicate would
    still be there after that wait, so the checks below are as strict as before."""
    with connect(pg_url, namespace) as conn:

        def projected() -> bool:
            done = conn.execute(
                "SELECT count(DISTINCT workflow_id) FROM history WHERE type = 'WorkflowCompleted' AND workflow_id = ANY(%s)",
                (list(ids),),
            ).fetchone()
            return done is not None and done[0] == len(set(ids))

        wait_until(projected, 60, "the projector to have every workflow's end")
        for wid in ids:
            rows = conn.execute("SELECT type, data FROM history WHERE workflow_id = %s ORDER BY seq", (wid,)).fetchall()
            completed = Counter(r[1].get("activity_id") for r in rows if r[0] == "ActivityCompleted")
            assert completed and max(completed.values()) == 1, f"{wid}: an activity result was recorded twice"
            assert [r[0] for r in rows].count("WorkflowCompleted") == 1, f"{wid}: not completed exactly once"
        dupes = conn.execute(
            "SELECT workflow_id, run_id, seq, count(*) FROM history GROUP BY 1, 2, 3 HAVING count(*) > 1"
        ).fetchall()
        assert dupes == [], f"history rows projected twice: {dupes[:5]}"


@contextlib.contextmanager
def process_cluster(kafka: str, namespace: str, pg_url: str, procs: Processes, partitions: int = 4) -> Iterator[Client]:
    """Topics, migrations, an in-process projector and a client, for tests that run nodes as processes
    (started with ``procs``); everything is stopped at the end, processes first."""
    ensure_topics(kafka, namespace, partitions=partitions)
    migrate(pg_url, namespace)
    stop = threading.Event()
    projector = threading.Thread(target=Projector(kafka, pg_url, namespace).run, args=(stop,), daemon=True)
    projector.start()
    client = Client(kafka, pg_url, namespace)
    try:
        yield client
    finally:
        client.close()
        procs.stop_all()
        stop.set()
        projector.join(10)
