"""The typed request and response bodies of the HTTP API; the OpenAPI document is generated from them.

Why models rather than hand-checked dicts: one declaration validates the request (a wrong type is a 400
naming the field), shapes the response (FastAPI checks what an endpoint returns against its model) and
documents both, so the document cannot drift from what the server does. Request models forbid unknown
fields (a typo such as ``if_runing`` is refused, not silently ignored) and are strict (``"5"`` is not a
number, ``true`` is not an integer). Response models allow extra fields: a projection row may grow a
column without breaking clients.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from actors.client.sync import BATCH_ACTIONS
from eventstore.statuses import Status

IfRunning = Literal["use_existing", "fail", "terminate"]
IfClosed = Literal["use_existing", "fail", "allow", "allow_failed"]
Overlap = Literal["skip", "buffer_one", "allow_all", "cancel_other", "terminate_other"]
BatchAction = Literal[BATCH_ACTIONS]  # type: ignore[valid-type]
#: The longest duration the API takes (seconds; ten years): beyond it datetime arithmetic overflows.
MAX_SECONDS = 10 * 366 * 24 * 3600


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- errors and ops --------------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    """Every error: ``error`` a stable name (``WorkflowNotFound``, ``BadRequest``...), ``message`` for people."""

    error: str
    message: str


class Health(_Response):
    status: Literal["ok"]
    namespace: str


# -- workflows -------------------------------------------------------------------------------------------
class Workflow(_Response):
    """A workflow's projection row (its current run)."""

    id: str
    run_id: str | None = None
    type: str
    status: Status
    input: Any = None
    output: Any = None
    error_type: str | None = None
    error_message: str | None = None
    error_traceback: str | None = None
    parent_id: str | None = None
    search: dict[str, Any] | None = None
    memo: dict[str, Any] | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    closed_at: datetime | None = None


class WorkflowPage(_Response):
    workflows: list[Workflow]
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page (null on the last)")
    next_cursor: str | None = Field(description="Pass as cursor for the next page (null on the last)")


class Count(_Response):
    count: int


class Event(_Response):
    """One history event: ``seq``, ``type``, ``at`` and the event's own fields (see the Avro schemas)."""

    seq: int
    type: str
    at: datetime | None = None


class WorkflowDetails(Workflow):
    history: list[Event]
    activities: list[dict[str, Any]]
    exceptions: list[dict[str, Any]]
    children: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    signals: list[dict[str, Any]]


class History(_Response):
    id: str
    events: list[Event]


class StartRequest(_Request):
    """A start with the options of docs/API.md §6."""

    type: str = Field(min_length=1, description="Workflow type name")
    args: list[Any] = Field(default_factory=list, description="Positional arguments of execute()")
    id: str | None = Field(default=None, min_length=1, description="Workflow id (default: a new UUID); any characters")
    # Policies as strings with the choices documented: the Client checks them and words the refusal.
    if_running: str | None = Field(default=None, json_schema_extra={"enum": [*get_args(IfRunning), None]},
                                   description="An open run with this id exists (default use_existing)")
    if_closed: str | None = Field(default=None, json_schema_extra={"enum": [*get_args(IfClosed), None]},
                                  description="The last run with this id has ended (default use_existing)")
    start_signal: str | None = Field(default=None, min_length=1, description="Signal-with-start: delivered before the first step")
    start_signal_args: list[Any] | None = None
    start_delay: float | None = Field(default=None, ge=0, le=MAX_SECONDS, description="Seconds before the first step")
    timeout: float | None = Field(default=None, gt=0, le=MAX_SECONDS, description="Seconds the whole execution may take; then it ends timed_out")
    search: dict[str, Any] | None = Field(default=None, description="Search attributes: str, number, bool, ISO datetime "
                                          "(the Client refuses other values, naming the key)")
    memo: dict[str, Any] | None = Field(default=None, description="Any JSON object, shown with the workflow")
    priority: int | None = Field(default=None, ge=0, le=9, description="0 (first) .. 9; default 5")


