"""What users declare: activities, workflows and their handlers, and the registry that finds them by name.

Workflows and activities are registered when their module is imported (decorating or subclassing is
registering), so ``metamorph node --app myapp`` needs nothing but the import.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, TypeVar

from actors.engine import runtime

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_BACKOFF = (1, 2, 5, 10, 15, 30, 60, 120)


@dataclasses.dataclass(frozen=True)
class ActivityOptions:
    """Per-call overrides of an activity's decorator options (None = keep the decorator's)."""

    queue: str | None = None
    tries: int | None = None
    backoff: tuple[float, ...] | None = None
    timeout: float | timedelta | None = None
    heartbeat_timeout: float | timedelta | None = None
    non_retryable: tuple[type[BaseException] | str, ...] | None = None
    #: Tasks with the same key never run at the same time anywhere, and run in the order they were
    #: scheduled (docs/API.md §9): the key is the task's Kafka key, so one partition owner serialises it.
    key: str | None = None
    #: 0 (first) .. 9 among tasks waiting in a worker; None = the workflow's priority (default 5).
    priority: int | None = None

    def __post_init__(self) -> None:
        if self.key is not None and (not isinstance(self.key, str) or not self.key):
            raise ValueError("key must be a non-empty string")
        check_priority(self.priority)


def check_priority(priority: int | None) -> None:
    """Priorities are 0 (highest) .. 9; anything else is a caller's mistake, refused where it is made."""
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9):
        raise ValueError(f"priority must be an integer 0 (highest) .. 9, not {priority!r}")


@dataclasses.dataclass(frozen=True)
class ActivityDefinition:
    name: str
    fn: Callable[..., Any]
    queue: str = "default"
    tries: int = 0
    backoff: tuple[float, ...] = DEFAULT_BACKOFF
    timeout: float | None = None
    heartbeat_timeout: float | None = None
    non_retryable: tuple[str, ...] = ()
    key: str | None = None
    priority: int | None = None

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    def with_options(self, options: ActivityOptions | None) -> ActivityDefinition:
        if options is None:
            return self
        changes = {k: v for k, v in dataclasses.asdict(options).items() if v is not None}
        for key in ("timeout", "heartbeat_timeout"):
            if key in changes:
                changes[key] = seconds(changes[key])
        if "non_retryable" in changes:
            changes["non_retryable"] = _error_names(changes["non_retryable"])
        if "backoff" in changes:
            changes["backoff"] = tuple(changes["backoff"])
        return dataclasses.replace(self, **changes)


def seconds(value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def _error_names(classes: tuple[type[BaseException] | str, ...]) -> tuple[str, ...]:
    return tuple(c if isinstance(c, str) else c.__name__ for c in classes)


_activities: dict[str, ActivityDefinition] = {}
_queues: dict[str, QueueLimits] = {}

_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclasses.dataclass(frozen=True)
class QueueLimits:
    """Cluster-wide limits of one activity queue (docs/API.md §9), split among its workers by partition."""

    name: str
    concurrency: int | None = None
    #: At most ``rate`` task starts in any window of ``per`` seconds.
    rate: int | None = None
    per: float = 1.0

    def routed_partitions(self, partitions: int) -> int:
        """How many of the queue's partitions carry its tasks: every partition that carries tasks must get
        at least one unit of each limit, so a limit smaller than the partition count narrows the routing
        (``queue("x", concurrency=1)`` puts every task on partition 0, and one worker runs them)."""
        return max(1, min(partitions, *(n for n in (self.concurrency, self.rate) if n is not None)))


def share(limit: int, owned: Iterable[int], routed: int) -> int:
    """A worker's share of ``limit`` for the partitions it owns out of the ``routed`` ones.

    Partition p gets ``limit // routed``, plus one if ``p < limit % routed`` (the remainder goes to the
    lowest partitions), so the shares of all partitions add up to exactly ``limit`` whatever the
    assignment, and every routed partition gets at least one (``routed <= limit``).
    """
    base, rest = divmod(limit, routed)
    return sum(base + (1 if p < rest else 0) for p in set(owned) if 0 <= p < routed)


def parse_rate(rate: str) -> tuple[int, float]:
    """``"N/s"``, ``"N/m"``, ``"N/h"`` -> (N, window seconds); ValueError for anything else."""
    count, sep, unit = rate.strip().partition("/") if isinstance(rate, str) else ("", "", "")
    if not sep or unit not in _RATE_UNITS or not count.isdigit() or int(count) <= 0:
        raise ValueError(f"rate_limit must look like '20/s', '60/m' or '1000/h' with a count above 0, not {rate!r}")
    return int(count), _RATE_UNITS[unit]


def queue(name: str, concurrency: int | None = None, rate_limit: str | None = None) -> QueueLimits:
    """Declare limits for the activity queue ``name`` that hold across all its workers together.

    Declared in the app module that every node and worker imports, so each process knows them without a
    coordination service; each worker takes the share of the partitions it owns (``share``).
    """
    if not isinstance(name, str) or not name:
        raise ValueError("queue name must be a non-empty string")
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1):
        raise ValueError(f"concurrency must be an integer of at least 1, not {concurrency!r}")
    rate, per = parse_rate(rate_limit) if rate_limit is not None else (None, 1.0)
    limits = QueueLimits(name, concurrency, rate, per)
    _queues[name] = limits
    return limits


def queue_limits(name: str) -> QueueLimits | None:
    """The limits declared for queue ``name`` (None: unlimited, the per-process concurrency only)."""
    limits = _queues.get(name)
    return limits if limits is not None and (limits.concurrency or limits.rate) else None
