"""The namespace's topics (docs/DESIGN.md) and the one partitioning rule everything relies on.

A workflow's commands and events must land in the same partition number of both topics, so that the node
owning command partition p is the only writer of event partition p. We compute that partition ourselves
with Kafka's own default partitioner (murmur2 of the key), so a foreign producer that just sets the key
agrees with us.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.partitioner.default import murmur2

from eventstore.backoff import Backoff

from .payloads import MAX_RECORD_BYTES

log = logging.getLogger(__name__)

DEFAULT_PARTITIONS = 8

_DAY_MS = 24 * 3600 * 1000

#: Retention of each kind of topic (documented in the README's production settings). The events topic is
#: the system of record, so nothing there is ever deleted by age or size (histories of finished
#: workflows are the source for replays and projections rebuilt from zero). Commands and activity tasks
#: are consumed within moments: a week leaves room for an outage and for inspection. Replies only matter
#: while a caller waits. Dead letters are for operators, who may be on holiday.
TOPIC_CONFIGS: dict[str, dict[str, str]] = {
    "commands": {"retention.ms": str(7 * _DAY_MS)},
    "events": {"retention.ms": "-1", "retention.bytes": "-1"},
    "replies": {"retention.ms": str(3600 * 1000)},
    "deadletter": {"retention.ms": str(30 * _DAY_MS)},
    "ingress": {"retention.ms": str(7 * _DAY_MS)},
    "activities": {"retention.ms": str(7 * _DAY_MS)},
    "cancels": {"retention.ms": str(_DAY_MS)},
}


def default_replication(brokers: int) -> int:
    """Replication factor for new topics: three copies where the cluster has three brokers, else all."""
    return max(1, min(3, brokers))


def default_min_insync(replication: int) -> int:
    """``min.insync.replicas``: with RF 3 a write survives one broker loss and still has two copies; with
    RF 2 requiring both would stop all writes whenever one broker is down, so one suffices there."""
    return max(1, min(2, replication - 1))


class TopicMismatchError(RuntimeError):
    """Existing topics whose partition counts disagree: partition routing would be wrong."""


@dataclass(frozen=True)
class Topics:
    namespace: str = "default"

    @property
    def commands(self) -> str:
        return f"{self.namespace}.commands"

    @property
    def events(self) -> str:
        return f"{self.namespace}.events"

    @property
    def replies(self) -> str:
        return f"{self.namespace}.replies"

    @property
    def deadletter(self) -> str:
        return f"{self.namespace}.deadletter"

    @property
    def ingress(self) -> str:
        """JSON start/signal commands from any producer (``actors.node.ingress``), keyed by workflow id."""
        return f"{self.namespace}.ingress"

    @property
    def cancels(self) -> str:
        """Activity cancellations, read by every worker of the namespace (one partition, no group)."""
        return f"{self.namespace}.cancels"

    def activities(self, queue: str) -> str:
        return f"{self.namespace}.activities.{queue}"

    @property
    def ingress_group(self) -> str:
        return f"{self.namespace}.ingress"

    @property
    def node_group(self) -> str:
        return f"{self.namespace}.nodes"

    @property
    def projector_group(self) -> str:
        return f"{self.namespace}.projector"

    def activity_group(self, queue: str) -> str:
        return f"{self.namespace}.activities.{queue}"


def partition_for(key: str, partitions: int) -> int:
    """Kafka's default partitioner for a string key (murmur2, positive, modulo P)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def admin(bootstrap: str, timeout: float = 30.0) -> KafkaAdminClient:
    """An admin client, retried with backoff so a broker that is still starting is waited for."""
    deadline = time.monotonic() + timeout
    backoff = Backoff(0.2, 2.0)
    while True:
        try:
            return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="metamorph-admin")
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise ConnectionError(f"Kafka broker at {bootstrap} is unreachable: {exc}") from exc
            log.warning("Kafka at %s not reachable yet (%s); retrying", bootstrap, exc)
            time.sleep(backoff.next())


def leave_group(bootstrap: str, group: str, instance_id: str) -> None:
    """Remove a static member now, so its partitions move to the others without waiting for the session
    timeout (a static member never leaves on close: that is what lets a restart reclaim partitions)."""
    from kafka.admin import MemberToRemove

    client = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="metamorph-admin")
    try:
        client.remove_group_members(group, [MemberToRemove(group_instance_id=instance_id)])
    except KafkaError as exc:
        log.info("could not remove %s from %s (already gone?): %s", instance_id, group, exc)
    finally:
        client.close()


def broker_count(client: KafkaAdminClient) -> int:
    """Brokers in the cluster; 1 for a broker that does not answer DescribeCluster (single-node emulators)."""
    try:
        return max(1, len(client.describe_cluster()["brokers"]))
    except Exception as exc:  # KafkaError, or kafka-python failing to parse an old response version
        log.debug("DescribeCluster failed (%s); assuming a single broker", exc)
        return 1