class UpdateWithStartRequest(StartRequest):
    """Update-with-start (docs/API.md §6): the start options plus the update to run on the open or new run."""

    id: str = Field(min_length=1, description="Workflow id (required: the update needs to know its target)")  # type: ignore[assignment]
    update: str = Field(min_length=1, description="Update handler name")
    update_args: list[Any] = Field(default_factory=list)
    update_timeout: float = Field(default=10.0, gt=0, le=3600, description="Seconds to wait for the update's answer")


class Started(_Response):
    id: str
    run_id: str | None = None


class CallRequest(_Request):
    """The body of signal, query and update."""

    args: list[Any] = Field(default_factory=list)
    timeout: float = Field(default=10.0, gt=0, le=3600, description="Seconds to wait for the answer (queries and updates)")


class CallResult(_Response):
    id: str
    result: Any = None


class ReasonRequest(_Request):
    reason: str | None = None


class ResetRequest(_Request):
    seq: int = Field(ge=1, description="The last event the new run keeps")


class RetryRequest(_Request):
    force: bool = Field(default=False, description="Retry even a run whose compensations ran (if the client supports it)")


class BatchRequest(_Request):
    action: BatchAction
    status: Status | None = Field(default=None, strict=False)
    type: str | None = None
    search: dict[str, Any] | None = Field(default=None, description='Attribute filters: {"k": v} or {"k": [op, v]}')
    reason: str | None = None
    signal: str | None = None
    args: list[Any] = Field(default_factory=list)


class BatchResult(_Response):
    action: str
    count: int


# -- replay ----------------------------------------------------------------------------------------------
class RecordedHistory(BaseModel):
    """A history object as ``metamorph history ID --json`` may write it (a bare array of events works too)."""

    model_config = ConfigDict(extra="allow")
    events: list[dict[str, Any]]
    workflow_id: str | None = None
    workflow_type: str | None = None
    run_id: str | None = None


class Nondeterminism(_Response):
    seq: int | None
    recorded: str | None
    issued: str | None
    message: str


class ReplayReport(_Response):
    """The outcome of replaying one history against the code this server imported (``serve --app``)."""

    workflow_id: str
    workflow_type: str
    run_id: str
    events: int
    deterministic: bool
    status: str | None = Field(default=None, description="The run's status at the end of the history (if deterministic)")
    nondeterminism: Nondeterminism | None = None


# -- schedules -------------------------------------------------------------------------------------------
class ScheduleRequest(_Request):
    """Create (or, for an existing id, update) a schedule (docs/API.md §8): exactly one of cron or every."""

    id: str = Field(min_length=1)
    type: str = Field(min_length=1)
    args: list[Any] = Field(default_factory=list)
    paused: bool = False
    cron: str | None = Field(default=None, description="5-field cron")
    every: float | None = Field(default=None, ge=1, le=MAX_SECONDS, description="Seconds between firings (at least 1)")
    timezone: str | None = None
    overlap: Overlap | None = None
    catchup_window: float | None = Field(default=None, ge=0, le=MAX_SECONDS)
    jitter: float | None = Field(default=None, ge=0, le=MAX_SECONDS)
    start_at: datetime | None = Field(default=None, strict=False)
    end_at: datetime | None = Field(default=None, strict=False)


class ScheduleInfo(_Response):
    id: str
    spec: dict[str, Any]
    paused: bool
    next_runs: list[str] = []
    recent_runs: list[dict[str, Any]] = []


class ScheduleList(_Response):
    schedules: list[ScheduleInfo]


class SchedulePause(_Request):
    note: str | None = None


class Backfill(_Request):
    start: datetime = Field(strict=False)
    end: datetime = Field(strict=False)


class ScheduleDone(_Response):
    id: str
    action: str
    result: Any = None


class NoBody(_Request):
    """cancel and resume take no parameters (an empty object, or no body, is accepted)."""


class SignalAccepted(_Response):
    """The signal is durably in Kafka; the workflow handles it next."""

    id: str
    signal: str


class Requested(_Response):
    """The command is durably in Kafka; the workflow acts on it next."""

    id: str
    requested: str


class ResetRequested(Requested):
    seq: int
