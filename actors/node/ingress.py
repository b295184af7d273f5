"""``<ns>.ingress``: start and signal workflows from any Kafka producer, in any language, with plain JSON.

Why: commands on ``<ns>.commands`` are Avro envelopes that only Metamorph's own code writes comfortably. The
ingress topic takes one JSON object per record (key: the workflow id)::

    {"start":  {"type": "app.OrderWorkflow", "id": "order-A-1", "args": ["A-1", 100]}}
    {"signal": {"id": "order-A-1", "name": "approve", "args": ["alice"]}}

``args`` is optional (default ``[]``). A forwarder (each node runs one, in the consumer group
``<ns>.ingress``, so the ingress partitions are spread over the nodes) validates each record and forwards
it as the normal command (``actors.client.sync.command_record``, the Client's own encoder) to ``<ns>.commands``
keyed by the workflow id. Anything else goes to ``<ns>.deadletter`` through the node's dead-letter writer,
with the reason in the DeadLetter record's ``reason`` field: not UTF-8 JSON, not exactly one of
``start``/``signal``, unknown or missing fields, wrong types, a key that is not the workflow id, or a record
above the command size limit. The ingress offsets are committed only after every forward and dead letter
of the batch is acknowledged (acks=all); a forward repeated after a crash is harmless, because the
command id is derived from the ingress record's position (signals) or the workflow id (starts), and the
owning node ignores a command id it has already applied.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from kafka.errors import CommitFailedError
from kafka.structs import OffsetAndMetadata

from actors.client.sync import _START_DEFAULTS as START_DEFAULTS
from actors.client.sync import _attributes as start_attributes
from actors.client.sync import _start_options as client_start_options
from actors.client.sync import command_record
from actors.errors import limited_payload
from eventstore import fetchhold, groups
from eventstore.backoff import Backoff
from eventstore.log import MAX_RECORD_BYTES
from eventstore.topics import Topics, leave_group, partition_for

log = logging.getLogger(__name__)

#: The start options of ``Client.start`` (docs/API.md §6) a JSON start may carry, with the same names and checks.
START_OPTIONS = ("if_running", "if_closed", "start_signal", "start_signal_args", "start_delay", "timeout", "search",
                 "memo", "priority")
#: The fields each kind of ingress command may have, and which of them are required.
FIELDS = {"start": ({"type", "id", "args", *START_OPTIONS}, {"type", "id"}),
          "signal": ({"id", "name", "args"}, {"id", "name"})}
#: How much of an oversize record the dead letter keeps (the whole would not fit the dead-letter topic).
_KEEP_OVERSIZE = 64 * 1024


class InvalidIngress(ValueError):
    """An ingress record that cannot be forwarded; the message is the dead letter's reason."""


