"""Workflows of the soak (``bench/soak.py``): every run mixes a timer, an activity, a child and a signal, and
continues as new until its rounds are done, carrying the signals it received.

The result says exactly what the soak sent: the signal values in the order they were sent, and the children's
results. Anything lost, doubled or reordered across a crash or a continue-as-new shows in it.
"""

from __future__ import annotations

from actors import Workflow, activity, signal, workflow


@activity(name="soak.work")
def work(key: str) -> str:
    return f"w:{key}"


class SoakChild(Workflow):
    name = "soak.Child"

    async def execute(self, key: str) -> str:
        return await workflow.activity(work, f"child/{key}")


class SoakMixed(Workflow):
    """``rounds`` runs; run i waits a timer, runs an activity and a child, and waits for signal i."""

    name = "soak.Mixed"

    def __init__(self) -> None:
        self.signals: list[str] = []

    async def execute(self, key: str, rounds: int, timer: float, carried: list[str], done: list[str]) -> dict:
        run = len(done)
        await workflow.timer(timer)
        first = await workflow.activity(work, f"{key}/{run}")
        child = await workflow.child(SoakChild, f"{key}/{run}", id=f"{key}-child-{run}")
        await workflow.wait(lambda: len(carried) + len(self.signals) > run)
        carried = carried + self.signals
        done = [*done, f"{first}|{child}"]
        if len(done) < rounds:
            workflow.continue_as_new(key, rounds, 0.2, carried, done)
        return {"key": key, "signals": carried, "steps": done}

    @signal
    def step(self, value: str) -> None:
        self.signals.append(value)


class SoakProbe(Workflow):
    """One activity: the soak starts a few after each kill and times how long they take (the recovery)."""

    name = "soak.Probe"

    async def execute(self, key: str) -> str:
        return await workflow.activity(work, key)
