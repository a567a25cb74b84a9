"""The administration REST API on the server's port (docs/administration-api.md): JSON in
and out, authenticated by the administration token (`Authorization: Bearer`).

Order of the checks: the OpenAPI document (`/administration/openapi.json`) is public;
every other path first needs the token (401 without one, 403 with a wrong one, an audit
line with the peer address, docs/audit-log.md: nothing about the routes is told before),
then a route (404, 405), then the query and the body (400, 413, 415), then the handler.
Every answer is JSON, errors included; an unexpected failure is logged and answered 500
as JSON.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from parsec_server.backend.asgi import request_log
from parsec_server.backend.asgi.administration.http import (
    ApiError,
    Receive,
    check_bearer,
    decode_body,
    decode_query,
    error_response,
    read_body,
    response,
)
from parsec_server.backend.asgi.administration.openapi import openapi_document
from parsec_server.backend.asgi.administration.request import AdminRequest
from parsec_server.backend.asgi.administration.routes import OPENAPI_PATH, PREFIX, ROUTES
from parsec_server.backend.asgi.proxy import peer_address
from parsec_server.backend.asgi.routes import HttpResponse, package_version, send_response
from parsec_server.backend.audit import NO_TARGET, REFUSED, Action, Actor

if TYPE_CHECKING:
    from parsec_server.backend.app import BackendApp

logger = structlog.get_logger("parsec.administration")


@functools.cache
def openapi_json() -> bytes:
    return msgspec.json.encode(openapi_document(package_version()))


class AdministrationApi:
    def __init__(self, backend: BackendApp) -> None:
        self._backend = backend
        self._debug = backend.config.debug

    @staticmethod
    def handles(path: str) -> bool:
        return path == PREFIX or path.startswith(PREFIX + "/")

    async def serve(self, scope: Any, receive: Receive, send: Any) -> None:
        started = time.perf_counter()
        answer = await self.respond(scope, receive)
        await send_response(send, answer)
        if request_log.enabled():
            request_log.http_request(scope, scope["method"], scope["path"], answer.status, started)

    async def respond(self, scope: Any, receive: Receive) -> HttpResponse:
        try:
            return await self._respond(scope, receive)
        except ApiError as exc:
            return error_response(exc, self._debug)
        except Exception:
            logger.exception("Administration API request failed", path=scope["path"])
            return error_response(ApiError(500, "internal_error"), self._debug)

    async def _respond(self, scope: Any, receive: Receive) -> HttpResponse:
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf8")
        path = raw_path.decode("latin-1")
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if path == OPENAPI_PATH:
            if method != "GET":
                raise _method_not_allowed(["GET"])
            return response(200, openapi_json(), debug=self._debug)

        peer = peer_address(scope)
        refused = check_bearer(headers, self._backend.config.administration_token)
        if refused is not None:
            self._backend.audit.record(
                Action.ADMINISTRATION_TOKEN_REFUSED,
                Actor.peer(peer),
                NO_TARGET,
                REFUSED,
                "no_administration_token" if refused.status == 401 else "bad_administration_token",
                status=refused.status,
            )
            raise refused

        segments = path.split("/")[1:]
        matching = [(r, p) for r in ROUTES if (p := r.match(segments)) is not None]
        if not matching:
            raise ApiError(404, "not_found", "No such route")
        found = [(r, p) for r, p in matching if r.method == method]
        if not found:
            raise _method_not_allowed([r.method for r, _ in matching])
        route, params = found[0]
        query = None if route.query is None else decode_query(scope["query_string"], route.query)
        body = None
        if route.body is not None:
            raw = await read_body(headers, receive, self._backend.config.http_header_timeout)
            body = decode_body(raw, route.body)
        actor = Actor.administration_token(peer)
        return await route.handler(AdminRequest(self._backend, actor, params, query, body))


def _method_not_allowed(allowed: list[str]) -> ApiError:
    error = ApiError(405, "method_not_allowed", f"Allowed: {', '.join(sorted(allowed))}")
    error.headers.append((b"allow", ", ".join(sorted(allowed)).encode("ascii")))
    return error
