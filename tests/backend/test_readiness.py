"""`GET /healthz` and `GET /readyz`: the checks (domain side, `backend/readiness.py` and
each storage's probe), the HTTP routes (`asgi/health.py`), and servers on both storages.

The blockstores' own probes (S3, Swift, PostgreSQL, RAID): tests/backend/blockstore/
test_blockstore_readiness.py. `/readyz` during a shutdown: test_graceful_shutdown.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
import structlog

from parsec_server.backend.asgi.health import READINESS_CACHE_SECONDS, HealthRoutes
from parsec_server.backend.asgi.lifecycle import Lifecycle
from parsec_server.backend.readiness import (
    AlwaysReady,
    CheckOutcome,
    Readiness,
    ReadinessProbe,
    failed,
)
from parsec_server.backend.storage.postgresql.migrations import Series, load_series
from tests.fixtures.postgresql import create_migrated_database, drop_database
from tests.fixtures.servers import make_config, running_server
from tests.fixtures.tcp_proxy import tcp_proxy

SECRET = "hunter2-secret"


class FakeProbe(ReadinessProbe):
    def __init__(self, outcome: CheckOutcome | None = None) -> None:
        self.outcome = outcome or CheckOutcome(True)
        self.calls = 0
        self.delay = 0.0
        self.raises: Exception | None = None

    async def check_ready(self, within: float) -> CheckOutcome:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.raises is not None:
            raise self.raises
        return self.outcome


async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nhost: localhost\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body


# --- Readiness: the checks together ---------------------------------------------------------


async def test_all_checks_ok_is_ready() -> None:
    readiness = Readiness({"database": AlwaysReady(), "events": FakeProbe()})
    report = await readiness.check()
    assert report.ready
    body = report.to_json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "events"}
    for check in body["checks"].values():
        assert check["ok"] is True
        assert isinstance(check["duration_ms"], float)


async def test_one_failed_check_is_not_ready_with_its_detail() -> None:
    readiness = Readiness(
        {"database": AlwaysReady(), "blockstore": FakeProbe(failed("HTTP 403", type="S3"))}
    )
    body = (await readiness.check()).to_json()
    assert body["status"] == "not_ready"
    assert body["checks"]["database"]["ok"] is True
    blockstore = body["checks"]["blockstore"]
    assert (blockstore["ok"], blockstore["error"], blockstore["type"]) == (False, "HTTP 403", "S3")


async def test_a_check_that_does_not_answer_is_cut_off_and_the_others_still_report() -> None:
    slow = FakeProbe()
    slow.delay = 60
    readiness = Readiness({"database": slow, "events": AlwaysReady()}, timeout=0.2)
    started = time.monotonic()
    body = (await readiness.check()).to_json()
    assert time.monotonic() - started < 1.5
    assert body["checks"]["database"]["ok"] is False
    assert body["checks"]["database"]["error"] == "timeout"
    assert body["checks"]["events"]["ok"] is True


async def test_a_check_that_raises_shows_its_class_only_never_its_message() -> None:
    raising = FakeProbe()
    raising.raises = ConnectionRefusedError(f"postgresql://parsec:{SECRET}@db:5432 refused")
    readiness = Readiness({"database": raising})
    with structlog.testing.capture_logs() as logs:
        body = (await readiness.check()).to_json()
    assert body["checks"]["database"]["error"] == "ConnectionRefusedError"
    assert SECRET not in json.dumps(body)
    # The operator finds the whole error in the log.
    assert [log["event"] for log in logs] == ["readiness check failed"]
    assert SECRET in logs[0]["error"]


async def test_only_changes_of_a_check_are_logged() -> None:
    probe = FakeProbe(failed("down"))
    readiness = Readiness({"database": probe})
    with structlog.testing.capture_logs() as logs:
        await readiness.check()
        await readiness.check()
        probe.outcome = CheckOutcome(True)
        await readiness.check()
        await readiness.check()
    assert [(log["event"], log["log_level"]) for log in logs] == [
        ("readiness check failed", "warning"),
        ("readiness check passes again", "info"),
    ]


# --- The routes ------------------------------------------------------------------------------


def routes(probe: ReadinessProbe) -> tuple[HealthRoutes, Lifecycle]:
    lifecycle = Lifecycle()
    return HealthRoutes(Readiness({"database": probe}), lifecycle, debug=False), lifecycle


async def test_healthz_is_ok_without_checking_anything() -> None:
    probe = FakeProbe(failed("down"))
    health, _ = routes(probe)
    response = await health.respond("GET", "/healthz")
    assert (response.status, json.loads(response.body)) == (200, {"status": "ok"})
    assert probe.calls == 0


async def test_readyz_is_503_when_a_check_fails() -> None:
    health, _ = routes(FakeProbe(failed("down")))
    response = await health.respond("GET", "/readyz")
    assert response.status == 503
    assert json.loads(response.body)["status"] == "not_ready"


async def test_readyz_result_is_reused_for_a_second() -> None:
    probe = FakeProbe()
    health, _ = routes(probe)
    for _ in range(5):
        assert (await health.respond("GET", "/readyz")).status == 200
    assert probe.calls == 1
    await asyncio.sleep(READINESS_CACHE_SECONDS + 0.1)
    await health.respond("GET", "/readyz")
    assert probe.calls == 2


async def test_concurrent_readyz_requests_share_one_check() -> None:
    probe = FakeProbe()
    probe.delay = 0.3
    health, _ = routes(probe)
    responses = await asyncio.gather(*(health.respond("GET", "/readyz") for _ in range(20)))
    assert {response.status for response in responses} == {200}
    assert probe.calls == 1


async def test_readyz_is_503_at_once_when_shutting_down() -> None:
    probe = FakeProbe()
    health, lifecycle = routes(probe)
    lifecycle.start_draining()
    response = await health.respond("GET", "/readyz")
    assert response.status == 503
    assert json.loads(response.body) == {
        "status": "not_ready",
        "reason": "shutting down",
        "checks": {},
    }
    assert probe.calls == 0
    # Still alive, though.
    assert (await health.respond("GET", "/healthz")).status == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_other_methods_are_not_allowed(method: str, path: str) -> None:
    health, _ = routes(FakeProbe())
    response = await health.respond(method, path)
    assert (response.status, response.body) == (405, b"")


# --- A server --------------------------------------------------------------------------------


async def test_memory_server_answers_health_routes_over_http() -> None:
    async with running_server(make_config()) as server:
        port = server.addr.port
        status, headers, body = await http_get(port, "/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        assert headers["content-type"] == "application/json"
        assert headers["cache-control"] == "no-store"
        assert headers["connection"] == "close"

        status, _, body = await http_get(port, "/readyz")
        assert status == 200
        assert json.loads(body)["checks"].keys() == {"database", "events", "blockstore"}
        assert json.loads(body)["checks"]["blockstore"]["type"] == "MOCKED"

        status, headers, body = await http_get(port, "/readyz", method="HEAD")
        assert (status, body) == (200, b"")
        assert int(headers["content-length"]) > 0

        # The reference's pages are unchanged around them.
        assert (await http_get(port, "/"))[0] == 200
        for path in ("/healthz/", "/readyz/x", "/health", "/ready"):
            assert (await http_get(port, path))[0] == 404
        assert (await http_get(port, "/healthz", method="POST"))[0] == 405


async def test_postgresql_server_is_ready_when_migrated_and_listening(
    migrated_postgresql_url: str,
) -> None:
    async with running_server(make_config(migrated_postgresql_url)) as server:
        status, _, body = await http_get(server.addr.port, "/readyz")
    assert status == 200
    checks = json.loads(body)["checks"]
    assert [checks[name]["ok"] for name in ("database", "events", "blockstore")] == [True] * 3


@pytest.fixture
async def own_migrated_database(postgresql_url: str) -> AsyncIterator[str]:
    url = await create_migrated_database(postgresql_url)
    try:
        yield url
    finally:
        await drop_database(postgresql_url, url)


async def execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def test_database_with_migrations_not_applied_is_not_ready(
    own_migrated_database: str,
) -> None:
    latest = len(load_series(Series.EXTRAS))
    async with running_server(make_config(own_migrated_database)) as server:
        # As if the last extras migration of this version had not been applied.
        await execute(own_migrated_database, f"DELETE FROM ext_migration WHERE _id = {latest}")
        status, _, body = await http_get(server.addr.port, "/readyz")
    assert status == 503
    assert json.loads(body)["checks"]["database"] == {
        "ok": False,
        "error": f"Database is not up to date (Parsec 2.0.0 layout at level 5 of 5, server "
        f"extras at level {latest - 1} of {latest}): run `parsec backend migrate`",
        "level": 5,
        "extras_level": latest - 1,
        "duration_ms": json.loads(body)["checks"]["database"]["duration_ms"],
    }


async def test_database_migrated_by_a_newer_version_stays_ready(
    own_migrated_database: str,
) -> None:
    # During a rolling upgrade, the new version's migrations run while this one serves.
    async with running_server(make_config(own_migrated_database)) as server:
        await execute(
            own_migrated_database,
            "INSERT INTO ext_migration (_id, name, applied) VALUES (9999, 'future', now())",
        )
        status, _, body = await http_get(server.addr.port, "/readyz")
    assert status == 200
    database = json.loads(body)["checks"]["database"]
    assert (database["ok"], database["newer_schema"]) == (True, True)


async def test_unreachable_database_is_not_ready_within_the_check_timeout(
    migrated_postgresql_url: str,
) -> None:
    target = urlsplit(migrated_postgresql_url)
    assert target.hostname is not None
    async with tcp_proxy(target.hostname, target.port or 5432) as proxy:
        user, at, _ = target.netloc.rpartition("@")
        # A password in the URL, to check it never shows.
        netloc = f"{user}:{SECRET}{at}127.0.0.1:{proxy.port}"
        through_proxy = urlunsplit(target._replace(netloc=netloc))
        config = make_config(through_proxy, events_check_interval=0.3)
        async with running_server(config) as server:
            port = server.addr.port
            assert (await http_get(port, "/readyz"))[0] == 200
            await asyncio.sleep(READINESS_CACHE_SECONDS)

            proxy.stall_all()
            await asyncio.sleep(1.0)  # the event listener notices (twice its interval)
            started = time.monotonic()
            status, _, body = await http_get(port, "/readyz")
            assert time.monotonic() - started < 4
            assert status == 503
            report: dict[str, Any] = json.loads(body)
            assert report["checks"]["database"] == {
                "ok": False,
                "error": "timeout",
                "duration_ms": report["checks"]["database"]["duration_ms"],
            }
            assert report["checks"]["events"]["ok"] is False
            assert report["checks"]["blockstore"]["ok"] is True  # MOCKED
            assert SECRET not in body.decode()
            assert str(proxy.port) not in body.decode()
