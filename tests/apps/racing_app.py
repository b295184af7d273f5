"""Workflows racing long heartbeating activities, for the cancellation tests on a real broker.

Each activity appends lines to ``MARKS/<key>`` ("started", then "cancelled" or "finished"), so a test
sees what an activity in another process (``metamorph worker``) did; in-process runs also go to ``SEEN``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from actors import ActivityCancelled, Workflow, activity, heartbeat, workflow

MARKS = Path(os.environ.get("METAMORPH_TEST_MARKS", "/tmp/metamorph-test-marks"))
SEEN: list[tuple[str, str]] = []


def _mark(key: str, what: str) -> None:
    SEEN.append((key, what))
    MARKS.mkdir(parents=True, exist_ok=True)
    with open(MARKS / key, "a") as f:
        f.write(what + "\n")


def marks(key: str) -> list[str]:
    try:
        return (MARKS / key).read_text().split()
    except FileNotFoundError:
        return []


def _beat_for(key: str, seconds: float) -> str:
    _mark(key, "started")
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            heartbeat()
            time.sleep(0.05)
    except ActivityCancelled:
        _mark(key, "cancelled")
        raise
    _mark(key, "finished")
    return "finished"


@activity(name="racing.long_beat")
def long_beat(key: str, seconds: float) -> str:
    """Runs on the node that scheduled it (eager dispatch: the node serves ``default``)."""
    return _beat_for(key, seconds)


@activity(name="racing.remote_beat", queue="racing-remote")
def remote_beat(key: str, seconds: float) -> str:
    """Served only by a separate ``metamorph worker --queues racing-remote``."""
    return _beat_for(key, seconds)


class RaceTimer(Workflow):
    """A long activity against a short timer: the timer wins, the activity is cancelled."""

    name = "racing.RaceTimer"

    async def execute(self, activity_name: str, key: str, timer: float) -> int:
        index, _ = await workflow.first([workflow.activity(activity_name, key, 60), workflow.timer(timer)])
        return index


class Busy(Workflow):
    """Awaits one long activity; cancelling the workflow cancels it."""

    name = "racing.Busy"

    async def execute(self, activity_name: str, key: str) -> str:
        return await workflow.activity(activity_name, key, 60)
