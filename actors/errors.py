"""The exceptions of the public API (API.md section 4); all importable from ``actors``."""

from __future__ import annotations

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
    """Replayed code issued a different command than history recorded at that point."""


class WorkflowFailed(WorkflowError):
    def __init__(self, workflow_id: str, error_type: str, message: str, traceback: str = "") -> None:
        super().__init__(f"workflow {workflow_id} failed: {error_type}: {message}")
        self.workflow_id = workflow_id
        self.error_type = error_type
        self.message = message
        self.traceback = traceback


class WorkflowCancelled(WorkflowError):
    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"workflow {workflow_id} was cancelled")
        self.workflow_id = workflow_id


class WorkflowTerminated(WorkflowError):
    def __init__(self, workflow_id: str, reason: str | None = None) -> None:
        super().__init__(f"workflow {workflow_id} was terminated" + (f": {reason}" if reason else ""))
        self.workflow_id = workflow_id
        self.reason = reason


class WorkflowNotFound(WorkflowError, LookupError):
    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"no workflow with id {workflow_id!r}")
        self.workflow_id = workflow_id


class QueryFailed(WorkflowError):
    """A query or update the workflow could not answer (no such handler, bad arguments, handler raised)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


class PayloadTooLarge(WorkflowError, PayloadTooLargeError):
    """Arguments above ``METAMORPH_MAX_PAYLOAD`` (default 2 MiB), refused by the client before any send.

    Also a ``ValueError`` (and ``eventstore.log.PayloadTooLargeError``), so callers that already caught the
    record-size error keep working.
    """
