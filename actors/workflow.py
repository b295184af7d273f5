"""The calls workflow code makes (``from actors import workflow``).

Every call is answered by the runtime driving the current thread (``actors/engine/runtime.py``; the replay
driver implements it), so the same code is a
live execution or a replay without knowing which. Inside workflow code only these awaitables (plus
``asyncio.gather`` / ``asyncio.sleep`` / ``asyncio.wait`` / ``asyncio.wait_for``, mapped to ``all`` / ``timer``
/ ``first``) may be awaited; real I/O, clocks,
threads or random numbers inside workflow code break replay — put them in activities or ``side_effect``.
"""

from __future__ import annotations

import random as _random
import uuid as _uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from actors.engine.definitions import ActivityOptions
from actors.engine.runtime import DEFAULT_VERSION, ChildHandle
from actors.engine.runtime import current as current_run

__all__ = [
    "DEFAULT_VERSION", "ActivityOptions", "ChildHandle", "activity", "all", "first", "child", "start_child", "timer",
    "sleep", "wait", "side_effect", "now", "uuid4", "random", "get_version", "continue_as_new", "info",
    "upsert_search", "memo", "stream", "signal_external", "cancel_external",
]


def activity(fn_or_name: Callable[..., Any] | str, *args: Any, options: ActivityOptions | None = None, **kwargs: Any) -> Awaitable[Any]:
    """Schedule an activity now; awaiting the result raises ActivityFailed after its last try."""
    return current_run().schedule_activity(fn_or_name, args, kwargs, options)


def all(awaitables: Iterable[Any], *, return_exceptions: bool = False) -> Awaitable[Any]:  # noqa: A001 - API name
    """Run concurrently; results in input order; the first failure (in input order) after all settle."""
    return current_run().all(awaitables, return_exceptions)


def first(awaitables: Iterable[Any]) -> Awaitable[Any]:
    """Race: ``(index, value)`` of the first awaitable to finish, or its exception if it failed.

    The others are cancelled: a timer stops, a queued activity task is dropped and a running one sees
    ``ActivityCancelled`` at its next ``heartbeat()``, a child workflow is cancelled, a coroutine gets
    ``CancelledError`` at its await. Replay-safe: a replay takes the same branch and cancels the same ones.
    """
    return current_run().first(awaitables)


async def child(wf: type | str, *args: Any, id: str | None = None) -> Any:  # noqa: A002 - API name
    """Run a child workflow to completion; a failed child raises ChildWorkflowFailed."""
    handle = current_run().start_child(wf, args, id)
    return await handle.result()


async def start_child(wf: type | str, *args: Any, id: str | None = None) -> ChildHandle:  # noqa: A002
    return current_run().start_child(wf, args, id)


def timer(seconds: float | timedelta) -> Awaitable[Any]:
    """Durable sleep: survives restarts; ``<= 0`` returns at once."""
    return current_run().start_timer(seconds)


sleep = timer


def wait(condition: Callable[[], bool], timeout: float | timedelta | None = None) -> Awaitable[Any]:
    """Block until ``condition()`` holds; with a timeout, True if the condition won, False on timeout."""
    return current_run().wait(condition, timeout)


def signal_external(workflow_id: str, name: str, *args: Any) -> Awaitable[Any]:
    """Signal another workflow (not necessarily a child) by id; awaiting it returns once the target recorded it.

    Recorded (``ExternalSignalSent``), so a replay neither sends it again nor waits again: it returns (or
    raises) what the target answered then, and code that now signals another id or name is a
    non-determinism. The awaiting code gets ``WorkflowNotFound`` if no workflow has that id,
    ``WorkflowNotRunning`` if it has ended, ``ExternalRequestFailed`` if it has no such signal or refuses
    the arguments — all catchable. A paused target answers when it is resumed.
    """
    _check_target(workflow_id, "signal_external")
    if not isinstance(name, str) or not name:
        raise ValueError(f"signal_external: the signal name must be a non-empty str, got {name!r}")
    return current_run().signal_external(workflow_id, name, args, ack=True)


def cancel_external(workflow_id: str, reason: str | None = None) -> Awaitable[Any]:
    """Request cancellation of another workflow by id (its code sees ``WorkflowCancelled`` at its await point).

    Awaiting it returns once the target recorded the request (not when the target has finished cleaning
    up); recorded and replay-safe like ``signal_external``; a missing or ended target raises
    ``WorkflowNotFound`` / ``WorkflowNotRunning`` in the awaiting code.
    """
    _check_target(workflow_id, "cancel_external")
    if reason is not None and not isinstance(reason, str):
        raise TypeError(f"cancel_external: reason must be a str or None, got {type(reason).__name__}")
    return current_run().cancel_external(workflow_id, reason)


def _check_target(workflow_id: Any, call: str) -> None:
    if not isinstance(workflow_id, str) or not workflow_id:
        raise ValueError(f"{call}: the workflow id must be a non-empty str, got {workflow_id!r}")


def side_effect(fn: Callable[[], Any]) -> Awaitable[Any]:
    """Run ``fn`` once and record its value; replays return the recorded value without calling it."""
    return current_run().side_effect(fn)


def now() -> datetime:
    """The time of the event being processed (aware UTC): the same on every replay."""
    return current_run().now


def uuid4() -> _uuid.UUID:
    return current_run().uuid4()


def random() -> _random.Random:
    """A ``random.Random`` seeded by the run, so replays draw the same numbers."""
    return current_run().rng()


def get_version(change_id: str, min_supported: int = DEFAULT_VERSION, max_supported: int = 1) -> int:
    return current_run().get_version(change_id, min_supported, max_supported)


def continue_as_new(*args: Any) -> None:
    """End this run and start a fresh one of the same workflow id with ``args``; never returns."""
    current_run().continue_as_new(args)


def upsert_search(attrs: dict[str, Any]) -> None:
    """Set (or, with None, remove) search attributes of this workflow: recorded, so replay-safe.

    Values are str, int, float, bool or ISO datetime strings (a ValueError naming the key otherwise);
    the projections merge them into the indexed attributes ``client.list(search=...)`` filters on.
    """
    current_run().upsert_attributes(attrs, None)


def memo(attrs: dict[str, Any]) -> None:
    """Merge JSON entries into this workflow's memo (shown with it, not indexed); recorded, replay-safe."""
    current_run().upsert_attributes(None, attrs)


def stream(value: Any) -> None:
    """Append a progress item (e.g. a batch of LLM tokens) that clients read live with ``handle.stream()``.

    Recorded in the history (replay-safe: a replay does not append it again), so a reader that reconnects
    resumes from any position; positions count per workflow id and go on across continue-as-new. The item
    is a JSON payload under ``METAMORPH_MAX_PAYLOAD`` (``PayloadTooLarge`` here otherwise).
    """
    current_run().stream(value)


@dataclass(frozen=True)
class WorkflowInfo:
    id: str
    run_id: str
    type: str
    parent_id: str | None
    started_at: datetime | None


def info() -> WorkflowInfo:
    run = current_run()
    return WorkflowInfo(run.workflow_id, run.run_id, run.type_name, run.parent_id, run.started_at)
