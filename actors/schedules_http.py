"""The ``/schedules`` routes of the HTTP API (API.md §8, §13), kept apart from ``http.py``.

Reads are GET; everything that changes a schedule is POST or DELETE, so the guard of ``http.py`` asks for a
token that may act (not ``ro:``) when tokens are configured, with no special case here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .routing import IdRoute

if TYPE_CHECKING:
    from .client import Client

_SPEC_FIELDS = ("cron", "every", "timezone", "overlap", "catchup_window", "jitter", "start_at", "end_at")
ACTIONS = ("pause", "resume", "trigger", "backfill")


class _Schedules:
    def __init__(self, client: Client, body: Any, json: Any) -> None:
        self.client, self._body, self._json = client, body, json

    async def list(self, request: Request) -> Response:
        return self._json({"schedules": await run_in_threadpool(self.client.list_schedules)})

    async def create(self, request: Request) -> Response:
        from .http import BadRequest

        body = await self._body(request)
        for key in ("id", "type"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise BadRequest(f'"{key}" is required (a non-empty string)')
        args = body.get("args", [])
        if not isinstance(args, list):
            raise BadRequest('"args" must be a JSON array')
        unknown = set(body) - {"id", "type", "args", "paused", *_SPEC_FIELDS}
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
        spec = {k: body[k] for k in _SPEC_FIELDS if k in body}
        handle = await run_in_threadpool(
            lambda: self.client.schedule(body["id"], body["type"], *args, paused=bool(body.get("paused")), **spec)
        )
        info = await run_in_threadpool(handle.describe)
        return self._json(info, status_code=201)

    async def describe(self, request: Request) -> Response:
        handle = self.client.get_schedule(request.path_params["id"])
        return self._json(await run_in_threadpool(handle.describe))

    async def act(self, request: Request) -> Response:
        from .http import BadRequest

        handle = self.client.get_schedule(request.path_params["id"])
        action = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        body = await self._body(request)
        if action == "pause":
            result: Any = await run_in_threadpool(handle.pause, body.get("note"))
        elif action == "backfill":
            if not isinstance(body.get("start"), str) or not isinstance(body.get("end"), str):
                raise BadRequest('"start" and "end" (ISO 8601 times) are required')
            result = await run_in_threadpool(handle.backfill, body["start"], body["end"])
        else:
            result = await run_in_threadpool(getattr(handle, action))
        return self._json({"id": handle.id, "action": action, "result": result})

    async def delete(self, request: Request) -> Response:
        handle = self.client.get_schedule(request.path_params["id"])
        await run_in_threadpool(handle.delete)
        return self._json({"id": handle.id, "action": "delete", "result": True})


def routes(client: Client, body: Any, json: type[JSONResponse]) -> list:
    """The routes; ``body`` and ``json`` are http.py's request-body parser and JSON response class."""
    api = _Schedules(client, body, json)
    sid = "/schedules/{id}"
    return [
        _plain("/schedules", api.list, ["GET"]),
        _plain("/schedules", api.create, ["POST"]),
        *(IdRoute(f"{sid}/{action}", api.act, methods=["POST"]) for action in ACTIONS),
        IdRoute(sid, api.describe, methods=["GET"]),
        IdRoute(sid, api.delete, methods=["DELETE"]),
    ]


def _plain(path: str, endpoint: Any, methods: list[str]) -> Any:
    from starlette.routing import Route

    return Route(path, endpoint, methods=methods)


def openapi_paths(op: Any, json: Any, ref_errors: Any, path_param: Any, body_schema: Any) -> dict:
    """OpenAPI entries for the routes above (http.py's helpers passed in, so the document stays one style)."""
    sid = path_param("id", "Schedule id")
    obj = {"type": "object"}
    spec_body = {
        "type": "object", "required": ["id", "type"],
        "properties": {
            "id": {"type": "string"}, "type": {"type": "string"}, "args": {"type": "array"}, "paused": {"type": "boolean"},
            "cron": {"type": "string", "description": "5-field cron"}, "every": {"type": "number", "minimum": 1},
            "timezone": {"type": "string"}, "overlap": {"type": "string", "enum": ["skip", "buffer_one", "allow_all", "cancel_other", "terminate_other"]},
            "catchup_window": {"type": "number"}, "jitter": {"type": "number"},
            "start_at": {"type": "string", "format": "date-time"}, "end_at": {"type": "string", "format": "date-time"},
        },
    }
    paths: dict[str, dict] = {
        "/schedules": {
            "get": op("listSchedules", "Every schedule, described", {"200": json(obj, "The schedules"), **ref_errors(503)},
                      tags=["schedules"]),
            "post": op("createSchedule", "Create a schedule (an existing id is updated)",
                       {"201": json(obj, "The schedule, described"), **ref_errors(400, 413, 503, 504)},
                       body=body_schema(spec_body, required=True), tags=["schedules"]),
        },
        "/schedules/{id}": {
            "get": op("describeSchedule", "Spec, paused, next runs and recent runs",
                      {"200": json(obj, "The schedule"), **ref_errors(404, 503, 504)}, [sid], tags=["schedules"]),
            "delete": op("deleteSchedule", "End the schedule (runs it started go on)",
                         {"200": json(obj, "Deleted"), **ref_errors(404, 409, 503, 504)}, [sid], tags=["schedules"]),
        },
    }
    bodies = {"pause": {"type": "object", "properties": {"note": {"type": "string"}}},
              "backfill": {"type": "object", "required": ["start", "end"],
                           "properties": {"start": {"type": "string", "format": "date-time"},
                                          "end": {"type": "string", "format": "date-time"}}}}
    for action in ACTIONS:
        paths[f"/schedules/{{id}}/{action}"] = {
            "post": op(f"{action}Schedule", f"{action.capitalize()} the schedule",
                       {"200": json(obj, "Done"), **ref_errors(400, 404, 409, 503, 504)}, [sid],
                       body_schema(bodies[action]) if action in bodies else None, tags=["schedules"]),
        }
    return paths
