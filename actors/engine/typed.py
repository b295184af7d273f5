"""Typed payloads: values annotated with dataclasses or Pydantic models come back as those types.

Payloads travel as JSON (``eventstore.payloads``), so a dataclass an activity returns arrives as a dict.
Where user code receives a value (activity and workflow arguments, signal/update/query arguments, the
result of ``workflow.activity`` / ``workflow.child``, ``handle.result()``) and the receiving function's
annotation asks for a richer type, the value is converted here, with pydantic's ``TypeAdapter`` (one
converter for dataclasses, Pydantic models, nested lists/dicts/Optionals of them, datetimes, UUIDs,
Decimals and enums; its errors carry the path of the field that failed).

Only annotations that need it are converted: plain ``str``/``int``/``dict``/``list[str]``/unannotated
parameters are passed through untouched, at no cost (the decision is computed once per function), so
existing code behaves exactly as before. Conversion is deterministic, so replay sees the same values.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import functools
import inspect
import typing
import uuid
from collections.abc import Callable
from typing import Any

_RICH = (_dt.datetime, _dt.date, _dt.time, _dt.timedelta, uuid.UUID, decimal.Decimal, enum.Enum)


class PayloadTypeError(TypeError):
    """A payload that does not fit the type its receiver declares; ``field`` is the path that failed."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def needs_conversion(tp: Any) -> bool:
    """Whether a JSON value must be converted to be an instance of annotation ``tp``."""
    if tp is None or tp is Any or isinstance(tp, str | typing.TypeVar):
        return False
    if isinstance(tp, type):
        if dataclasses.is_dataclass(tp) or issubclass(tp, _RICH) or _is_pydantic_model(tp):
            return True
        if tp in (tuple, set, frozenset):
            return True
        return False
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return needs_conversion(typing.get_args(tp)[0])
    if origin in (tuple, set, frozenset):
        return True
    return any(needs_conversion(arg) for arg in typing.get_args(tp) if arg is not Ellipsis)


def _is_pydantic_model(tp: type) -> bool:
    return any(base.__module__.startswith("pydantic") and base.__name__ == "BaseModel" for base in tp.__mro__)


@functools.cache
def _adapter(tp: Any) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(tp)


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """Resolved annotations (``from __future__ import annotations`` included); unresolvable ones are skipped."""
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:
        raw = getattr(fn, "__annotations__", {}) or {}
        return {k: v for k, v in raw.items() if not isinstance(v, str)}


@dataclasses.dataclass(frozen=True)
class _Plan:
    positional: tuple[tuple[str, Any], ...]  # (name, annotation or None) in order, *args excluded
    varargs: Any  # annotation of *args items, or None
    keywords: dict[str, Any]  # name -> annotation, for parameters that need conversion


@functools.cache
def _plan(fn: Callable[..., Any]) -> _Plan | None:
    """How to convert ``fn``'s arguments, or None when none of its parameters needs it (the common case)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    hints = _hints(fn)
    positional: list[tuple[str, Any]] = []
    varargs = None
    keywords: dict[str, Any] = {}
    any_typed = False
    for p in signature.parameters.values():
        tp = hints.get(p.name)
        typed = tp if tp is not None and needs_conversion(tp) else None
        any_typed = any_typed or typed is not None
        if p.kind is p.VAR_POSITIONAL:
            varargs = typed
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional.append((p.name, typed))
            if typed is not None:
                keywords[p.name] = typed
        elif p.kind is p.KEYWORD_ONLY and typed is not None:
            keywords[p.name] = typed
    return _Plan(tuple(positional), varargs, keywords) if any_typed else None


@functools.cache
def return_type(fn: Callable[..., Any]) -> Any:
    """``fn``'s return annotation if a JSON value must be converted to it, else None."""
    tp = _hints(fn).get("return")
    return tp if tp is not None and needs_conversion(tp) else None


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def convert(value: Any, tp: Any, what: str) -> Any:
    """``value`` as an instance of ``tp``; PayloadTypeError naming ``what`` and the field otherwise."""
    if tp is None:
        return value
    from pydantic import ValidationError

    try:
        return _adapter(tp).validate_python(value)
    except ValidationError as exc:
        errors = exc.errors()
        loc = ".".join(str(part) for part in errors[0]["loc"]) if errors else ""
        message = errors[0]["msg"] if errors else str(exc)
        where = f"field {loc!r}" if loc else "value"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise PayloadTypeError(f"{what}: {where}: {message}{more} (expected {_type_name(tp)})", loc or None) from None


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def convert_arguments(fn: Callable[..., Any], args: list[Any] | tuple[Any, ...], kwargs: dict[str, Any] | None = None,
                      skip: int = 0) -> tuple[list[Any], dict[str, Any]]:
    """Convert ``args``/``kwargs`` to the types ``fn`` declares; ``skip`` leading parameters are not in
    ``args`` (``self`` of a method called on its class). Untyped functions cost one cached lookup."""
    plan = _plan(fn)
    kwargs = kwargs or {}
    if plan is None:
        return list(args), kwargs
    positional = plan.positional[skip:]
    out = list(args)
    for i, value in enumerate(out):
        if i < len(positional):
            name, tp = positional[i]
        else:
            name, tp = f"*args[{i - len(positional)}]", plan.varargs
        if tp is not None:
            out[i] = convert(value, tp, f"{_name(fn)}: argument {name!r}")
    converted = dict(kwargs)
    for key, value in kwargs.items():
        tp = plan.keywords.get(key)
        if tp is not None:
            converted[key] = convert(value, tp, f"{_name(fn)}: argument {key!r}")
    return out, converted


def convert_call(method: Callable[..., Any], args: list[Any] | tuple[Any, ...]) -> list[Any]:
    """Convert a bound method's arguments (handlers): planned once per class function, not per instance."""
    fn = getattr(method, "__func__", None)
    if fn is None:
        return convert_arguments(method, args)[0]
    return convert_arguments(fn, args, skip=1)[0]
