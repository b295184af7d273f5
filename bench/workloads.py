"""The benchmark's workflows and its one activity.

W1-W4 are the bodies of the peer harness (``bench/peers`` in the shared folder, ``harness/common.py``), so the
numbers compare like with like: the same trivial async activity ``greet(name) -> f"hello {name}"``, the same
workflow bodies, the same expected results. W5/W6 use a signal-waiting workflow with a query, W7 a workflow
that records a long history and then parks on a signal.
"""

from __future__ import annotations

import asyncio

from actors import Workflow, activity, query, signal, workflow

CHAIN_LEN = 10
FANOUT = 50
SIGNAL_NAME = "go"
SIGNAL_VALUE = "go"

#: id -> (short name, activities per workflow, default throughput N); the same as the peer harness.
WORKLOADS: dict[str, dict] = {
    "W1": {"name": "hello", "activities": 1, "throughput_n": 1000},
    "W2": {"name": "chain", "activities": CHAIN_LEN, "throughput_n": 200},
    "W3": {"name": "fanout", "activities": FANOUT, "throughput_n": 50},
    "W4": {"name": "signal", "activities": 1, "throughput_n": 500},
    "W5": {"name": "idle", "activities": 1, "n": 10_000},
    "W6": {"name": "restore", "activities": 1, "n": 10_000},
    "W7": {"name": "replay", "activities": 500},
}


@activity(name="bench.greet")
async def greet(name: str) -> str:
    return f"hello {name}"


def greet_impl(name: str) -> str:
    return f"hello {name}"


class Hello(Workflow):
    """W1: one activity, return its result."""

    name = "bench.W1"

    async def execute(self, name: str) -> str:
        return await workflow.activity(greet, name)


class Chain(Workflow):
    """W2: ten activities in sequence, return the last result."""

    name = "bench.W2"

    async def execute(self, name: str) -> str:
        last = ""
        for i in range(CHAIN_LEN):
            last = await workflow.activity(greet, f"{name}/{i}")
        return last


class FanOut(Workflow):
    """W3: fifty activities in parallel, joined."""

    name = "bench.W3"

    async def execute(self, name: str) -> str:
        results = await asyncio.gather(*[workflow.activity(greet, f"{name}/{i}") for i in range(FANOUT)])
        return f"{len(results)}:{results[-1]}"


class Signalled(Workflow):
    """W4: wait for the signal ``go``, then one activity."""

    name = "bench.W4"

    def __init__(self) -> None:
        self.value: str | None = None

    async def execute(self, name: str) -> str:
        await workflow.wait(lambda: self.value is not None)
        return await workflow.activity(greet, f"{name}/{self.value}")

    @signal
    def go(self, value: str) -> None:
        self.value = value


class Idle(Workflow):
    """W5/W6: the W4 body plus a query, so a restored node can be asked whether it knows the workflow."""

    name = "bench.Idle"

    def __init__(self) -> None:
        self.value: str | None = None

    async def execute(self, name: str) -> str:
        await workflow.wait(lambda: self.value is not None)
        return await workflow.activity(greet, f"{name}/{self.value}")

    @signal
    def go(self, value: str) -> None:
        self.value = value

    @query
    def state(self) -> str:
        return "waiting" if self.value is None else "released"


class Long(Workflow):
    """W7: ``n`` activities in sequence (2 events each), then park on a signal so the run stays open."""

    name = "bench.Long"

    def __init__(self) -> None:
        self.released = False

    async def execute(self, name: str, n: int) -> str:
        last = ""
        for i in range(n):
            last = await workflow.activity(greet, f"{name}/{i}")
        await workflow.wait(lambda: self.released)
        return last

    @signal
    def go(self, value: str) -> None:
        self.released = True

    @query
    def state(self) -> str:
        return "released" if self.released else "parked"


#: The workflow class that runs each workload.
CLASSES: dict[str, type[Workflow]] = {
    "W1": Hello, "W2": Chain, "W3": FanOut, "W4": Signalled, "W5": Idle, "W6": Idle, "W7": Long,
}


def expected_result(workload: str, name: str) -> str:
    """What a workflow of ``workload`` started with ``name`` must return (as in the peer harness)."""
    if workload == "W1":
        return greet_impl(name)
    if workload == "W2":
        return greet_impl(f"{name}/{CHAIN_LEN - 1}")
    if workload == "W3":
        return f"{FANOUT}:{greet_impl(f'{name}/{FANOUT - 1}')}"
    if workload in ("W4", "W5", "W6"):
        return greet_impl(f"{name}/{SIGNAL_VALUE}")
    raise ValueError(workload)
