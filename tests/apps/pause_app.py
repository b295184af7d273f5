"""Workflows for the pause/resume and reset tests (docs/API.md §7)."""

from __future__ import annotations

from actors import Workflow, activity, query, signal, workflow


@activity(name="pz.step")
async def step(name: str) -> str:
    return f"did {name}"


class Napper(Workflow):
    """Sleeps ``seconds`` on a durable timer, then waits for ``n`` signals; returns what it saw, in order."""

    name = "pz.Napper"

    def __init__(self) -> None:
        self.items: list[str] = []
        self.woke = False

    async def execute(self, seconds: float, n: int) -> dict:
        await workflow.timer(seconds)
        self.woke = True
        await workflow.wait(lambda: len(self.items) >= n)
        return {"items": self.items, "after": await workflow.activity(step, "last")}

    @signal
    def add(self, item: str) -> None:
        self.items.append(item)

    @query
    def state(self) -> dict:
        return {"woke": self.woke, "items": self.items}


class Steps(Workflow):
    """Three activities in sequence: a reset re-executes the ones after its cut, and only those."""

    name = "pz.Steps"

    async def execute(self) -> list[str]:
        return [await workflow.activity(step, name) for name in ("one", "two", "three")]
