"""The exceptions of the public API (docs/API.md section 4); all importable from ``actors``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from eventstore import payloads
from eventstore.payloads import PayloadTooLargeError


class WorkflowError(Exception):
    """Base of every Metamorph error a user may catch."""


class NonRetryableError(WorkflowError):
    """Raised inside an activity: fail it now, whatever ``tries`` says."""


class ActivityFailed(WorkflowError):
    """An activity used up its attempts (or failed non-retryably); raised at the workflow's await."""

    def __init__(self, activity: str, attempts: int, error_type: str, message: str, traceback: str = "") -> None:
        super().__init__(f"activity {activity} failed after {attempts} attempt(s): {error_type}: {message}")
        self.activity = activity
        self.attempts = attempts
        self.error_type = error_type
        self.message = message
        self.traceback = traceback


class ChildWorkflowFailed(WorkflowError):
    def __init__(self, workflow_id: str, error_type: str, message: str) -> None:
        super().__init__(f"child workflow {workflow_id} failed: {error_type}: {message}")
        self.workflow_id = workflow_id
        self.error_type = error_type
        self.message = message


class VersionNotSupported(WorkflowError):
    def __init__(self, change_id: str, version: int, min_supported: int, max_supported: int) -> None:
        super().__init__(
            f"version {version} of change {change_id!r} is not supported by this code "
            f"(supported: {min_supported}..{max_supported})"
        )
        self.change_id = change_id
        self.version = version


class NondeterminismError(WorkflowError):
    """Replayed code issued a different command than history recorded at that point.

    The structured fields say where, so a replayer can report it without parsing the message:
    ``workflow_id``, ``seq`` (the recorded event's sequence number), ``recorded`` (that event, e.g.
    ``ActivityScheduled(app.charge)``) and ``issued`` (what the code did instead; None if it issued nothing).
    """

    def __init__(
        self,
        message: str = "",
        *,
        workflow_id: str | None = None,
        seq: int | None = None,
        recorded: str | None = None,
        issued: str | None = None,
    ) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id
        self.seq = seq
        self.recorded = recorded
        self.issued = issued


class WorkflowFailed(WorkflowError):
    def __init__(self, workflow_id: str, error_type: str, message: str, traceback: str = "") -> None:
        super().__init__(f"workflow {workflow_id} failed: {error_type}: {message}")
        self.workflow_id = workflow_id
        self.error_type = error_type
        self.message = message
        self.traceback = traceback


class WorkflowCancelled(WorkflowError, asyncio.CancelledError):
    """The workflow was cancelled: raised by ``result()`` on the client, and at the await point of
    workflow code being cancelled.

    One class for both sides, and a subclass of ``asyncio.CancelledError``, so a saga written as
    ``except (ActivityFailed, WorkflowCancelled): await self.compensate()`` also compensates on cancel, and
    code that catches ``asyncio.CancelledError`` keeps working. Being a ``WorkflowError`` (an
    ``Exception``) too, a bare ``except Exception`` in workflow code catches it as well; whatever the code
    then does, the run ends ``cancelled`` unless another error escapes.
    """

    def __init__(self, workflow_id: str, reason: str | None = None) -> None:
        super().__init__(f"workflow {workflow_id} was cancelled" + (f": {reason}" if reason else ""))
        self.workflow_id = workflow_id
        self.reason = reason


class ActivityCancelled(WorkflowError):
    """Raised by ``heartbeat()`` inside an activity whose owner no longer wants its result.

    The workflow cancelled it: it lost a ``workflow.first`` race (or an ``asyncio.wait_for`` timed out), or
    the workflow itself was cancelled or ended. Heartbeating is how a long activity learns this, so it can
    stop early and clean up; whatever it returns or raises afterwards is ignored by the workflow.
    """

    def __init__(self, workflow_id: str, activity_id: int, name: str = "") -> None:
        what = f"activity {name} ({activity_id})" if name else f"activity {activity_id}"
        super().__init__(f"{what} of workflow {workflow_id} was cancelled")
        self.workflow_id = workflow_id
        self.activity_id = activity_id
        self.name = name


class WorkflowTerminated(WorkflowError):
    def __init__(self, workflow_id: str, reason: str | None = None) -> None:
        super().__init__(f"workflow {workflow_id} was terminated" + (f": {reason}" if reason else ""))
        self.workflow_id = workflow_id
        self.reason = reason


class WorkflowTimedOut(WorkflowError):
    """The workflow's execution timeout (start option ``timeout``) elapsed before it ended: status ``timed_out``."""

    def __init__(self, workflow_id: str, message: str | None = None) -> None:
        super().__init__(f"workflow {workflow_id} timed out" + (f": {message}" if message else ""))
        self.workflow_id = workflow_id
        self.message = message