def to_command(key: bytes | None, value: bytes | None, where: str) -> tuple[str, bytes]:
    """Validate one ingress record; ``(workflow id, encoded command)`` or InvalidIngress with the reason.

    ``where`` (``topic:partition:offset``) makes the command id of a signal, so forwarding the same record
    twice gives the same command and the node applies it once.
    """
    if value is None or len(value) == 0:
        raise InvalidIngress("empty record (expected a JSON object)")
    if len(value) > MAX_RECORD_BYTES:
        raise InvalidIngress(f"oversize: {len(value)} bytes; the limit is {MAX_RECORD_BYTES} bytes")
    try:
        doc = json.loads(bytes(value).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidIngress(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or len(doc) != 1 or next(iter(doc)) not in FIELDS:
        shape = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise InvalidIngress(f'unknown shape {shape}: expected {{"start": {{...}}}} or {{"signal": {{...}}}}')
    kind, body = next(iter(doc.items()))
    if not isinstance(body, dict):
        raise InvalidIngress(f"{kind!r} must be a JSON object, not {type(body).__name__}")
    allowed, required = FIELDS[kind]
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidIngress(f"{kind}: unknown field(s) {unknown} (allowed: {sorted(allowed)})")
    missing = sorted(required - set(body))
    if missing:
        raise InvalidIngress(f"{kind}: missing {missing}")
    for name in required:
        if not isinstance(body[name], str) or not body[name]:
            raise InvalidIngress(f"{kind}: {name!r} must be a non-empty string, not {json.dumps(body[name])[:80]}")
    args = body.get("args", [])
    if not isinstance(args, list):
        raise InvalidIngress(f"{kind}: 'args' must be a JSON array, not {type(args).__name__}")
    workflow_id = body["id"]
    if key is not None and bytes(key) != workflow_id.encode():
        raise InvalidIngress(f"record key {bytes(key)[:80]!r} is not the workflow id {workflow_id!r}")
    try:
        if kind == "start":
            options = _start_options(body)
            # Without options, the command id Client.start uses: a start repeated for one id is one start.
            # With them (a policy may start a second run of the id), the record's position: forwarding
            # the same record twice is one start, two records are two starts, as two Client.start calls.
            command_id = f"ingress:{where}" if options else f"start:{workflow_id}"
            record = command_record("StartWorkflow", workflow_id, command_id, workflow_type=body["type"],
                                    input=limited_payload("start args", args), **options)
        else:
            record = command_record("SignalWorkflow", workflow_id, f"ingress:{where}", name=body["name"],
                                    input=limited_payload(f"arguments of signal {body['name']!r}", args))
    except ValueError as exc:  # a bad option, PayloadTooLarge, PayloadError
        raise InvalidIngress(f"{kind}: {exc}") from None
    return workflow_id, record


def _start_options(body: dict[str, Any]) -> dict[str, Any]:
    """The StartWorkflow fields of a JSON start's options, checked exactly as ``Client.start`` checks them
    (the same function): a bad value raises ValueError naming the option, which becomes the dead letter's
    reason. JSON has no timedelta: ``start_delay`` and ``timeout`` are seconds."""
    given = {name: body[name] for name in START_OPTIONS if name in body}
    if "start_signal_args" in given and not isinstance(given["start_signal_args"], list):
        raise ValueError("start_signal_args must be a JSON array")
    for name in ("search", "memo"):
        if name in given and not isinstance(given[name], dict):
            raise ValueError(f"{name} must be a JSON object, not {type(given[name]).__name__}")
    search, memo = given.pop("search", None), given.pop("memo", None)
    for name in ("if_running", "if_closed"):
        if name in given and not isinstance(given[name], str):
            raise ValueError(f"{name} must be a policy name (a string), not {json.dumps(given[name])[:80]}")
    return {**client_start_options(**{**START_DEFAULTS, **given}), **start_attributes(search, memo)}


DeadLetterWriter = Callable[[str, int, int, str, "bytes | None", bytes, str], Any]


class IngressForwarder:
    """Consumes ``<ns>.ingress`` in its own group and forwards valid records to ``<ns>.commands``.

    Runs on a thread of the node (``Node(ingress=True)``), sharing the node's producer and dead-letter
    writer; its own consumer group, so owning ingress partitions has nothing to do with owning command
    partitions.
    """

    def __init__(
        self,
        kafka: str,
        topics: Topics,
        partitions: int,
        producer: Any,
        deadletter: DeadLetterWriter,
        name: str,
        session_timeout: float | None = None,
    ) -> None:
        self.kafka = kafka
        self.topics = topics
        self.partitions = partitions
        self.producer = producer
        self.deadletter = deadletter
        self.name = name
        self.session_timeout = session_timeout
        self.forwarded = 0
        self.rejected = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> IngressForwarder:
        self._thread = threading.Thread(target=self._run, name=f"metamorph-ingress-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                self._consume()
                return
            except Exception:  # broker gone, a forward not acknowledged: nothing committed, re-read later
                log.exception("ingress forwarder failed; rejoining in %.1fs", backoff.peek())
                self._stop.wait(backoff.next())

    def _consume(self) -> None:
        consumer = groups.member(
            self.kafka, self.topics.ingress_group, self.name, session_timeout_s=self.session_timeout,
            client_id=f"metamorph-ingress-{self.name}", fetch_max_wait_ms=100, max_poll_records=500,
            fetch_hold_ms=fetchhold.background_hold_ms(),
        )  # fmt: skip
        consumer.subscribe([self.topics.ingress])
        try:
            while not self._stop.is_set():
                batch = groups.poll(consumer, 200)
                if batch:
                    self.forward(consumer, batch)
        finally:
            consumer.close(autocommit=False)
            if self._stop.is_set():
                leave_group(self.kafka, self.topics.ingress_group, self.name)

    def forward(self, consumer: Any, batch: dict[Any, list[Any]]) -> None:
        """Forward or dead-letter every record of the batch, wait for all acks, then commit the offsets."""
        futures = []
        commits = {}
        for tp, records in batch.items():
            for rec in records:
                where = f"{tp.topic}:{tp.partition}:{rec.offset}"
                try:
                    workflow_id, record = to_command(rec.key, rec.value, where)
                except InvalidIngress as exc:
                    value = bytes(rec.value or b"")[:_KEEP_OVERSIZE]
                    futures.append(self.deadletter(tp.topic, tp.partition, rec.offset, f"invalid ingress record: {exc}",
                                                   rec.key, value, "ingress"))  # fmt: skip
                    self.rejected += 1
                    continue
                futures.append(self.producer.send(
                    self.topics.commands, key=workflow_id.encode(), value=record,
                    partition=partition_for(workflow_id, self.partitions),
                ))  # fmt: skip
                self.forwarded += 1
            commits[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
        self.producer.flush()
        for future in futures:
            if future is not None:
                future.get(timeout=30)  # raises if the broker refused it: then nothing is committed
        try:
            consumer.commit(commits)
        except CommitFailedError:
            log.warning("ingress offset commit refused (partitions moved); the new owner re-forwards, the node dedupes")
