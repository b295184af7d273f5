"""User payloads (arguments, results, signal arguments) travel as bytes inside Avro records.

JSON is the default because it is what users can read in the history and the HTTP API; a team with other
needs (dataclasses, pydantic, encryption) installs its own converter once per process.

Payloads come from anyone who can write to Kafka, so the JSON converter checks size and nesting depth
*before* it parses (the C parser recurses: JSON nested ~1,000 deep raises RecursionError, which is not an
error any caller expects, and deeper still can exhaust a node thread's small stack). It also refuses
strings with lone surrogates (``"\\udcff"``): Python accepts them, PostgreSQL's jsonb does not, so they would
be accepted at the start and dead-lettered by the projector later, leaving the workflow invisible.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import json
import re
import uuid
from typing import Any, Protocol

from eventstore import settings

#: Largest encoded payload accepted (``METAMORPH_MAX_PAYLOAD``, bytes); docs/API.md section 11.
DEFAULT_MAX_PAYLOAD = 2 * 1024 * 1024
#: Largest encoded record we hand to Kafka. A record carries up to three user payloads (a start with its
#: arguments, a start signal's and a start update's) of up to ``METAMORPH_MAX_PAYLOAD`` (2 MiB) each plus
#: its metadata, so that every payload under the limit fits in a record: the payload limit is the one users
#: meet, the same everywhere, and this one only guards against a bug. Topics are created with
#: ``max.message.bytes`` set to it (``eventstore.topics``), above the brokers' 1 MiB default.
MAX_RECORD_BYTES = 3 * DEFAULT_MAX_PAYLOAD + 64 * 1024
#: Deepest nesting of arrays/objects accepted (``METAMORPH_MAX_PAYLOAD_DEPTH``), far below the recursion
#: limit.
DEFAULT_MAX_DEPTH = 100


class PayloadConverter(Protocol):
    def encode(self, value: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


class PayloadError(ValueError):
    """A value the converter cannot encode (or bytes it cannot decode)."""


class PayloadTooLargeError(PayloadError):
    """An encoded payload (or record) above its size limit: refused before it travels, naming the size."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} is {size} bytes encoded; the limit is {limit} bytes")
        self.size = size
        self.limit = limit


def max_payload() -> int:
    """The payload size limit in bytes (``METAMORPH_MAX_PAYLOAD``, default 2 MiB)."""
    return _env_int("METAMORPH_MAX_PAYLOAD", DEFAULT_MAX_PAYLOAD)


def max_depth() -> int:
    """The nesting depth limit (``METAMORPH_MAX_PAYLOAD_DEPTH``, default 100)."""
    return _env_int("METAMORPH_MAX_PAYLOAD_DEPTH", DEFAULT_MAX_DEPTH)


def _env_int(name: str, default: int) -> int:
    return int(settings.get(name, default))


class JsonConverter:
    """Compact JSON; tuples come back as lists, as with every JSON round trip.

    Both directions enforce the same limits (size, depth, no lone surrogates), so what a client can send
    is exactly what a node can read and PostgreSQL can store.
    """

    def encode(self, value: Any) -> bytes:
        try:
            text = json.dumps(value, separators=(",", ":"), default=_default)
        except RecursionError:
            raise PayloadError(f"cannot encode {type(value).__name__} as JSON: nested too deep") from None
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"cannot encode {type(value).__name__} as JSON: {exc}") from exc
        data = text.encode()
        _check_depth(data)
        if _MAYBE_SURROGATE.search(data):
            _check_surrogates(value)
        return data

    def decode(self, data: bytes) -> Any:
        if not data:
            return None
        if len(data) > max_payload():
            raise PayloadTooLargeError("payload", len(data), max_payload())
        _check_depth(data)
        try:
            value = json.loads(data)
        except ValueError as exc:
            raise PayloadError(f"payload is not JSON: {exc}") from exc
        if _MAYBE_SURROGATE.search(data):
            _check_surrogates(value)
        return value