class WorkflowAlreadyStarted(WorkflowError):
    """A start refused by the owning node under ``if_running``/``if_closed``: the id has a run already.

    ``run_id`` is that run's (the open one, or the last closed one), so the caller can ``client.get(id)``
    it, or decide to start with another policy.
    """

    def __init__(self, workflow_id: str, run_id: str | None, reason: str | None = None) -> None:
        super().__init__(f"workflow {workflow_id} is already started (run {run_id})" + (f": {reason}" if reason else ""))
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.reason = reason


class WorkflowNotFound(WorkflowError, LookupError):
    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"no workflow with id {workflow_id!r}")
        self.workflow_id = workflow_id


class WorkflowNotRunning(WorkflowError):
    """A signal, cancel, terminate or update for a workflow that has already ended: nothing was done.

    Raised instead of reporting success, so a caller learns that e.g. its approval reached a workflow that
    had completed meanwhile (HTTP 409, CLI exit status 6 "refused").
    """

    def __init__(self, workflow_id: str, status: str, operation: str | None = None) -> None:
        what = f"cannot {operation}: " if operation else ""
        super().__init__(f"{what}workflow {workflow_id} is not running (it is {status})")
        self.workflow_id = workflow_id
        self.status = status
        self.operation = operation


class ExternalRequestFailed(WorkflowError):
    """``workflow.signal_external`` / ``cancel_external`` reached a running workflow that refused it (a signal
    name it does not define, arguments its handler does not take). A missing or ended target raises
    ``WorkflowNotFound`` / ``WorkflowNotRunning`` instead; all three are catchable in workflow code."""

    def __init__(self, workflow_id: str, error_type: str, message: str) -> None:
        super().__init__(f"workflow {workflow_id} refused the request: {error_type}: {message}")
        self.workflow_id = workflow_id
        self.error_type = error_type
        self.message = message


def external_error(workflow_id: str, error_type: str | None, message: str | None) -> WorkflowError:
    """The exception awaiting code sees for a refused ``signal_external``/``cancel_external`` (recorded as
    ExternalResolved: for ``WorkflowNotRunning`` the message is the target's status)."""
    if error_type == "WorkflowNotFound":
        return WorkflowNotFound(workflow_id)
    if error_type == "WorkflowNotRunning":
        return WorkflowNotRunning(workflow_id, message or "ended")
    return ExternalRequestFailed(workflow_id, error_type or "Error", message or "")


class AlreadyCompensated(WorkflowError, ValueError):
    """``retry`` of a failed workflow whose saga already ran its compensations (``Workflow.compensate``
    recorded ``SagaCompensated``): the new run would redo from the last good step with the earlier steps
    already undone. Nothing was sent; ``retry(force=True)`` / ``metamorph retry ID --force`` retries anyway.
    """

    def __init__(self, workflow_id: str, steps: int, seq: int) -> None:
        super().__init__(
            f"workflow {workflow_id} already compensated ({steps} undo step(s) from event {seq}): a retry would "
            "carry on from the last good step although its effects were undone; retry with force to do it anyway"
        )
        self.workflow_id = workflow_id
        self.steps = steps
        self.seq = seq


def check_not_compensated(workflow_id: str, history: list[dict]) -> None:
    """AlreadyCompensated if the run's ``history`` (the client's view, oldest first) has a SagaCompensated.

    Why the client may decide this from the projection: the run is ``failed`` there only once its
    WorkflowFailed is projected, and the projector applies a partition's events in order, so the marker
    that came before the failure is there too.
    """
    marker = next((e for e in history if e["type"] == "SagaCompensated"), None)
    if marker is not None:
        data = marker["data"] if isinstance(marker.get("data"), dict) else marker
        raise AlreadyCompensated(workflow_id, int(data.get("steps") or 0), marker["seq"])


