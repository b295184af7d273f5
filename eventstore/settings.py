"""Every ``METAMORPH_*`` environment variable, declared and read in one place.

Why one place: configuration that is read wherever it happens to be needed cannot be listed, is parsed
differently in each spot (a typo silently becomes the default in one, a crash in another) and is easily
read at import, before a test or a CLI flag could set it. Here each variable has one parser, one default
and one sentence of meaning; ``get`` reads the environment at call time; a bad value is a ValueError
that names the variable; ``tests/test_settings.py`` checks that no other module reads ``METAMORPH_*``
itself and that the README documents every variable. ``eventstore`` holds it because every package
imports ``eventstore`` and it knows nothing of what the values are for.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _text(raw: str) -> str:
    return raw


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _number(raw: str) -> float:
    return float(raw)


def _whole(raw: str) -> int:
    return int(raw)


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    meaning: str
    parse: Callable[[str], Any] = _text


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("METAMORPH_KAFKA", "127.0.0.1:9092", "Kafka bootstrap servers of every process and client"),
        Setting("METAMORPH_POSTGRES", None, "PostgreSQL URL of the projections (reads, projector)"),
        Setting("METAMORPH_NAMESPACE", "default", "namespace: prefix of the topics and the projection schema"),
        Setting("METAMORPH_SESSION_TIMEOUT", 10.0, "consumer-group session timeout in seconds (failover time)", _number),
        Setting("METAMORPH_MAX_PAYLOAD", 2 * 1024 * 1024, "largest user payload in bytes (args, results, items)", _whole),
        Setting("METAMORPH_MAX_PAYLOAD_DEPTH", 100, "deepest JSON nesting a payload may have", _whole),
        Setting("METAMORPH_MAX_HELD_TASKS", 10_000, "activity tasks a worker holds while they wait for a slot", _whole),
        Setting("METAMORPH_FETCH_WAIT_MS", 100, "broker-side hold of an empty fetch (fetch.max.wait.ms): short, as not every"
                " broker answers a held fetch as soon as data arrives",
                _whole),
        Setting("METAMORPH_FETCH_HOLD_MS", 2.0, "client-side hold of an empty fetch, latency-path consumers", _number),
        Setting("METAMORPH_BACKGROUND_FETCH_HOLD_MS", 25.0, "client-side hold of an empty fetch, background readers",
                _number),
        Setting("METAMORPH_ENCRYPTION_KEYS", "", "payload keys 'id:BASE64,...' (the first is active)"),
        Setting("METAMORPH_TRACING", False, "1 to emit OpenTelemetry spans (extra 'otel')", _flag),
        Setting("METAMORPH_METRICS_ADDR", "127.0.0.1", "address the Prometheus metrics endpoint binds"),
        Setting("METAMORPH_API_TOKENS", None, "HTTP API bearer tokens 'name:token,ro:name:token'"),
        Setting("METAMORPH_HTTP_MAX_BODY", 1024 * 1024, "largest HTTP request body in bytes", _whole),
        Setting("METAMORPH_WEBHOOK_AUTH", "", "webhook authentication: token, signature or none"),
        Setting("METAMORPH_WEBHOOK_TOKEN", None, "webhook bearer token"),
        Setting("METAMORPH_WEBHOOK_SECRET", None, "webhook HMAC secret"),
        Setting("METAMORPH_WEBHOOK_TOLERANCE", 300, "seconds a signed webhook's timestamp may be off", _whole),
        Setting("METAMORPH_DEBUG", False, "1: the CLI prints tracebacks", _flag),
    )
}


def is_set(name: str) -> bool:
    """Whether the variable is set to something (for callers where "unset" means "do something else")."""
    SETTINGS[name]
    return bool(os.environ.get(name, "").strip())


def get(name: str, default: Any = None) -> Any:
    """The variable's value now (parsed), or its default when unset or empty (``default`` overrides the
    declared one, for callers whose default depends on something else)."""
    setting = SETTINGS[name]  # KeyError: an undeclared variable is a bug here, not a user's typo
    raw = os.environ.get(name, "").strip()
    if not raw:
        return setting.default if default is None else default
    try:
        return setting.parse(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not valid: {exc}") from None