#: Tokens that matter for nesting: an escape (skips the escaped character), a quote, a bracket.
_TOKENS = re.compile(rb'\\.|["\[\]{}]', re.DOTALL)
#: A JSON escape of a UTF-16 surrogate; only then can a decoded string hold a lone one.
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def _check_depth(data: bytes) -> None:
    """Refuse JSON text nested deeper than :func:`max_depth`, without parsing it (linear, no recursion)."""
    limit = max_depth()
    if data.count(b"[") + data.count(b"{") <= limit:
        return  # cannot be deeper than the number of openers: the common case costs two C scans
    depth, in_string = 0, False
    for match in _TOKENS.finditer(data):
        token = match.group()
        if token == b'"':
            in_string = not in_string
        elif in_string or token[0:1] == b"\\":
            continue
        elif token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                raise PayloadError(f"payload is nested more than {limit} deep (METAMORPH_MAX_PAYLOAD_DEPTH)")
        else:
            depth -= 1


def _check_surrogates(value: Any) -> None:
    """Refuse strings holding a lone UTF-16 surrogate (not valid Unicode; PostgreSQL rejects them)."""
    try:
        json.dumps(value, ensure_ascii=False, default=_default).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode()
        raise PayloadError(f"payload contains a lone surrogate ({bad}): not valid Unicode, refused") from None


def _default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(value)
    if hasattr(value, "model_dump"):  # a Pydantic model: its own JSON form (nested datetimes, UUIDs...)
        return value.model_dump(mode="json")
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, set | frozenset):
        return list(value)
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_converter: PayloadConverter = JsonConverter()


def set_converter(converter: PayloadConverter) -> None:
    """Install a converter for this process (every node, worker and client must agree)."""
    global _converter
    _converter = converter


def converter() -> PayloadConverter:
    return _converter


class PayloadCodec(Protocol):
    """Bytes to bytes around the converter (encryption): ``encode`` after it, ``decode`` before it."""

    def encode(self, data: bytes) -> bytes: ...

    def decode(self, data: bytes) -> bytes: ...


#: First bytes of an encrypted payload (eventstore.encryption); no JSON text starts with a NUL byte.
ENCRYPTED_MAGIC = b"\x00MMC"
_UNSET: Any = object()
#: The process's codec; _UNSET until first use, when ``METAMORPH_ENCRYPTION_KEYS`` is read (once, lazily:
#: importing this module has no side effects and a bad key fails where a payload is first handled).
_codec: Any = _UNSET


def set_codec(codec: PayloadCodec | None) -> None:
    """Install a codec for this process (None: none, whatever the environment says)."""
    global _codec
    _codec = codec


def reset_codec() -> None:
    """Forget the installed codec: the next payload reads ``METAMORPH_ENCRYPTION_KEYS`` again."""
    global _codec
    _codec = _UNSET


def codec() -> PayloadCodec | None:
    """The installed codec, from ``METAMORPH_ENCRYPTION_KEYS`` unless ``set_codec`` said otherwise."""
    global _codec
    if _codec is _UNSET:
        from .encryption import from_env

        _codec = from_env()
    return _codec


def is_encrypted(data: bytes | bytearray | memoryview | None) -> bool:
    """Whether payload bytes were written by the encryption codec (they start with its header)."""
    return data is not None and bytes(data[: len(ENCRYPTED_MAGIC)]) == ENCRYPTED_MAGIC


def encode(value: Any) -> bytes:
    data = _converter.encode(value)
    installed = codec()
    return data if installed is None else installed.encode(data)


def decode(data: bytes) -> Any:
    """The value of a payload; encrypted ones are decrypted first (EncryptedPayloadError without the key)."""
    if is_encrypted(data):
        installed = codec()
        if installed is None:
            from .encryption import EncryptedPayloadError, key_id_of

            key_id = key_id_of(bytes(data))
            raise EncryptedPayloadError(
                f"payload is encrypted (key id {key_id!r}) and this process has no codec "
                "(METAMORPH_ENCRYPTION_KEYS)", key_id)
        data = installed.decode(bytes(data))
    return _converter.decode(data)
