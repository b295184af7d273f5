"""Consumer-group polling that survives kafka-python's rebalance race.

kafka-python 3.0.12 runs JoinGroup/SyncGroup as a background task and only applies its result (the new
assignment, the ``on_partitions_assigned`` callback) inside a later ``poll``. If ``poll`` times out while
that task is in flight and the caller does other work before polling again, two things can go wrong:

* the rebalance was triggered by a metadata change (the usual second join right after start-up), the
  leader's assignment clears that trigger, so the next ``poll`` thinks nothing is pending and never applies
  the finished join: the member sits in the group with no partitions, for ever;
* the trigger is still set but the task already finished, so the next ``poll`` throws its result away and
  joins again — with short poll timeouts and work between polls, again and again.

A node polls with 0–1 ms timeouts while its own activities run (eager dispatch), so it hit both after a
crash restart. The cure is to do nothing else while the group is joining: pin the rejoin flag (so a
finished join is never mistaken for none) and poll back to back with a timeout long enough for the join
round trip to finish inside one call.
"""

from __future__ import annotations

import time
from typing import Any

from kafka import KafkaConsumer

_JOIN_POLL_MS = 1_000
_JOIN_BUDGET_S = 30.0


def poll(consumer: KafkaConsumer, timeout_ms: int, max_records: int | None = None) -> dict[Any, list[Any]]:
    """``consumer.poll``, except that a pending rebalance is driven to completion first.

    Returns whatever the poll returned. Bounded: after ``_JOIN_BUDGET_S`` of joining (a broker waiting for
    slow members) it returns so the caller's loop can notice a stop request, and is called again.
    """
    coordinator = consumer._coordinator
    if _joining(coordinator):
        deadline = time.monotonic() + _JOIN_BUDGET_S
        while _joining(coordinator) and time.monotonic() < deadline:
            coordinator.request_rejoin()  # keep "a join is pending" true until poll has applied the result
            records = consumer.poll(timeout_ms=_JOIN_POLL_MS, max_records=max_records)
            if records:
                return records
    return consumer.poll(timeout_ms=timeout_ms, max_records=max_records)


def _joining(coordinator: Any) -> bool:
    if coordinator.group_id is None:
        return False
    return getattr(coordinator, "_join_task", None) is not None or coordinator.need_rejoin()
