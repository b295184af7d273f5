"""What users declare: activities, workflows and their handlers, and the registry that finds them by name.

Workflows and activities are registered when their module is imported (decorating or subclassing is
registering), so ``metamorph node --app myapp`` needs nothing but the import.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

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
_workflows: dict[str, type] = {}


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

    name: str | None = None
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
        from . import workflow as wf

        steps = list(reversed(self.__dict__.get("_compensations", [])))
        self.__dict__["_compensations"] = []
        if self.parallel_compensation:
            results = await wf.all([_call(step) for step in steps], return_exceptions=self.continue_with_error)
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


def workflow_class(ref: type | str) -> type:
    if isinstance(ref, str):
        try:
            return _workflows[ref]
        except KeyError:
            raise LookupError(f"unknown workflow type {ref!r}") from None
    return ref


def workflow_type_name(ref: type | str) -> str:
    if isinstance(ref, str):
        return ref
    if isinstance(ref, type) and issubclass(ref, Workflow):
        return ref.name  # type: ignore[return-value]
    raise TypeError(f"{ref!r} is not a Workflow subclass or a workflow type name")


def workflows() -> dict[str, type]:
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
