"""User payloads (arguments, results, signal arguments) travel as bytes inside Avro records.

JSON is the default because it is what users can read in the history and the HTTP API; a team with other
needs (dataclasses, pydantic, encryption) installs its own converter once per process.
"""

from __future__ import annotations

import json
from typing import Any, Protocol


class PayloadConverter(Protocol):
    def encode(self, value: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


class PayloadError(ValueError):
    """A value the converter cannot encode (or bytes it cannot decode)."""


class JsonConverter:
    """Compact JSON; tuples come back as lists, as with every JSON round trip."""

    def encode(self, value: Any) -> bytes:
        try:
            return json.dumps(value, separators=(",", ":"), default=_default).encode()
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"cannot encode {type(value).__name__} as JSON: {exc}") from exc

    def decode(self, data: bytes) -> Any:
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            raise PayloadError(f"payload is not JSON: {exc}") from exc


def _default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(value)
    if hasattr(value, "model_dump"):
        return value.model_dump()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_converter: PayloadConverter = JsonConverter()


def set_converter(converter: PayloadConverter) -> None:
    """Install a converter for this process (every node, worker and client must agree)."""
    global _converter
    _converter = converter


def converter() -> PayloadConverter:
    return _converter


def encode(value: Any) -> bytes:
    return _converter.encode(value)


def decode(data: bytes) -> Any:
    return _converter.decode(data)