class QueryFailed(WorkflowError):
    """A query or update the workflow could not answer (no such handler, bad arguments, handler raised)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


class PayloadTooLarge(WorkflowError, PayloadTooLargeError):
    """A payload above ``METAMORPH_MAX_PAYLOAD`` (default 2 MiB); see :func:`limited_payload`.

    Raised by the client before any send; inside workflow code at the call that produced the payload (so
    the step fails, or the code catches it); an activity whose result is too large fails (non-retryable)
    with this error type. Also a ``ValueError`` (and ``eventstore.log.PayloadTooLargeError``), so callers
    that already caught the record-size error keep working.
    """

    def __init__(self, what: str, size: int, limit: int) -> None:
        ValueError.__init__(self, f"PayloadTooLarge: {what} is {size} bytes encoded; the limit is {limit} bytes "
                                  "(METAMORPH_MAX_PAYLOAD)")
        self.size = size
        self.limit = limit


def limited_payload(what: str, value: Any) -> bytes:
    """Encode a user payload and refuse it above ``METAMORPH_MAX_PAYLOAD``: the one check of the limit.

    Why one function: the client, the node (workflow results, activity/child/signal arguments, stream
    items), activity workers (results) and ``actors.testing.WorkflowEnvironment`` all call it, so what
    passes in a test passes in production and the error reads the same everywhere.
    """
    data = payloads.encode(value)
    limit = payloads.max_payload()
    if len(data) > limit:
        raise PayloadTooLarge(what, len(data), limit)
    return data

class NotConfigured(WorkflowError, RuntimeError):
    """A client or server lacks configuration the call needs (no PostgreSQL URL for a read, no topics for
    the namespace): a setup problem to fix, not an outage to wait out. HTTP 503, CLI usage exit status."""


class NotRetryable(WorkflowError, ValueError):
    """A retry of a workflow that has not failed (or, without ``force``, a compensated one): nothing was sent.

    A ``ValueError`` too, as ``retry()`` has always raised one; HTTP 409, CLI exit status 6 "refused".
    """


# -- the one error table (HTTP status and CLI exit status of every error an interface reports) ------------
@dataclass(frozen=True)
class ErrorKind:
    """How the interfaces report one kind of error: HTTP status, the ``error`` name of the JSON body (None:
    the exception's ``error_type`` or class name) and the CLI exit status."""

    status: int
    error: str | None
    exit_code: int


EXIT_OK, EXIT_WORKFLOW, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_TIMEOUT, EXIT_UNREACHABLE, EXIT_REFUSED = range(7)
EXIT_INTERNAL, EXIT_INTERRUPTED = 70, 130
INTERNAL = ErrorKind(500, "InternalError", EXIT_INTERNAL)


def error_table() -> list[tuple[type[BaseException], ErrorKind]]:
    """Exception type → how the HTTP API and the CLI report it; the first ``isinstance`` match wins.

    One table so that ``metamorph`` and the HTTP API cannot disagree about what an error means (a 409 is
    always exit status 6). Built lazily: the driver modules it names are heavy imports.
    """
    import psycopg
    from kafka.errors import KafkaError

    from eventstore.payloads import PayloadError
    from eventstore.topics import TopicMismatchError

    return [
        (WorkflowNotFound, ErrorKind(404, "WorkflowNotFound", EXIT_NOT_FOUND)),
        (WorkflowFailed, ErrorKind(409, "WorkflowFailed", EXIT_WORKFLOW)),
        (WorkflowCancelled, ErrorKind(409, "WorkflowCancelled", EXIT_WORKFLOW)),
        (WorkflowTerminated, ErrorKind(409, "WorkflowTerminated", EXIT_WORKFLOW)),
        (WorkflowTimedOut, ErrorKind(409, "WorkflowTimedOut", EXIT_WORKFLOW)),
        (QueryFailed, ErrorKind(409, None, EXIT_REFUSED)),
        (WorkflowNotRunning, ErrorKind(409, "WorkflowNotRunning", EXIT_REFUSED)),
        (WorkflowAlreadyStarted, ErrorKind(409, "WorkflowAlreadyStarted", EXIT_REFUSED)),
        (NotRetryable, ErrorKind(409, "NotRetryable", EXIT_REFUSED)),
        (AlreadyCompensated, ErrorKind(409, "AlreadyCompensated", EXIT_REFUSED)),  # before ValueError: a subclass
        (PayloadTooLargeError, ErrorKind(413, "PayloadTooLarge", EXIT_USAGE)),
        (PayloadError, ErrorKind(400, "BadRequest", EXIT_USAGE)),  # arguments the converter refuses
        (TopicMismatchError, ErrorKind(503, "Unavailable", EXIT_USAGE)),
        (RecursionError, ErrorKind(400, "BadRequest", EXIT_USAGE)),  # a body nested too deep to parse
        # Any other ValueError is a parameter the Client refused (an unknown status filter, say).
        (ValueError, ErrorKind(400, "BadRequest", EXIT_USAGE)),
        (ConnectionError, ErrorKind(503, "Unavailable", EXIT_UNREACHABLE)),
        (KafkaError, ErrorKind(503, "Unavailable", EXIT_UNREACHABLE)),
        (psycopg.OperationalError, ErrorKind(503, "Unavailable", EXIT_UNREACHABLE)),
        (TimeoutError, ErrorKind(504, "Timeout", EXIT_TIMEOUT)),
        # Not configured: no PostgreSQL, no topics (run `metamorph init`); a usage error for the CLI.
        (NotConfigured, ErrorKind(503, "NotConfigured", EXIT_USAGE)),
        (RuntimeError, ErrorKind(503, "Unavailable", EXIT_USAGE)),
        (OSError, ErrorKind(503, "Unavailable", EXIT_USAGE)),
    ]


def classify(exc: BaseException) -> ErrorKind:
    """The :func:`error_table` entry of ``exc`` (``INTERNAL`` when none matches)."""
    for kind, info in error_table():
        if isinstance(exc, kind):
            return info
    return INTERNAL
