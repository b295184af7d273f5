"""The ``/schedules`` routes of the HTTP API (docs/API.md §8, §13), kept apart from ``http.py``.

Reads declare the ``reading`` permission; everything that changes a schedule (POST, DELETE) ``acting``, so
a read-only token gets 403. Schedule ids, like workflow ids, may hold any character (percent-encoded).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Path

from actors.interfaces.http_models import (
    Backfill,
    ScheduleDone,
    ScheduleInfo,
    ScheduleList,
    SchedulePause,
    ScheduleRequest,
)

if TYPE_CHECKING:
    from actors.client.sync import Client

ACTIONS = ("pause", "resume", "trigger", "backfill")
SID = Path(description="Schedule id, percent-encoded")


def add_routes(app: FastAPI, client: Client) -> None:
    """Add the schedule routes to ``app`` (http.py's permissions and error documentation)."""
    from actors.interfaces.http import ACTS, READS, _errors, plain

    tags: list[str | Any] = ["schedules"]

    @app.get("/schedules", response_model=ScheduleList, dependencies=READS, tags=tags,
             operation_id="listSchedules", responses=_errors(401, 503))
    def list_schedules() -> dict:
        """Every schedule not deleted, described."""
        return {"schedules": plain(client.list_schedules())}

    @app.post("/schedules", status_code=201, response_model=ScheduleInfo, dependencies=ACTS, tags=tags,
              operation_id="createSchedule", responses=_errors(400, 401, 403, 413, 503, 504))
    def create_schedule(body: ScheduleRequest) -> dict:
        """Create a schedule (an existing id is updated): exactly one of ``cron`` or ``every``."""
        spec = body.model_dump(exclude_none=True, exclude={"id", "type", "args", "paused"})
        handle = client.schedule(body.id, body.type, *body.args, paused=body.paused, **spec)
        return plain(handle.describe())

    def done(id: str, action: str, result: Any) -> dict:  # noqa: A002
        return {"id": id, "action": action, "result": result}

    def pause(id: str = SID, body: SchedulePause | None = None) -> dict:  # noqa: A002
        """Pause: no firing until resumed."""
        client.get_schedule(id).pause(body.note if body else None)
        return done(id, "pause", None)

    def resume(id: str = SID) -> dict:  # noqa: A002
        """Resume from now on (fire times that passed while paused are not fired)."""
        client.get_schedule(id).resume()
        return done(id, "resume", None)

    def trigger(id: str = SID) -> dict:  # noqa: A002
        """Fire now (honouring the overlap policy); the result is the run id."""
        return done(id, "trigger", client.get_schedule(id).trigger())

    def backfill(body: Backfill, id: str = SID) -> dict:  # noqa: A002
        """Fire every spec time in [start, end]; the result is how many."""
        return done(id, "backfill", client.get_schedule(id).backfill(body.start, body.end))

    endpoints: tuple[Callable[..., dict], ...] = (pause, resume, trigger, backfill)
    for action, endpoint in zip(ACTIONS, endpoints, strict=True):
        app.add_api_route(f"/schedules/{{id}}/{action}", endpoint, methods=["POST"], response_model=ScheduleDone,
                          dependencies=ACTS, tags=tags, operation_id=f"{action}Schedule",
                          responses=_errors(400, 401, 403, 404, 409, 413, 503, 504))

    @app.get("/schedules/{id}", response_model=ScheduleInfo, dependencies=READS, tags=tags,
             operation_id="describeSchedule", responses=_errors(400, 401, 404, 503, 504))
    def describe_schedule(id: str = SID) -> dict:  # noqa: A002
        """Spec, paused, next runs and recent runs."""
        return plain(client.get_schedule(id).describe())

    @app.delete("/schedules/{id}", response_model=ScheduleDone, dependencies=ACTS, tags=tags,
                operation_id="deleteSchedule", responses=_errors(400, 401, 403, 404, 409, 503, 504))
    def delete_schedule(id: str = SID) -> dict:  # noqa: A002
        """End the schedule (runs it started go on)."""
        handle = client.get_schedule(id)
        handle.delete()
        return {"id": handle.id, "action": "delete", "result": True}

