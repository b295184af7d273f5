"""Workflows for tests/test_tracing.py: an activity, a timer, a signal."""

from __future__ import annotations

from actors import Workflow, activity, signal, workflow


@activity(name="traced.work")
def work(x: str) -> str:
    return x.upper()


class Traced(Workflow):
    name = "traced.Traced"

    async def execute(self, x: str) -> str:
        first = await workflow.activity(work, x)
        await workflow.timer(0.2)  # the step after it has no sender: it joins the run's recorded trace
        return first + await workflow.activity(work, "!")


class Waits(Workflow):
    name = "traced.Waits"

    def __init__(self) -> None:
        self.got: str | None = None

    async def execute(self) -> str:
        await workflow.wait(lambda: self.got is not None)
        assert self.got is not None
        return await workflow.activity(work, self.got)

    @signal
    def go(self, value: str) -> None:
        self.got = value
