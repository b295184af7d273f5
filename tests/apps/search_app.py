"""Workflows for the search-attribute tests (docs/API.md §6, §7, §10): attributes set at start and by the code."""

from __future__ import annotations

from actors import Workflow, signal, workflow


class Tagged(Workflow):
    """Upserts attributes and memo as it goes, then waits for ``finish`` (or continues as new once)."""

    name = "search.Tagged"

    def __init__(self) -> None:
        self.done = False

    async def execute(self, stage: str = "new", continue_once: bool = False) -> str:
        workflow.upsert_search({"stage": stage, "step": 1})
        workflow.memo({"note": f"stage {stage}"})
        await workflow.timer(0.05)
        workflow.upsert_search({"step": 2, "obsolete": None})
        if continue_once:
            workflow.continue_as_new("continued", False)
        await workflow.wait(lambda: self.done)
        return stage

    @signal
    def finish(self) -> None:
        self.done = True


class Idle(Workflow):
    """Waits for ``finish``; the target of list, count and batch tests."""

    name = "search.Idle"

    def __init__(self) -> None:
        self.done = False
        self.pokes: list[str] = []

    async def execute(self) -> list[str]:
        await workflow.wait(lambda: self.done)
        return self.pokes

    @signal
    def poke(self, who: str) -> None:
        self.pokes.append(who)

    @signal
    def finish(self) -> None:
        self.done = True
