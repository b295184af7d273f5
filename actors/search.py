"""Search attributes, memo, list filters and list cursors (docs/API.md §6, §7): the checks every surface shares.

The Client, the CLI, the HTTP API and workflow code (``workflow.upsert_search``) all go through these
functions, so a value of an unsupported type or an unknown operator fails the same way everywhere, at the
caller, with a ValueError naming the key, before anything is sent or read.

Search attributes are a flat JSON object of scalars, stored in an indexed JSONB column of the projections;
a ``datetime`` is accepted and stored as an ISO-8601 string in UTC, so attributes written that way compare
chronologically. The memo is any JSON object: stored and shown, never indexed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

#: Comparison operators of a search filter ``{"key": (op, value)}``.
OPERATORS = ("=", "!=", "<", "<=", ">", ">=", "in")
MAX_KEY = 100
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_CURSOR_VERSION = 1


def _key(key: Any) -> str:
    if not isinstance(key, str) or not _KEY.match(key) or len(key) > MAX_KEY:
        raise ValueError(
            f"search attribute name {key!r} is not valid: use letters, digits, '_', '.', '-' "
            f"(starting with a letter or '_'), at most {MAX_KEY} characters"
        )
    return key


def _scalar(key: str, value: Any) -> str | int | float | bool:
    """A search value as stored: str, int, float or bool; a datetime becomes an ISO string in UTC."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"search attribute {key!r}: a datetime must be timezone-aware")
        return value.astimezone(UTC).isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"search attribute {key!r}: {value!r} is not a finite number")
    if isinstance(value, str | bool | int | float):
        return value
    raise ValueError(
        f"search attribute {key!r} has a value of type {type(value).__name__}; "
        "expected str, int, float, bool or an ISO datetime string"
    )


def check_search(attrs: Mapping[str, Any] | None, *, removals: bool = False) -> dict[str, Any]:
    """Validated, normalised search attributes; ``removals`` lets a None value mean "remove this key"."""
    if attrs is None:
        return {}
    if not isinstance(attrs, Mapping):
        raise ValueError(f"search must be a dict of attribute name to value, not {type(attrs).__name__}")
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        _key(key)
        out[key] = None if value is None and removals else _scalar(key, value)
    return out


def check_memo(memo: Mapping[str, Any] | None) -> dict[str, Any]:
    """A memo is any JSON object; refused here (ValueError) if it would not survive a JSON round trip."""
    if memo is None:
        return {}
    if not isinstance(memo, Mapping) or not all(isinstance(k, str) for k in memo):
        raise ValueError("memo must be a dict with string keys")
    try:
        json.dumps(memo, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"memo is not JSON: {exc}") from None
    return dict(memo)