_workflows: dict[str, type[Workflow]] = {}


def activity(
    fn: F | None = None,
    *,
    name: str | None = None,
    queue: str = "default",
    tries: int = 0,
    backoff: tuple[float, ...] | list[float] = DEFAULT_BACKOFF,
    timeout: float | timedelta | None = None,
    heartbeat_timeout: float | timedelta | None = None,
    non_retryable: tuple[type[BaseException] | str, ...] = (),
) -> Any:
    """Declare an activity: the one place where a workflow may touch the outside world."""

    def register(f: F) -> F:
        if tries < 0:
            raise ValueError("tries must be >= 0 (0 retries forever)")
        if not backoff:
            raise ValueError("backoff needs at least one delay")
        definition = ActivityDefinition(
            name=name or f"{f.__module__}.{f.__qualname__}",
            fn=f,
            queue=queue,
            tries=tries,
            backoff=tuple(float(b) for b in backoff),
            timeout=seconds(timeout),
            heartbeat_timeout=seconds(heartbeat_timeout),
            non_retryable=_error_names(tuple(non_retryable)),
        )
        _activities[definition.name] = definition
        f.__metamorph_activity__ = definition  # type: ignore[attr-defined]
        return f

    return register(fn) if fn is not None else register


def activity_definition(ref: Callable[..., Any] | str) -> ActivityDefinition | None:
    if isinstance(ref, str):
        return _activities.get(ref)
    return getattr(ref, "__metamorph_activity__", None)


def activity_name(ref: Callable[..., Any] | str) -> str:
    if isinstance(ref, str):
        return ref
    definition = activity_definition(ref)
    if definition is None:
        raise TypeError(f"{ref!r} is not an @activity (decorate it, or pass the activity's registered name)")
    return definition.name


def activities() -> dict[str, ActivityDefinition]:
    return dict(_activities)


def _handler(kind: str) -> Callable[[F], F]:
    def mark(fn: F | None = None, *, name: str | None = None) -> Any:
        def apply(f: F) -> F:
            f.__metamorph_handler__ = (kind, name or f.__name__)  # type: ignore[attr-defined]
            return f

        return apply(fn) if fn is not None else apply

    return mark  # type: ignore[return-value]


signal = _handler("signal")
query = _handler("query")
update = _handler("update")


class Workflow:
    """Base class of workflows: subclass it and write ``async def execute(self, *args)``."""

    #: The type name (docs/API.md §2); ``__init_subclass__`` sets it on every subclass that leaves it unset, so a
    #: workflow class always has one (only this base class has None).
    name: str = None  # type: ignore[assignment]
    queue: str | None = None
    parallel_compensation: bool = False
    continue_with_error: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__ or cls.__dict__["name"] is None:
            cls.name = f"{cls.__module__}.{cls.__qualname__}"
        handlers: dict[str, dict[str, str]] = {"signal": {}, "query": {}, "update": {}}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                marked = getattr(value, "__metamorph_handler__", None)
                if marked:
                    handlers[marked[0]][marked[1]] = attr
        cls.__metamorph_handlers__ = handlers  # type: ignore[attr-defined]
        if inspect.iscoroutinefunction(cls.__dict__.get("execute")):
            _workflows[cls.name] = cls

    async def execute(self, *args: Any) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- sagas -------------------------------------------------------------------------------------
    def add_compensation(self, fn: Callable[[], Any]) -> None:
        """Remember how to undo a step; ``compensate()`` runs the undos in reverse order."""
        self.__dict__.setdefault("_compensations", []).append(fn)

    async def compensate(self) -> None:
        steps = list(reversed(self.__dict__.get("_compensations", [])))
        self.__dict__["_compensations"] = []
        if steps and runtime.in_workflow():
            # Recorded (SagaCompensated): a retry of this run would redo steps that were undone, so
            # ``retry`` refuses without ``force`` (docs/API.md §7).
            runtime.current().mark_compensated(len(steps))
        if self.parallel_compensation:
            results = await runtime.current().all([_call(step) for step in steps], self.continue_with_error)
            return None if results is None else None
        for step in steps:
            try:
                await _call(step)
            except Exception:
                if not self.continue_with_error:
                    raise


async def _call(step: Callable[[], Any]) -> Any:
    result = step()
    if inspect.isawaitable(result):
        return await result
    return result


def workflow_class(ref: type | str) -> type[Workflow]:
    if isinstance(ref, str):
        try:
            return _workflows[ref]
        except KeyError:
            raise LookupError(f"unknown workflow type {ref!r}") from None
    if not (isinstance(ref, type) and issubclass(ref, Workflow)):
        raise TypeError(f"{ref!r} is not a Workflow subclass or a workflow type name")
    return ref


def workflow_type_name(ref: type | str) -> str:
    if isinstance(ref, str):
        return ref
    if isinstance(ref, type) and issubclass(ref, Workflow):
        return ref.name
    raise TypeError(f"{ref!r} is not a Workflow subclass or a workflow type name")


def workflows() -> dict[str, type[Workflow]]:
    return dict(_workflows)


def handler_for(cls: type, kind: str, name: str) -> str | None:
    return cls.__metamorph_handlers__[kind].get(name)  # type: ignore[attr-defined]


@functools.cache
def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(fn)


def check_arguments(fn: Callable[..., Any], args: list[Any] | tuple[Any, ...], kwargs: dict | None = None) -> None:
    """Raise TypeError naming the function when ``args`` cannot be bound to it."""
    try:
        _signature(fn).bind(*args, **(kwargs or {}))
    except TypeError as exc:
        raise TypeError(f"{getattr(fn, '__qualname__', fn)}: {exc}") from None
