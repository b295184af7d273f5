"""Avro single-object encoding of every record Metamorph writes to Kafka.

Each record is ``C3 01`` + the 8-byte CRC-64-AVRO fingerprint of the writer's schema + the Avro body, so a
reader can always find the schema the record was written with and resolve it against its own (schema
evolution: an event written by last year's node stays readable). The registry knows the current schema of
every top-level record and every older version frozen under ``schemas/history``; a fingerprint it does
not know is an error that names it, never a guess.
"""

from __future__ import annotations

import io
import json
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, load_schema, parse_schema, to_parsing_canonical_form

MARKER = b"\xc3\x01"
SCHEMA_DIR = Path(__file__).with_name("schemas")

#: The records written to topics; every other schema is a named type they reference.
TOP_LEVEL = (
    "metamorph.CommandEnvelope",
    "metamorph.EventEnvelope",
    "metamorph.ActivityTask",
    "metamorph.Reply",
    "metamorph.DeadLetter",
    "metamorph.ActivityCancel",
    "metamorph.WorkflowResult",
)


class DecodeError(ValueError):
    """Bytes that are not a Metamorph record: wrong marker, truncated or corrupt body."""


class UnknownSchemaError(DecodeError):
    """A well-formed single-object header whose fingerprint no known schema has."""

    def __init__(self, fingerprint_hex: str) -> None:
        super().__init__(
            f"unknown schema fingerprint {fingerprint_hex}: written by a newer or foreign producer "
            "(deploy code that knows this schema, or dead-letter the record)"
        )
        self.fingerprint = fingerprint_hex


def _record(schema: object) -> dict:
    """A parsed top-level schema, which is always a record here (fastavro types it as any schema)."""
    if not isinstance(schema, dict):
        raise TypeError(f"a top-level Metamorph schema must be an Avro record, not {type(schema).__name__}")
    return schema


def _fingerprint(schema: dict) -> bytes:
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


class SchemaRegistry:
    """Current and historic schemas of the top-level records, indexed by fingerprint."""

    def __init__(self, directory: Path = SCHEMA_DIR) -> None:
        self._current: dict[str, tuple[dict, bytes]] = {}
        self._by_fingerprint: dict[bytes, tuple[str, dict]] = {}
        for name in TOP_LEVEL:
            schema = _record(load_schema(str(directory / f"{name}.avsc")))
            fp = _fingerprint(schema)
            self._current[name] = (schema, fp)
            self._by_fingerprint[fp] = (name, schema)
        for path in sorted((directory / "history").glob("*.avsc")):
            schema = _record(parse_schema(json.loads(path.read_text())))
            self._by_fingerprint.setdefault(_fingerprint(schema), (schema["name"], schema))

    def schema(self, name: str) -> dict:
        """The current (reader) schema of a top-level record."""
        return self._current[name][0]

    def fingerprint(self, name: str) -> bytes:
        return self._current[name][1]

    def known_fingerprints(self) -> list[str]:
        return [fp.hex() for fp in self._by_fingerprint]

    def encode(self, name: str, record: dict, schema: dict | None = None) -> bytes:
        """Encode with the current schema (or an explicit older one, which tests of evolution use)."""
        if schema is None:
            schema, fp = self._current[name]
        else:
            schema = _record(parse_schema(schema))
            fp = _fingerprint(schema)
        buf = io.BytesIO()
        buf.write(MARKER)
        buf.write(fp)
        fastavro.schemaless_writer(buf, schema, record)
        return buf.getvalue()

    def decode(self, data: bytes, expect: str | None = None) -> tuple[str, dict]:
        """Return ``(record name, record)`` read with the current schema of the writer's record."""
        if not isinstance(data, bytes | bytearray | memoryview) or len(data) < 10:
            raise DecodeError(f"not a Metamorph record: {len(data) if data is not None else 0} bytes")
        if data[:2] != MARKER:
            raise DecodeError(f"not Avro single-object encoded: header {bytes(data[:2]).hex()} (want c301)")
        fp = bytes(data[2:10])
        try:
            name, writer = self._by_fingerprint[fp]
        except KeyError:
            raise UnknownSchemaError(fp.hex()) from None
        if expect is not None and name != expect:
            raise DecodeError(f"expected a {expect} record, got {name}")
        reader = self._current[name][0]
        try:
            record = fastavro.schemaless_reader(
                io.BytesIO(data[10:]), writer, reader, return_record_name=True
            )
        except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError... on corrupt bodies
            raise DecodeError(f"corrupt {name} body: {type(exc).__name__}: {exc}") from exc
        if not isinstance(record, dict):
            raise DecodeError(f"{name} body is not a record")
        return name, record


@cache
def registry() -> SchemaRegistry:
    """The process-wide registry; schemas are immutable, so one load serves every thread."""
    return SchemaRegistry()


def encode(name: str, record: dict) -> bytes:
    return registry().encode(name, record)


def decode(data: bytes, expect: str | None = None) -> dict[str, Any]:
    return registry().decode(data, expect)[1]
