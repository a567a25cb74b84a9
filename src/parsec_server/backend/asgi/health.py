"""`GET /healthz` and `GET /readyz` (docs/deployment.md), on the main port, without
authentication.

* `/healthz`: the process answers (liveness): always 200 `{"status": "ok"}`.
* `/readyz`: the process can serve (readiness): 200 `{"status": "ready", "checks": ...}`
  when the database, the event listener and the blockstore work, else 503 with
  `"not_ready"` and the detail of each check; 503 at once, without checking anything,
  once the process is shutting down.

A readiness result is reused for `READINESS_CACHE_SECONDS`, and requests arriving while a
check runs share it: however often a load balancer (or anyone, since there is no
authentication) asks, the dependencies see at most one round of checks per second.
`HEAD` is answered like `GET`, without the body.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from parsec_server.backend.asgi.lifecycle import Lifecycle
from parsec_server.backend.asgi.routes import HttpResponse, common_headers, send_response
from parsec_server.backend.readiness import Readiness, ReadinessReport

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
PATHS = frozenset({HEALTH_PATH, READY_PATH})
READINESS_CACHE_SECONDS = 1.0
SHUTTING_DOWN = {"status": "not_ready", "reason": "shutting down", "checks": {}}


class HealthRoutes:
    def __init__(self, readiness: Readiness, lifecycle: Lifecycle, debug: bool) -> None:
        self._readiness = readiness
        self._lifecycle = lifecycle
        self._debug = debug
        self._cached: ReadinessReport | None = None
        self._cached_at = float("-inf")
        self._running: asyncio.Task[ReadinessReport] | None = None

    @staticmethod
    def handles(path: str) -> bool:
        return path in PATHS

    async def serve(self, scope: Any, send: Any) -> None:
        """Answer an ASGI HTTP request for one of `PATHS` (one request per connection, as
        every plain HTTP answer of the server)."""
        await send_response(send, await self.respond(scope["method"], scope["path"]))

    async def respond(self, method: str, path: str) -> HttpResponse:
        tail = common_headers(self._debug)
        if method not in ("GET", "HEAD"):
            return HttpResponse(405, tail)
        if path == HEALTH_PATH:
            return _json(200, {"status": "ok"}, tail)
        if self._lifecycle.draining:
            return _json(503, SHUTTING_DOWN, tail)
        report = await self._report()
        if self._lifecycle.draining:  # started shutting down meanwhile
            return _json(503, SHUTTING_DOWN, tail)
        return _json(200 if report.ready else 503, report.to_json(), tail)

    async def _report(self) -> ReadinessReport:
        loop = asyncio.get_running_loop()
        if self._cached is not None and loop.time() - self._cached_at < READINESS_CACHE_SECONDS:
            return self._cached
        if self._running is None:
            self._running = asyncio.create_task(self._check())
        # Shielded: a client leaving does not cancel the check the others wait for.
        return await asyncio.shield(self._running)

    async def _check(self) -> ReadinessReport:
        try:
            report = await self._readiness.check()
            self._cached = report
            self._cached_at = asyncio.get_running_loop().time()
            return report
        finally:
            self._running = None


def _json(status: int, body: Any, tail: list[tuple[bytes, bytes]]) -> HttpResponse:
    data = json.dumps(body, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode("ascii")),
        (b"cache-control", b"no-store"),
        *tail,
    ]
    return HttpResponse(status, headers, data)
