"""Epoch fencing of event partitions.

A node that owns partition p appends an OwnershipMarker(epoch = consumer-group generation) before it
writes anything else. A zombie that lost p but still writes will write with its older epoch; every reader
passes the partition's events through a Fence, which drops any event whose epoch is lower than the highest
marker seen before it. Readers therefore agree on one history whatever a zombie does.

Messages are fenced the same way: every message an owner sends carries its (partition, epoch) in a Kafka
header (``EPOCH_HEADER``), and receivers drop those a former owner sent about events after a newer owner's
marker (``MessageFence``).
"""

from __future__ import annotations

import logging
import threading
from typing import NamedTuple

from . import metrics

log = logging.getLogger(__name__)

MARKER = "metamorph.events.OwnershipMarker"


class Fence:
    """The highest ownership epoch seen so far in one partition, in log order."""

    __slots__ = ("epoch", "dropped")

    def __init__(self, epoch: int = -1) -> None:
        self.epoch = epoch
        self.dropped = 0

    def admit(self, envelope: dict) -> bool:
        """True if the event belongs to history; markers raise the epoch, stale writes are dropped."""
        kind, body = envelope["event"]
        if kind == MARKER:
            return self._admit(True, body["epoch"])
        return self._admit(False, envelope["epoch"])

    def admit_flat(self, event: dict) -> bool:
        """``admit`` for the flat form of ``eventstore.events.decode_event`` (the projector's and store's view).

        In the flat form a marker's body ``epoch`` replaces the envelope's, which is the one that counts.
        """
        return self._admit(event["type"] == "OwnershipMarker", event["epoch"])

    def _admit(self, is_marker: bool, epoch: int) -> bool:
        if is_marker and epoch >= self.epoch:
            self.epoch = epoch
            return True
        if epoch < self.epoch or is_marker:
            self.dropped += 1
            return False
        return True


# -- messages ----------------------------------------------------------------------------------------------
#: Kafka header on every message a node sends because it owns a partition (activity tasks, cancellations,
#: commands to other workflows, replies...): ``b"<partition>:<epoch>:<marker offset>:<offset>"`` -- the events
#: partition whose owner decided the message, the epoch and log offset of that owner's ownership marker, and
#: the log offset of the event that obliged the message (for a message no event obliged, the last offset the
#: owner knew of).
EPOCH_HEADER = "metamorph-epoch"


class Stamp(NamedTuple):
    """What ``EPOCH_HEADER`` says about a message's sender."""

    partition: int
    epoch: int
    marker: int
    offset: int


def epoch_header(partition: int, epoch: int, marker: int, offset: int) -> tuple[str, bytes]:
    """The header that stamps a message with the sender's ownership of ``partition`` (see ``Stamp``)."""
    return EPOCH_HEADER, f"{partition}:{epoch}:{marker}:{offset}".encode()


def stamp_of(headers: list[tuple[str, bytes]] | None) -> Stamp | None:
    """The stamp of a message; None for an unstamped one (clients, workers, other tools) or a garbled header."""
    for key, value in headers or ():
        if key == EPOCH_HEADER:
            try:
                return Stamp(*(int(part) for part in bytes(value).decode().split(":", 3)))
            except (ValueError, TypeError, UnicodeDecodeError):
                return None
    return None


class MessageFence:
    """The receiving side of message fencing: per origin partition, the newest owner seen (epoch, marker offset).

    Events are fenced in the log (``Fence``), but what a node *sends* is acted on by others directly: a zombie
    (a node paused past its session timeout, whose partitions another node now owns) could run an activity,
    cancel one, start a child or answer an update whose events are fenced out of history. A message stamped
    with an older epoch than the newest seen for its partition is dropped when the event that obliged it lies
    after the newer owner's marker: that event is not history, so nothing may act on it. A message of an
    older owner whose event precedes the newer marker is history, merely delivered late (sent just before a
    crash or a rebalance, consumed after): it passes, because nothing else may send it again (the new owner
    re-sends only what its own restore found unsent). Unstamped messages always pass. Thread-safe.

    A receiver that has not yet heard from the newer owner cannot tell; it lets the message pass.
    """

    def __init__(self, component: str) -> None:
        self.component = component
        self.dropped = 0
        self._newest: dict[int, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def observe(self, partition: int, epoch: int, marker: int) -> None:
        """Learn of an owner directly (a node taking a partition over learns its own epoch and marker)."""
        with self._lock:
            if epoch > self._newest.get(partition, (-1, -1))[0]:
                self._newest[partition] = (epoch, marker)

    def newest(self, partition: int) -> tuple[int, int] | None:
        """(epoch, marker offset) of the newest owner of ``partition`` seen so far."""
        with self._lock:
            return self._newest.get(partition)

    def admit(self, topic: str, headers: list[tuple[str, bytes]] | None) -> bool:
        """True if the message may be acted on; a zombie's is counted (metric, WARNING) and refused."""
        stamp = stamp_of(headers)
        if stamp is None:
            return True
        with self._lock:
            epoch, marker = self._newest.get(stamp.partition, (-1, -1))
            if stamp.epoch >= epoch:
                if stamp.epoch > epoch:
                    self._newest[stamp.partition] = (stamp.epoch, stamp.marker)
                return True
            if stamp.offset < marker:
                return True  # an older owner's message about history: late, not stale
            self.dropped += 1
        metrics.stale_messages.labels(self.component, topic).inc()
        log.warning(
            "%s dropped a message on %s from a former owner of partition %d (epoch %d, event at offset %d, after "
            "the marker of epoch %d at %d)", self.component, topic, stamp.partition, stamp.epoch, stamp.offset,
            epoch, marker,
        )  # fmt: skip
        return False
