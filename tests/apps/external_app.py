"""Workflows that signal and cancel other (non-child) workflows by id (workflow.signal_external /
cancel_external), for tests/test_external.py."""

from __future__ import annotations

from actors import (
    ExternalRequestFailed,
    Workflow,
    WorkflowCancelled,
    WorkflowNotFound,
    WorkflowNotRunning,
    query,
    signal,
    workflow,
)


class Inbox(Workflow):
    """Collects items until told to finish; a cancel ends it with what it had."""

    name = "tests.external.Inbox"

    def __init__(self) -> None:
        self.items: list[str] = []
        self.done = False

    async def execute(self) -> list[str]:
        try:
            await workflow.wait(lambda: self.done)
        except WorkflowCancelled:
            self.items.append("cancelled")
            raise
        return self.items

    @signal
    def add(self, item: str) -> None:
        self.items.append(item)

    @signal
    def finish(self) -> None:
        self.done = True

    @query
    def seen(self) -> list[str]:
        return list(self.items)


class Sender(Workflow):
    name = "tests.external.Sender"

    async def execute(self, target: str, items: list[str]) -> str:
        for item in items:
            await workflow.signal_external(target, "add", item)
        await workflow.signal_external(target, "finish")
        return f"sent {len(items)}"


class SenderRenamed(Workflow):
    """Sender's code changed: it signals another name, so its recorded history no longer matches (the test
    replays Sender's history against it under this type name)."""

    name = "tests.external.SenderRenamed"

    async def execute(self, target: str, items: list[str]) -> str:
        for item in items:
            await workflow.signal_external(target, "append", item)
        await workflow.signal_external(target, "finish")
        return f"sent {len(items)}"


class Canceller(Workflow):
    name = "tests.external.Canceller"

    async def execute(self, target: str) -> str:
        await workflow.cancel_external(target, "no longer needed")
        return "cancel requested"


class Prober(Workflow):
    """Each refusal an awaiting workflow can see, caught."""

    name = "tests.external.Prober"

    async def execute(self, missing: str, ended: str, running: str) -> dict:
        seen: dict[str, str] = {}
        try:
            await workflow.signal_external(missing, "add", "x")
        except WorkflowNotFound as exc:
            seen["signal missing"] = type(exc).__name__
        try:
            await workflow.signal_external(ended, "add", "x")
        except WorkflowNotRunning as exc:
            seen["signal ended"] = exc.status
        try:
            await workflow.signal_external(running, "no_such_signal")
        except ExternalRequestFailed as exc:
            seen["unknown signal"] = exc.error_type
        try:
            await workflow.cancel_external(missing)
        except WorkflowNotFound as exc:
            seen["cancel missing"] = type(exc).__name__
        try:
            await workflow.cancel_external(ended)
        except WorkflowNotRunning as exc:
            seen["cancel ended"] = exc.status
        return seen


class Uncaught(Workflow):
    """Does not catch the refusal: the workflow fails with it (like any uncaught error)."""

    name = "tests.external.Uncaught"

    async def execute(self, missing: str) -> str:
        await workflow.signal_external(missing, "add", "x")
        return "unreachable"


class BadTarget(Workflow):
    name = "tests.external.BadTarget"

    async def execute(self) -> str:
        await workflow.signal_external("", "add")
        return "unreachable"
