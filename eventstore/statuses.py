"""Workflow statuses, defined once for every process (node, projector, client, CLI, HTTP API).

Why here: ``eventstore`` is the one package that ``actors`` and ``projections`` both import, so the set of
statuses, which of them are terminal and which event ends a run with which status cannot drift apart
between the writer (the node), the projector and the readers. A filter with a status outside this set is
refused (``parse``) rather than answered with an empty list.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Status(StrEnum):
    """A run's status; a ``str``, so it compares equal to the text stored in PostgreSQL and SQLite."""

    PENDING = "pending"  # accepted, code not yet run
    RUNNING = "running"  # code running, or activities/children in flight
    WAITING = "waiting"  # blocked only on a timer, signal or condition
    BLOCKED = "blocked"  # waiting for code: a replay mismatch, or a type no node here knows
    PAUSED = "paused"  # an operator paused it: takes no step until resumed (docs/API.md §7)
    COMPLETED = "completed"
    FAILED = "failed"
    CONTINUED = "continued"  # ended by continue-as-new: terminal for the run, not for the workflow
    CANCELLED = "cancelled"
    TERMINATED = "terminated"
    TIMED_OUT = "timed_out"  # the execution timeout (start option ``timeout``) elapsed


#: Every status, in lifecycle order.
ALL: tuple[Status, ...] = tuple(Status)
#: Statuses of a run that has ended.
TERMINAL: frozenset[Status] = frozenset(
    {Status.COMPLETED, Status.FAILED, Status.CONTINUED, Status.CANCELLED, Status.TERMINATED, Status.TIMED_OUT}
)
#: Statuses after which the workflow (following continue-as-new to its newest run) has a final outcome.
FINAL: frozenset[Status] = TERMINAL - {Status.CONTINUED}
#: The event that ends a run, and the status it leaves the run in.
BY_TERMINAL_EVENT: dict[str, Status] = {
    "WorkflowCompleted": Status.COMPLETED,
    "WorkflowFailed": Status.FAILED,
    "WorkflowContinued": Status.CONTINUED,
    "WorkflowCancelled": Status.CANCELLED,
    "WorkflowTerminated": Status.TERMINATED,
    "WorkflowTimedOut": Status.TIMED_OUT,
}
#: Terminal statuses after which ``if_closed="allow_failed"`` starts a new run (everything but success).
UNSUCCESSFUL: frozenset[Status] = frozenset({Status.FAILED, Status.CANCELLED, Status.TERMINATED, Status.TIMED_OUT})


def parse(value: str) -> Status:
    """``value`` as a Status; ValueError naming the valid ones for anything else (a typo is not "none")."""
    try:
        return Status(value)
    except ValueError:
        valid = ", ".join(ALL)
        raise ValueError(f"unknown status {value!r}; expected one of: {valid}") from None


def parse_many(values: str | Iterable[str]) -> list[Status]:
    """One status or several (a list filter), each checked by ``parse``."""
    return [parse(v) for v in ([values] if isinstance(values, str) else values)]
