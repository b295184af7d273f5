"""Routes whose path parameters may hold any character, ``/`` included (shared by the API and the webhooks)."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from fastapi.routing import APIRoute
from starlette.routing import Match, Route


def route_path(scope: MutableMapping[str, Any]) -> str:
    """The request path as received (percent-encoding kept), so an encoded ``/`` in an id stays inside it."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else scope["path"]
    root = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class _AnyCharId:
    """The matching both route kinds share: match the raw path (``%2F`` still encoded), then decode ``id``."""

    def matches(self, scope: Any) -> tuple[Match, Any]:
        if scope["type"] != "http":
            return Match.NONE, {}
        match, child = super().matches({**scope, "path": route_path(scope), "root_path": ""})  # type: ignore[misc]
        if match != Match.NONE:
            child["path_params"] = {k: unquote(v) for k, v in child["path_params"].items()}
        return match, child


class IdRoute(_AnyCharId, Route):
    """A route whose ``{id}`` may contain ``/`` (and anything else), matched on the raw path.

    Why the raw path: Starlette decodes ``%2F`` before routing, so ``/workflows/a%2Fcancel`` and
    ``/workflows/a/cancel`` would look alike. Matching the still-encoded path with ``{id:path}`` and
    decoding the parameters afterwards addresses every id exactly when the client encodes it, and still
    accepts an unencoded ``/`` (the last known suffix wins). ``path`` keeps the documented template, which
    the OpenAPI document and the request metrics use.
    """

    def __init__(self, template: str, endpoint: Callable[..., Any], methods: list[str]) -> None:
        super().__init__(template.replace("{id}", "{id:path}", 1), endpoint, methods=methods)
        self.path = template


class IdAPIRoute(_AnyCharId, APIRoute):
    """:class:`IdRoute` for the typed (FastAPI) routes: ``{id}`` may hold any character, ``/`` included.

    ``path`` keeps the documented template (``/workflows/{id}/history``), as for ``IdRoute``; FastAPI
    documents ``path_format``, which is the same template.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path.replace("{id}", "{id:path}", 1), endpoint, **kwargs)
        self.path = path
