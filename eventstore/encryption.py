"""Payload encryption at rest: AES-256-GCM over the converter's bytes, with the key id in every payload.

Payloads (arguments, results, signal/update arguments, activity inputs/results) are user data and sit in
Kafka and PostgreSQL for as long as the history is kept, so a team that must not store them in clear
installs an :class:`EncryptionCodec`. Each encrypted payload carries a small header::

    b"\\x00MMC" | version (1 byte) | key id length (1 byte) | key id (UTF-8) | nonce (12 bytes) | ciphertext+tag

The header starts with a NUL byte, which no JSON text starts with, so encrypted and plain payloads (old
data, written before the codec was installed) are told apart without ambiguity. The header is the GCM
associated data, so a payload whose key id was swapped fails authentication instead of decrypting under
another key. The key id lets keys rotate: new payloads use the active key, older ones name the key they
were written with and stay readable while that key is still listed.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from eventstore import settings

from .payloads import ENCRYPTED_MAGIC as MAGIC
from .payloads import PayloadError

VERSION = 1
NONCE_SIZE = 12
KEY_SIZE = 32
#: What a reader without the key shows in place of an encrypted payload (docs/API.md section 11).
ENCRYPTED = "<encrypted>"
ENV = "METAMORPH_ENCRYPTION_KEYS"


class EncryptedPayloadError(PayloadError):
    """An encrypted payload this process cannot decrypt: no codec installed, or an unknown key id."""

    def __init__(self, message: str, key_id: str | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id


def is_encrypted(data: bytes | bytearray | memoryview | None) -> bool:
    return data is not None and bytes(data[: len(MAGIC)]) == MAGIC


def key_id_of(data: bytes) -> str:
    """The key id an encrypted payload was written with (PayloadError if the header is malformed)."""
    return _split(data)[1]


def _split(data: bytes) -> tuple[bytes, str, bytes, bytes]:
    """(associated data, key id, nonce, ciphertext) of an encrypted payload."""
    if len(data) < len(MAGIC) + 2 or not is_encrypted(data):
        raise PayloadError("not an encrypted payload")
    version, size = struct.unpack_from("BB", data, len(MAGIC))
    if version != VERSION:
        raise PayloadError(f"encrypted payload has unknown format version {version}")
    start = len(MAGIC) + 2
    end = start + size
    if len(data) < end + NONCE_SIZE + 16:
        raise PayloadError("encrypted payload is truncated")
    try:
        key_id = data[start:end].decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("encrypted payload has a malformed key id") from None
    return data[:end], key_id, data[end : end + NONCE_SIZE], data[end + NONCE_SIZE :]


class EncryptionCodec:
    """AES-256-GCM with a random 96-bit nonce per payload; ``keys`` maps key id -> 32-byte key.

    ``active`` encrypts new payloads; every listed key decrypts, so rotating is: add the new key as
    active, keep the old one listed for as long as data written with it must stay readable.
    """

    def __init__(self, keys: dict[str, bytes], active: str) -> None:
        if not keys:
            raise ValueError("EncryptionCodec needs at least one key")
        if active not in keys:
            raise ValueError(f"active key id {active!r} is not among the keys {sorted(keys)}")
        self._keys: dict[str, AESGCM] = {}
        for key_id, key in keys.items():
            _check_key_id(key_id)
            if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
                size = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
                raise ValueError(f"key {key_id!r} is {size} bytes; AES-256-GCM needs exactly {KEY_SIZE}")
            self._keys[key_id] = AESGCM(bytes(key))
        self.active = active
        kid = active.encode("utf-8")
        self._header = MAGIC + struct.pack("BB", VERSION, len(kid)) + kid

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    def encode(self, data: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return self._header + nonce + self._keys[self.active].encrypt(nonce, bytes(data), self._header)

    def decode(self, data: bytes) -> bytes:
        """Plain bytes of an encrypted payload; bytes without the header are returned as they are."""
        data = bytes(data)
        if not is_encrypted(data):
            return data
        aad, key_id, nonce, ciphertext = _split(data)
        aead = self._keys.get(key_id)
        if aead is None:
            raise EncryptedPayloadError(
                f"payload is encrypted with key id {key_id!r}, which is not among this process's keys "
                f"{sorted(self._keys)} ({ENV})", key_id)
        try:
            return aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise PayloadError(
                f"encrypted payload (key id {key_id!r}) failed authentication: tampered with or corrupted"
            ) from None


def _check_key_id(key_id: str) -> None:
    if not isinstance(key_id, str) or not key_id or len(key_id.encode("utf-8")) > 255 or any(c in key_id for c in ":, "):
        raise ValueError(f"key id {key_id!r} must be a non-empty string of at most 255 bytes without ':', ',' or spaces")


def parse_keys(text: str) -> EncryptionCodec | None:
    """``k1:BASE64KEY,k0:BASE64KEY`` (the first is active) as a codec; None for an empty string."""
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if not entries:
        return None
    keys: dict[str, bytes] = {}
    for entry in entries:
        key_id, sep, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not sep or not key_id:
            raise ValueError(f"{ENV}: entry {entry.split(':')[0]!r}... is not KEY_ID:BASE64KEY")
        if key_id in keys:
            raise ValueError(f"{ENV}: key id {key_id!r} is listed twice")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{ENV}: key {key_id!r} is not valid base64") from None
        if len(key) != KEY_SIZE:
            raise ValueError(f"{ENV}: key {key_id!r} is {len(key)} bytes; AES-256-GCM needs exactly {KEY_SIZE}")
        keys[key_id] = key
    return EncryptionCodec(keys, active=next(iter(keys)))


def from_env() -> EncryptionCodec | None:
    """The codec ``METAMORPH_ENCRYPTION_KEYS`` describes, None when unset (ValueError when malformed)."""
    return parse_keys(settings.get(ENV))
