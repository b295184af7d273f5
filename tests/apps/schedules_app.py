"""Targets of the schedule tests (imported by the test process and by node_runner)."""

from __future__ import annotations

from actors import Workflow, workflow


class Quick(Workflow):
    name = "sched.Quick"

    async def execute(self, tag: str) -> str:
        return tag


class Sleepy(Workflow):
    name = "sched.Sleepy"

    async def execute(self, seconds: float) -> str:
        await workflow.timer(seconds)
        return "slept"
