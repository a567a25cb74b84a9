"""The routes of the administration API: one table, read by the dispatcher (`api.py`) and
by the OpenAPI generator (`openapi.py`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from parsec_server.backend.asgi.administration import handlers
from parsec_server.backend.asgi.administration import schemas as s
from parsec_server.backend.asgi.administration.request import AdminRequest
from parsec_server.backend.asgi.routes import HttpResponse

PREFIX = "/administration"
OPENAPI_PATH = f"{PREFIX}/openapi.json"

Handler = Callable[[AdminRequest], Awaitable[HttpResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # `{name}` is one path segment
    handler: Handler
    summary: str
    response: Any  # the Struct of the 200 answer
    body: Any = None  # the request body's type (a Struct, possibly Annotated)
    query: Any = None  # the Struct of the query parameters
    # Error answers of this route besides those every route has (401, 403) and those of a
    # body or a query (400, 413, 415), with what they mean.
    errors: dict[int, str] = field(default_factory=dict)
    csv: bool = False  # also answers text/csv
    segments: tuple[str, ...] = ()

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """The path parameters when `segments` (raw, still percent-encoded) is this path."""
        if len(segments) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for template, segment in zip(self.segments, segments, strict=True):
            if template.startswith("{"):
                try:
                    value = unquote(segment, errors="strict")
                except UnicodeDecodeError:
                    return None
                if not value:
                    return None
                params[template[1:-1]] = value
            elif template != segment:
                return None
        return params


def _route(method: str, path: str, handler: Handler, summary: str, **kw: Any) -> Route:
    return Route(method, path, handler, summary, segments=tuple(path.split("/")[1:]), **kw)


_ORGANIZATION = f"{PREFIX}/organizations/{{organization_id}}"
_NOT_FOUND = {404: "Unknown organization"}

ROUTES: tuple[Route, ...] = (
    _route(
        "POST",
        f"{PREFIX}/organizations",
        handlers.create_organization,
        "Create an organization; answers its bootstrap URL",
        response=s.OrganizationCreateRep,
        body=s.OrganizationCreateReq,
        errors={400: "Invalid data, or the organization already exists (`already_exists`)"},
    ),
    _route(
        "GET",
        f"{PREFIX}/organizations",
        handlers.list_organizations,
        "List the organizations, in id order",
        response=s.OrganizationListRep,
        query=s.OrganizationListQuery,
    ),
    _route(
        "GET",
        _ORGANIZATION,
        handlers.get_organization,
        "An organization's state and settings",
        response=s.OrganizationRep,
        errors=_NOT_FOUND,
    ),
    _route(
        "PATCH",
        _ORGANIZATION,
        handlers.update_organization,
        "Change an organization's expiration or settings; answers its new state",
        response=s.OrganizationRep,
        body=s.OrganizationUpdateBody,
        errors=_NOT_FOUND,
    ),
    _route(
        "GET",
        f"{_ORGANIZATION}/stats",
        handlers.organization_stats,
        "An organization's current stats",
        response=s.OrganizationStatsRep,
        errors=_NOT_FOUND,
    ),
    _route(
        "GET",
        f"{PREFIX}/stats",
        handlers.server_stats,
        "The stats of every organization as of a date, in JSON or CSV",
        response=s.ServerStatsRep,
        query=s.ServerStatsQuery,
        csv=True,
    ),
    _route(
        "GET",
        f"{_ORGANIZATION}/users",
        handlers.list_users,
        "The users of an organization, in id order",
        response=s.UserListRep,
        errors=_NOT_FOUND,
    ),
    _route(
        "POST",
        f"{_ORGANIZATION}/users/freeze",
        handlers.freeze_user,
        "Freeze a user (its devices are refused, its connections closed) or unfreeze it",
        response=s.UserRep,
        body=s.UserFreezeBody,
        errors={404: "Unknown organization or user"},
    ),
)
