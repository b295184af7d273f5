"""Export the Avro schemas of every command and event, for producers and consumers outside Python.

``metamorph schemas DIR`` writes:

- every ``.avsc`` of ``eventstore/schemas`` as it is (named types reference each other by full name);
- for each record written to a topic (``CommandEnvelope``, ``EventEnvelope``, ...), a self-contained
  ``<name>.full.avsc`` with every referenced type inlined, which any Avro library parses on its own;
- ``README.md``: which topic carries which record, and each record's fingerprint for the Avro single-object
  encoding every Metamorph record uses (``C3 01`` + the 8-byte little-endian CRC-64-AVRO fingerprint of
  the writer's schema + the Avro binary body). A reader resolves the writer's schema by that fingerprint,
  so a producer must write with exactly these schemas.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .codec import SCHEMA_DIR, TOP_LEVEL, registry

#: Which topic carries each top-level record (docs/DESIGN.md, Topics).
CARRIED_BY = {
    "metamorph.CommandEnvelope": "<ns>.commands",
    "metamorph.EventEnvelope": "<ns>.events",
    "metamorph.ActivityTask": "<ns>.activities.<queue>",
    "metamorph.Reply": "<ns>.replies",
    "metamorph.DeadLetter": "<ns>.deadletter",
    "metamorph.ActivityCancel": "<ns>.cancels",
    "metamorph.WorkflowResult": "<ns>.replies (outcomes, keyed by workflow id)",
}
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _expand(node: Any, files: dict[str, dict], namespace: str, seen: set[str]) -> Any:
    """Inline named types by full name; a name already defined stays a reference (Avro defines each once)."""
    if isinstance(node, str):
        if node in _PRIMITIVES:
            return node
        full = node if "." in node else f"{namespace}.{node}"
        if full in seen or full not in files:
            return full
        return _expand(files[full], files, namespace, seen)
    if isinstance(node, list):
        return [_expand(n, files, namespace, seen) for n in node]
    if not isinstance(node, dict):
        return node
    out = dict(node)
    if node.get("type") in ("record", "enum", "fixed") and "name" in node:
        ns = node.get("namespace") or namespace
        full = node["name"] if "." in node["name"] else f"{ns}.{node['name']}"
        seen.add(full)
        namespace = ns
    if node.get("type") == "record":
        out["fields"] = [{**f, "type": _expand(f["type"], files, namespace, seen)} for f in node["fields"]]
    elif node.get("type") in ("array",):
        out["items"] = _expand(node["items"], files, namespace, seen)
    elif node.get("type") in ("map",):
        out["values"] = _expand(node["values"], files, namespace, seen)
    elif isinstance(node.get("type"), dict | list):
        out["type"] = _expand(node["type"], files, namespace, seen)
    return out


def export_schemas(directory: str | Path) -> list[Path]:
    """Write the schemas and their index to ``directory`` (created if missing); returns the files written."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    files: dict[str, dict] = {}
    for path in sorted(SCHEMA_DIR.glob("*.avsc")):
        shutil.copyfile(path, target / path.name)
        written.append(target / path.name)
        files[path.stem] = json.loads(path.read_text())
    reg = registry()
    rows = []
    for name in TOP_LEVEL:
        full = _expand(files[name], files, name.rsplit(".", 1)[0], set())
        out = target / f"{name}.full.avsc"
        out.write_text(json.dumps(full, indent=2) + "\n")
        written.append(out)
        fp = reg.fingerprint(name)
        rows.append(
            f"| `{name}` | `{CARRIED_BY[name]}` | `{name}.full.avsc` | `{fp.hex()}` | "
            f"`0x{int.from_bytes(fp, 'little'):016x}` |"
        )
    index = target / "README.md"
    index.write_text(_INDEX.format(rows="\n".join(rows), schemas="\n".join(f"- `{p.name}`" for p in written[:-len(TOP_LEVEL)])))
    written.append(index)
    return written


_INDEX = """# Metamorph Avro schemas

Every record Metamorph writes to Kafka uses the Avro single-object encoding:

    C3 01 | 8-byte fingerprint (CRC-64-AVRO of the schema's parsing canonical form, little-endian) | Avro binary body

Readers find the writer's schema by the fingerprint, so a producer must write with exactly these schemas
(a fingerprint Metamorph does not know is dead-lettered). The `*.full.avsc` files are self-contained (all
named types inlined); the other files are one named type each, referring to others by full name.

| record | topic | self-contained schema | header fingerprint (hex, as written) | Java `SchemaNormalization.parsingFingerprint64` |
|---|---|---|---|---|
{rows}

Commands (`metamorph.commands.*`) travel inside a `CommandEnvelope` (key: the workflow id; `command_id` is
the idempotency key, `at` is epoch milliseconds); events inside an `EventEnvelope`. User payloads
(`input`, `result`, ...) are `bytes` holding UTF-8 JSON (a list of positional arguments for `input`).
Producers that do not want Avro can write JSON to `<ns>.ingress` instead (see the project README).

Named types:

{schemas}
"""