def partition_counts(client: KafkaAdminClient, names: list[str]) -> dict[str, int]:
    existing = set(client.list_topics())
    wanted = [n for n in names if n in existing]
    if not wanted:
        return {}
    return {t["name"]: len(t["partitions"]) for t in client.describe_topics(wanted)}


def _visible_counts(client: KafkaAdminClient, names: list[str], timeout: float = 15.0) -> dict[str, int]:
    """``partition_counts`` once every topic in ``names`` is visible. A broker acknowledges CreateTopics when
    the controller has the topic; its own metadata cache (what a describe reads) may learn of it a moment
    later, and a count read then would silently lack the new topic."""
    deadline = time.monotonic() + timeout
    while True:
        counts = partition_counts(client, names)
        if len(counts) == len(names) or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


def ensure_topics(
    bootstrap: str,
    namespace: str = "default",
    partitions: int | None = None,
    queues: tuple[str, ...] = ("default",),
    replication: int | None = None,
    min_insync: int | None = None,
) -> dict[str, int]:
    """Create the namespace's topics if missing; refuse if existing ones disagree on partitions.

    ``commands`` and ``events`` must have the same count P. If they already exist, P is theirs (a node
    started without ``--partitions``, i.e. ``partitions=None``, joins whatever the namespace has); asking
    for a different P explicitly is refused, because re-partitioning would move workflows away from their
    histories. New topics get ``partitions or DEFAULT_PARTITIONS``, ``replication`` copies (default
    ``default_replication(brokers)``), ``min_insync`` (default ``default_min_insync``) and the retention of
    ``TOPIC_CONFIGS``. Replication of existing topics is left alone. RF 1 on a cluster of several brokers
    is allowed but warned about: one broker's disk then holds the only copy of every workflow's history.
    Returns the partition count of every topic of the namespace.
    """
    t = Topics(namespace)
    client = admin(bootstrap)
    try:
        core = [t.commands, t.events]
        counts = partition_counts(client, core)
        asked = partitions
        if counts:
            found = set(counts.values())
            if len(found) > 1 or (asked is not None and asked not in found):
                raise TopicMismatchError(
                    f"namespace {namespace!r}: {', '.join(f'{k} has {v}' for k, v in sorted(counts.items()))}"
                    f" partitions, but {asked} were asked for; commands and events must both have the"
                    " same count. Use another namespace or recreate the topics."
                )
        partitions = next(iter(counts.values())) if counts else (asked or DEFAULT_PARTITIONS)
        want = {
            t.commands: partitions,
            t.events: partitions,
            t.replies: partitions,
            t.deadletter: 1,
            # P, like commands: keyed by workflow id, so one id's ingress records stay in order, and the
            # forwarders (one per node, in their own group) scale out exactly as the nodes do.
            t.ingress: partitions,
            t.cancels: 1,
            **{t.activities(q): partitions for q in queues},
        }
        missing = [n for n in want if n not in set(client.list_topics())]
        if missing:
            brokers = broker_count(client)
            rf = default_replication(brokers) if replication is None else replication
            if rf < 1 or rf > brokers:
                raise ValueError(
                    f"replication factor {rf} is impossible on a cluster of {brokers} broker(s): use 1..{brokers}"
                )
            isr = default_min_insync(rf) if min_insync is None else min_insync
            if not 1 <= isr <= rf:
                raise ValueError(f"min.insync.replicas {isr} must be between 1 and the replication factor {rf}")
            if rf == 1 and brokers > 1:
                log.warning(
                    "creating %s with replication factor 1 on a cluster of %d brokers: losing one broker "
                    "loses workflow histories; use --replication-factor 3", namespace, brokers,
                )
            kinds = {
                t.commands: "commands", t.events: "events", t.replies: "replies", t.deadletter: "deadletter",
                t.ingress: "ingress", t.cancels: "cancels",
            }  # fmt: skip
            new = [
                NewTopic(n, want[n], rf, topic_configs={
                    **TOPIC_CONFIGS[kinds.get(n, "activities")], "min.insync.replicas": str(isr),
                    "max.message.bytes": str(MAX_RECORD_BYTES + 1024),  # a full-size payload fits
                })
                for n in missing
            ]  # fmt: skip
            try:
                client.create_topics(new, timeout_ms=30000)
            except TopicAlreadyExistsError:
                pass  # another process won the race; the describe below checks the counts
        counts = _visible_counts(client, list(want))
        if counts.get(t.commands) != counts.get(t.events):
            raise TopicMismatchError(
                f"{t.commands} has {counts.get(t.commands)} partitions but {t.events} has "
                f"{counts.get(t.events)}; they must match"
            )
        return counts
    finally:
        client.close()