def dumps(value: dict[str, Any]) -> str | None:
    """The JSON text an event carries (None for nothing to record)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")) if value else None


def parse_filters(search: Mapping[str, Any] | None) -> list[tuple[str, str, Any]]:
    """``{"customer": "c-7", "amount": (">", 100), "tier": ("in", ["a", "b"])}`` as ``(key, op, value)``.

    A bare value means ``=``; a 2-tuple/list whose first item is an operator compares. Unknown operators
    and values of unsupported types raise ValueError naming the key.
    """
    if search is None:
        return []
    if not isinstance(search, Mapping):
        raise ValueError(f"search filter must be a dict, not {type(search).__name__}")
    out: list[tuple[str, str, Any]] = []
    for key, spec in search.items():
        _key(key)
        if isinstance(spec, tuple | list):
            if len(spec) != 2 or not isinstance(spec[0], str):
                raise ValueError(f"search filter {key!r}: expected (operator, value), got {spec!r}")
            op, value = spec[0].strip().lower(), spec[1]
            if op == "==":
                op = "="
            if op not in OPERATORS:
                raise ValueError(f"search filter {key!r}: unknown operator {spec[0]!r}; expected one of {', '.join(OPERATORS)}")
        else:
            op, value = "=", spec
        if op == "in":
            if isinstance(value, str | bytes) or not isinstance(value, list | tuple | set | frozenset) or not value:
                raise ValueError(f"search filter {key!r}: 'in' needs a non-empty list of values")
            value = [_scalar(key, v) for v in value]
        else:
            value = _scalar(key, value)
            if op in ("<", "<=", ">", ">=") and isinstance(value, bool):
                raise ValueError(f"search filter {key!r}: {op} does not compare booleans")
        out.append((key, op, value))
    return out


_TEXT_FILTER = re.compile(r"^\s*(?P<key>[^\s!<>=]+?)\s*(?P<op>!=|<=|>=|==|=|<|>|\s+in\s+)\s*(?P<value>.*?)\s*$", re.S)


def parse_filter_text(text: str) -> tuple[str, tuple[str, Any]]:
    """One CLI/HTTP filter: ``customer=c-7``, ``amount>100``, ``tier in ["a","b"]`` (or ``a,b``).

    The value is read as JSON when it parses (so ``amount=250`` is a number, ``vip=true`` a boolean) and
    as a plain string otherwise.
    """
    match = _TEXT_FILTER.match(text)
    if not match:
        raise ValueError(f"search filter {text!r}: expected KEY OP VALUE with OP one of {', '.join(OPERATORS)}")
    key, op, raw = match["key"], match["op"].strip(), match["value"]
    if op == "in":
        try:
            values = json.loads(raw)
        except ValueError:
            values = None
        if not isinstance(values, list):
            values = [_text_value(v.strip()) for v in raw.split(",") if v.strip()]
        return key, ("in", values)
    return key, (op, _text_value(raw))


def _text_value(raw: str) -> Any:
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if isinstance(value, str | int | float | bool) else raw


def filters_from_text(items: list[str] | None) -> dict[str, Any] | None:
    """Repeated ``--search`` options (or ``search=`` query parameters) as a ``client.list`` search dict."""
    if not items:
        return None
    out: dict[str, Any] = {}
    for item in items:
        key, spec = parse_filter_text(item)
        if key in out:
            raise ValueError(f"search filter {key!r} given twice")
        out[key] = spec
    return out


# -- cursors ---------------------------------------------------------------------------------------------
def _digest(payload: dict, scope: Any) -> str:
    text = json.dumps([payload, scope], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_cursor(created_at: datetime | str, workflow_id: str, scope: Any) -> str:
    """An opaque cursor: the last row's (created_at, id), bound to the filters of the query it pages.

    The digest makes a cursor that was edited, or reused with other filters, a ValueError instead of a
    silently different page; it is a checksum, not a secret (the position it holds is not sensitive).
    """
    at = created_at.isoformat() if isinstance(created_at, datetime) else str(created_at)
    payload = {"v": _CURSOR_VERSION, "t": at, "i": workflow_id}
    payload["d"] = _digest(payload, scope)
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, scope: Any) -> tuple[datetime, str]:
    """The (created_at, id) position of a cursor from :func:`encode_cursor`; ValueError for anything else."""
    bad = ValueError("invalid cursor: pass the next_cursor of a previous page of the same query")
    if not isinstance(cursor, str) or not cursor or len(cursor) > 1000:
        raise bad
    try:
        payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad from None
    if not isinstance(payload, dict) or set(payload) != {"v", "t", "i", "d"} or payload["v"] != _CURSOR_VERSION:
        raise bad
    if not isinstance(payload["t"], str) or not isinstance(payload["i"], str) or not isinstance(payload["d"], str):
        raise bad
    digest = payload.pop("d")
    if digest != _digest(payload, scope):
        raise bad
    try:
        at = datetime.fromisoformat(payload["t"])
    except ValueError:
        raise bad from None
    if at.tzinfo is None:
        raise bad
    return at, payload["i"]


def fold(history: list[dict]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run's current (search attributes, memo), from its WorkflowStarted and AttributesUpserted events,
    merged as the projector merges them (a None attribute removes the key)."""
    search: dict[str, Any] = {}
    memo: dict[str, Any] = {}
    for event in history:
        if event.get("type") in ("WorkflowStarted", "AttributesUpserted"):
            search.update(json.loads(event["search"]) if event.get("search") else {})
            memo.update(json.loads(event["memo"]) if event.get("memo") else {})
    return {k: v for k, v in search.items() if v is not None}, memo
