"""Metamorph: durable workflows as ordinary async Python.

Everything a user needs is importable from here: the authoring API (``Workflow``, ``workflow``,
``activity``, handlers), activity helpers, the ``Client`` and the errors.
"""

from actors import schedules as _schedules  # noqa: F401 - registers metamorph.Schedule on every node
from actors import workflow
from actors.engine.definitions import ActivityOptions, Workflow, activity, query, queue, signal, update
from actors.engine.typed import PayloadTypeError
from actors.errors import (
    ActivityCancelled,
    ActivityFailed,
    AlreadyCompensated,
    ChildWorkflowFailed,
    ExternalRequestFailed,
    NondeterminismError,
    NonRetryableError,
    NotConfigured,
    PayloadTooLarge,
    QueryFailed,
    VersionNotSupported,
    WorkflowAlreadyStarted,
    WorkflowCancelled,
    WorkflowError,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowNotRunning,
    WorkflowTerminated,
    WorkflowTimedOut,
)


def __getattr__(name: str):  # lazy: the client and activity runtime pull in Kafka and Postgres
    if name in ("Client", "WorkflowHandle", "WorkflowSummary"):
        from actors.client import sync as client

        return getattr(client, name)
    if name in ("AsyncClient", "AsyncWorkflowHandle", "AsyncScheduleHandle"):
        from actors.client import aio as aclient

        return getattr(aclient, name)
    if name in ("heartbeat", "activity_info", "ActivityInfo"):
        from actors.activities import worker as activities

        return getattr(activities, name)
    if name == "ScheduleHandle":
        return _schedules.ScheduleHandle
    if name == "webhook":
        from actors.interfaces import webhooks

        return webhooks.webhook
    raise AttributeError(f"module 'actors' has no attribute {name!r}")


__all__ = [
    "ActivityCancelled", "ActivityFailed", "ActivityInfo", "AlreadyCompensated", "ActivityOptions", "AsyncClient", "AsyncScheduleHandle",
    "AsyncWorkflowHandle",
    "ChildWorkflowFailed", "Client", "ExternalRequestFailed",
    "NonRetryableError", "NotConfigured", "NondeterminismError", "PayloadTooLarge", "PayloadTypeError", "QueryFailed", "ScheduleHandle",
    "VersionNotSupported", "Workflow",
    "WorkflowAlreadyStarted", "WorkflowCancelled", "WorkflowError", "WorkflowFailed", "WorkflowHandle",
    "WorkflowNotFound", "WorkflowNotRunning", "WorkflowSummary", "WorkflowTerminated", "WorkflowTimedOut", "activity",
    "activity_info", "heartbeat", "query", "queue", "signal", "update", "webhook", "workflow",
]
