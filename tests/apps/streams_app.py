"""Workflows for the stream tests (docs/API.md §10): items appended by the code, live, across continue-as-new."""

from __future__ import annotations

from typing import Any

from actors import Workflow, activity, signal, workflow


class Emitter(Workflow):
    """Streams what each ``emit`` signal carries, as it arrives; ends on ``finish`` with the count."""

    name = "streams.Emitter"

    def __init__(self) -> None:
        self.queue: list[Any] = []
        self.done = False

    async def execute(self) -> int:
        sent = 0
        while True:
            await workflow.wait(lambda: bool(self.queue) or self.done)
            while self.queue:
                workflow.stream(self.queue.pop(0))
                sent += 1
            if self.done:
                return sent

    @signal
    def emit(self, value: Any) -> None:
        self.queue.append(value)

    @signal
    def finish(self) -> None:
        self.done = True


class Counter(Workflow):
    """Streams ``n`` items (``{"run": run, "i": i}``) per run and continues as new until ``runs`` runs ran."""

    name = "streams.Counter"

    async def execute(self, n: int, runs: int = 1, run: int = 1) -> str:
        for i in range(n):
            workflow.stream({"run": run, "i": i})
        if run < runs:
            await workflow.timer(0.05)
            workflow.continue_as_new(n, runs, run + 1)
        return f"{n * runs} items"


@activity(name="streams.big")
def big(size: int) -> str:
    return "x" * size


class Oversize(Workflow):
    """Produces a payload over METAMORPH_MAX_PAYLOAD at the step named by ``where``."""

    name = "streams.Oversize"

    async def execute(self, where: str, size: int) -> Any:
        if where == "stream":
            try:
                workflow.stream("x" * size)
            except ValueError as exc:  # PayloadTooLarge at the call: the code may catch it
                workflow.stream("caught")
                return str(exc)
            return "no error"
        if where == "activity_args":
            return await workflow.activity(big, "y" * size)
        if where == "activity_result":
            return await workflow.activity(big, size)
        return "z" * size  # where == "result"
