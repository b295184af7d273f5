"""Workflows and activities for the flow-control tests (docs/API.md §9), run by real worker processes.

Every execution appends ``start``/``end`` lines with a wall-clock time to one marks file per queue, so a
test can check, across processes, how many ran at once, how many started in any window, and in what order.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from actors import ActivityOptions, Workflow, activity, activity_info, queue, workflow

MARKS = Path(os.environ.get("METAMORPH_TEST_MARKS", "/tmp/metamorph-test-marks"))

# Concurrency 8 with 0.2 s tasks allows 40 starts/s, so the 20/s rate is the limit that binds: the throughput check
# then measures whether the rate is reached, not the per-task overhead (at concurrency 4 both limits were exactly 20/s).
queue("limited", concurrency=8, rate_limit="20/s")
queue("single", concurrency=1)


def _mark(file: str, what: str, label: str) -> None:
    MARKS.mkdir(parents=True, exist_ok=True)
    with open(MARKS / file, "a") as fh:  # one short append per line: atomic across processes
        fh.write(f"{what} {label} {time.time():.6f} {os.getpid()}\n")


def _run(file: str, label: str, seconds: float) -> str:
    _mark(file, "start", label)
    time.sleep(seconds)
    _mark(file, "end", label)
    return label


@activity(queue="limited", timeout=3)
def tick(label: str) -> str:
    return _run("limited", label, 0.2)


@activity(queue="keyed")
def step(label: str) -> str:
    return _run("keyed", label, 0.2)


@activity(queue="single", timeout=2, tries=5)
def job(label: str, seconds: float = 0.05) -> str:
    """Marked with its attempt: a task that waited longer than its timeout must still be attempt 1."""
    return _run("single", f"{label}#{activity_info().attempt}", seconds)


class Tick(Workflow):
    async def execute(self, label: str) -> str:
        return await workflow.activity(tick, label)


class Keyed(Workflow):
    """Five calls for one key at once: they must still run one at a time, in the order scheduled."""

    async def execute(self, key: str, n: int) -> list:
        options = ActivityOptions(key=key)
        return await workflow.all([workflow.activity(step, f"{key}:{i}", options=options) for i in range(n)])


class Job(Workflow):
    """One job; its priority is the workflow's (``client.start(priority=...)``) unless ``priority`` is given."""

    async def execute(self, label: str, seconds: float = 0.05, priority: int | None = None) -> str:
        return await workflow.activity(job, label, seconds, options=ActivityOptions(priority=priority))
