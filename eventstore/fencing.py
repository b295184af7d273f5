"""Epoch fencing of event partitions.

A node that owns partition p appends an OwnershipMarker(epoch = consumer-group generation) before it
writes anything else. A zombie that lost p but still writes will write with its older epoch; every reader
passes the partition's events through a Fence, which drops any event whose epoch is lower than the highest
marker seen before it. Readers therefore agree on one history whatever a zombie does.
"""

from __future__ import annotations

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
