"""Payload codecs (docs/API.md section 11): encryption of every user payload in Kafka and PostgreSQL.

``set_codec(EncryptionCodec(keys={"k1": key}, active="k1"))`` installs one in this process; or set
``METAMORPH_ENCRYPTION_KEYS="k1:BASE64KEY,k0:BASE64KEY"`` (the first is active) for every process without
code changes — it is read once, on the first payload, never at import.

What PostgreSQL stores: the projector does not decrypt. An encrypted payload column (``input``,
``output``, ``result``, history ``data`` fields) holds ``{"$encrypted": "<base64 of the payload bytes>"}``;
the read side (Client reads, ``history()``, ``result()``, the HTTP API and UI) decrypts when the reading
process has the key and shows the string ``"<encrypted>"`` when it has not (no key, or a key id it does
not know), so a dashboard without keys still works. ``handle.result()`` without the key therefore
returns ``"<encrypted>"``. Query/update replies travel encrypted too; decoding one without the key raises
:class:`EncryptedPayloadError`. A node or activity worker must have the key to run the workflow.
"""

from __future__ import annotations

from eventstore.encryption import ENCRYPTED, EncryptedPayloadError, EncryptionCodec, from_env, parse_keys
from eventstore.payloads import PayloadCodec, codec, reset_codec, set_codec

__all__ = [
    "ENCRYPTED", "EncryptedPayloadError", "EncryptionCodec", "PayloadCodec", "codec", "from_env", "parse_keys",
    "reset_codec", "set_codec",
]
