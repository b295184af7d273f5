"""Workflows and activities the integration tests run through real Kafka, nodes and projections."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from actors import (
    ActivityFailed,
    NonRetryableError,
    Workflow,
    activity,
    activity_info,
    heartbeat,
    query,
    signal,
    update,
    workflow,
)

MARKS = Path(os.environ.get("METAMORPH_TEST_MARKS", "/tmp/metamorph-test-marks"))


@activity(name="rt.greet")
async def greet(name: str) -> str:
    return f"hello {name}"


@activity(name="rt.slow_greet")
def slow_greet(name: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"slow hello {name}"


@activity(name="rt.mark")
def mark(key: str) -> str:
    """Appends a line per execution, so tests can count how often an activity really ran."""
    MARKS.mkdir(parents=True, exist_ok=True)
    with open(MARKS / key, "a") as fh:
        fh.write(f"{activity_info().attempt}\n")
    return key


@activity(name="rt.stuck", tries=2, backoff=(0.1,), timeout=0.5)
def stuck(seconds: float) -> str:
    time.sleep(seconds)
    return "finished"


@activity(name="rt.silent", tries=2, backoff=(0.1,), heartbeat_timeout=0.5)
def silent(beats: int) -> str:
    for _ in range(beats):
        heartbeat({"alive": True})
        time.sleep(0.1)
    time.sleep(1.5)  # then goes quiet for longer than the heartbeat timeout
    return "finished"


@activity(name="rt.beating", heartbeat_timeout=0.6)
def beating(steps: int) -> int:
    for i in range(steps):
        heartbeat(i)
        time.sleep(0.1)
    return steps


@activity(name="rt.fails", tries=3, backoff=(0.05,))
def fails(message: str) -> None:
    raise RuntimeError(message)


@activity(name="rt.refuses")
def refuses() -> None:
    raise NonRetryableError("refused for good")


@activity(name="rt.big")
def big(size: int) -> str:
    return "x" * size


class Hello(Workflow):
    name = "rt.Hello"

    async def execute(self, who: str) -> str:
        return await workflow.activity(greet, who)


class Chain(Workflow):
    name = "rt.Chain"

    async def execute(self, who: str, n: int) -> str:
        last = ""
        for i in range(n):
            last = await workflow.activity(greet, f"{who}/{i}")
        return last


class FanOut(Workflow):
    name = "rt.FanOut"

    async def execute(self, who: str, n: int) -> str:
        results = await asyncio.gather(*[workflow.activity(greet, f"{who}/{i}") for i in range(n)])
        return f"{len(results)}:{results[-1]}"


class Signalled(Workflow):
    name = "rt.Signalled"

    def __init__(self) -> None:
        self.value: str | None = None
        self.items: list[str] = []

    async def execute(self, who: str) -> str:
        await workflow.wait(lambda: self.value is not None)
        return await workflow.activity(greet, f"{who}/{self.value}")

    @signal
    def go(self, value: str) -> None:
        self.value = value

    @query
    def peek(self) -> str | None:
        return self.value

    @query
    def count(self) -> int:
        return len(self.items)

    @update
    def add(self, item: str) -> int:
        self.items.append(item)
        return len(self.items)


class Timeouts(Workflow):
    name = "rt.Timeouts"

    async def execute(self, kind: str) -> str:
        try:
            if kind == "start-to-close":
                return await workflow.activity(stuck, 3)
            if kind == "heartbeat":
                return await workflow.activity(silent, 2)
            if kind == "beating":
                return str(await workflow.activity(beating, 12))
            if kind == "fails":
                return await workflow.activity(fails, "boom")
            if kind == "refuses":
                return await workflow.activity(refuses)
            if kind == "unknown":
                return await workflow.activity("rt.nowhere", 1)
            if kind == "big":
                return await workflow.activity(big, 2_200_000)  # over METAMORPH_MAX_PAYLOAD (2 MiB)
        except ActivityFailed as exc:
            return f"{exc.error_type} after {exc.attempts}"
        return "?"


class Child(Workflow):
    name = "rt.Child"

    async def execute(self, n: int) -> int:
        await asyncio.gather(*[workflow.activity(greet, f"{n}/{i}") for i in range(10)])
        return n


class Parent(Workflow):
    name = "rt.Parent"

    async def execute(self, count: int) -> int:
        return sum(await workflow.all([workflow.child(Child, i) for i in range(count)]))


class Looping(Workflow):
    name = "rt.Looping"

    async def execute(self, n: int) -> int:
        await workflow.activity(greet, str(n))
        if n > 0:
            workflow.continue_as_new(n - 1)
        return 99


class Crashy(Workflow):
    """The crash test: an activity, a signal, a timer, another activity that marks each execution."""

    name = "rt.Crashy"

    def __init__(self) -> None:
        self.released = False

    async def execute(self, key: str) -> str:
        first = await workflow.activity(slow_greet, key, 0.2)
        await workflow.wait(lambda: self.released)
        await workflow.timer(1.0)
        marked = await workflow.activity(mark, key)
        return f"{first}|{marked}"

    @signal
    def release(self) -> None:
        self.released = True


class Sleepy(Workflow):
    name = "rt.Sleepy"

    async def execute(self, seconds: float) -> str:
        await workflow.timer(seconds)
        return "rested"

    @query
    def ping(self) -> str:
        return "pong"


@activity(name="rt.marked_sleep")
def marked_sleep(key: str, seconds: float) -> str:
    """Records which process started it, sleeps, then records that it finished (one line per execution)."""
    MARKS.mkdir(parents=True, exist_ok=True)
    with open(MARKS / f"{key}.start", "a") as fh:
        fh.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    MARKS.mkdir(parents=True, exist_ok=True)
    with open(MARKS / f"{key}.done", "a") as fh:
        fh.write(f"{activity_info().attempt}\n")
    return f"slept {key}"


class LongStep(Workflow):
    """One slow activity: the activity-worker failover test kills a worker while it runs."""

    name = "rt.LongStep"

    async def execute(self, key: str, seconds: float) -> str:
        return await workflow.activity(marked_sleep, key, seconds)


class SignalCounter(Workflow):
    """Collects signals (and updates) and continues as new every ``per_run`` of them, carrying what it saw.

    Commands that arrive while a run continues must reach the next run, in order: the result is every
    value received, in the order it was sent.
    """

    name = "rt.SignalCounter"

    def __init__(self) -> None:
        self.received: list[str] = []

    async def execute(self, total: int, per_run: int, seen: list[str]) -> list[str]:
        await workflow.wait(lambda: len(self.received) >= per_run or len(seen) + len(self.received) >= total)
        seen = seen + self.received
        if len(seen) < total:
            workflow.continue_as_new(total, per_run, seen)
        return seen

    @signal
    def bump(self, value: str) -> None:
        self.received.append(value)

    @update
    def note(self, value: str) -> int:
        self.received.append(value)
        return len(self.received)

    @query
    def run_count(self) -> int:
        return len(self.received)
