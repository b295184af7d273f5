"""Workflows for the start-option tests (docs/API.md §6): policies, signal-with-start, start delay, timeouts."""

from __future__ import annotations

from actors import Workflow, query, signal, update, workflow


class Gate(Workflow):
    """Notes which signals it had seen when ``execute`` took its first step, then waits for ``go``."""

    name = "pol.Gate"

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.at_first_step: list[str] | None = None
        self.first_step_at: float | None = None

    async def execute(self, tag: str) -> dict:
        self.at_first_step = list(self.seen)
        self.first_step_at = workflow.now().timestamp()
        await workflow.wait(lambda: "go" in self.seen)
        return {"tag": tag, "first": self.at_first_step, "seen": self.seen, "run_id": workflow.info().run_id}

    @signal
    def add(self, item: str) -> None:
        self.seen.append(item)

    @update
    def push(self, item: str) -> int:
        self.seen.append(item)
        return len(self.seen)

    @query
    def first(self) -> list[str] | None:
        return self.at_first_step

    @query
    def first_step_time(self) -> float | None:
        return self.first_step_at


class Quick(Workflow):
    name = "pol.Quick"

    async def execute(self, tag: str) -> dict:
        return {"tag": tag, "run_id": workflow.info().run_id, "first_step_at": workflow.now().timestamp()}


class Fails(Workflow):
    name = "pol.Fails"

    async def execute(self, tag: str) -> str:
        raise RuntimeError(f"{tag} fails on purpose")


class Sleeper(Workflow):
    """Sleeps ``seconds`` (a durable timer), then completes."""

    name = "pol.Sleeper"

    async def execute(self, seconds: float) -> str:
        await workflow.timer(seconds)
        return "woke"


class Relay(Workflow):
    """Continues as new every ``step`` seconds, ``left`` times: a chain the execution timeout spans."""

    name = "pol.Relay"

    async def execute(self, step: float, left: int) -> str:
        await workflow.timer(step)
        if left > 0:
            workflow.continue_as_new(step, left - 1)
        return "relay done"
