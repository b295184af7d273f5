"""The runtime that answers workflow code's calls: an interface, and which one drives the current thread.

Why an interface: ``actors.workflow`` (what users call) must not know how a run is driven, only that one is.
The replay driver (``actors/engine/replay.py``) implements it; the workflow API, the asyncio mapping and
``Workflow.compensate`` depend on this module alone, so none of them imports the driver and the
definitions → workflow → replay → definitions import circle cannot come back (as Temporal's ``workflow``
module depends on its ``_Runtime``).
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

if TYPE_CHECKING:
    from actors.engine.definitions import ActivityOptions

#: ``get_version``'s answer for code that ran before a change was introduced.
DEFAULT_VERSION = -1


class Runtime(Protocol):
    """What a run offers the code it drives. Every awaitable it returns is resolved only by the runtime."""

    workflow_id: str
    run_id: str
    parent_id: str | None
    started_at: datetime | None

    @property
    def now(self) -> datetime: ...
    @property
    def type_name(self) -> str: ...

    def schedule_activity(self, fn: Callable[..., Any] | str, args: tuple[Any, ...], kwargs: dict[str, Any],
                          options: ActivityOptions | None) -> Any: ...
    def all(self, awaitables: Iterable[Any], return_exceptions: bool) -> Any: ...
    def first(self, awaitables: Iterable[Any]) -> Any: ...
    def start_child(self, wf: type | str, args: tuple[Any, ...], child_id: str | None) -> Any: ...
    def start_timer(self, seconds: float | timedelta) -> Any: ...
    def wait(self, condition: Callable[[], bool], timeout: float | timedelta | None) -> Any: ...
    def wait_set(self, fs: Any, timeout: float | None, return_when: str) -> Any: ...
    def wait_for(self, fut: Any, timeout: float | None) -> Any: ...
    def side_effect(self, fn: Callable[[], Any]) -> Any: ...
    def uuid4(self) -> uuid.UUID: ...
    def rng(self) -> random.Random: ...
    def get_version(self, change_id: str, min_supported: int, max_supported: int) -> int: ...
    def upsert_attributes(self, search: dict[str, Any] | None, memo: dict[str, Any] | None) -> None: ...
    def signal_external(self, target_id: str, name: str, args: tuple[Any, ...], ack: bool = False) -> Any: ...
    def cancel_external(self, target_id: str, reason: str | None) -> Any: ...
    def stream(self, value: Any) -> None: ...
    def mark_compensated(self, steps: int) -> None: ...
    def continue_as_new(self, args: tuple[Any, ...]) -> NoReturn: ...


class ChildHandle:
    """A started child workflow, as workflow code holds it: await its result or signal it."""

    def __init__(self, runtime: Runtime, child_id: str, result: Any) -> None:
        self._runtime = runtime
        self.id = child_id
        self._result = result

    def result(self) -> Any:
        return self._result

    def signal(self, name: str, *args: Any) -> Any:
        return self._runtime.signal_external(self.id, name, args)

    def __repr__(self) -> str:
        return f"ChildHandle({self.id!r})"


_local = threading.local()


def current() -> Runtime:
    """The runtime driving this thread's workflow code; a clear error anywhere else."""
    runtime = getattr(_local, "runtime", None)
    if runtime is None:
        raise RuntimeError("this call is only allowed inside workflow code (Workflow.execute and its handlers)")
    return runtime


def in_workflow() -> bool:
    return getattr(_local, "runtime", None) is not None


class driving:  # noqa: N801 - used as ``with driving(run):``
    """Make ``runtime`` the current one of this thread while workflow code executes (re-entrant).

    A class, not a generator context manager: it is entered at every step of every workflow.
    """

    __slots__ = ("runtime", "previous")

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def __enter__(self) -> None:
        self.previous = getattr(_local, "runtime", None)
        _local.runtime = self.runtime

    def __exit__(self, *exc: object) -> None:
        _local.runtime = self.previous
