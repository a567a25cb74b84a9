"""Sentry reporting (`--sentry-url`): unexpected errors arrive at the Sentry ingestion API
with the environment, the release and the exception, and nothing secret.

A local HTTP server plays Sentry's ingestion API (`POST /api/<project>/envelope/` and
`/store/`); the server under test runs in this process, started with the real
`init_sentry` and `configure_logging` of `parsec backend run`.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import secrets
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import sentry_sdk
from aiohttp import web

from parsec_server.api import codec
from parsec_server.backend import sentry
from parsec_server.backend.asgi import server as asgi_server
from parsec_server.backend.config import (
    BackendConfig,
    RaidBlockstoreConfig,
    S3BlockstoreConfig,
    SmtpEmailConfig,
    StartupError,
)
from parsec_server.cli import backend_run
from parsec_server.client.realm import create_realm
from tests.backend.common import TIMEOUT, assert_closed_without_reply, authenticated_ws
from tests.backend.realm_helpers import new_id, now
from tests.fixtures.logs import json_lines, logging_to
from tests.fixtures.servers import ADMINISTRATION_TOKEN, create_org, make_config, running_server

ENVIRONMENT = "staging-tests"


class SimulatedFailure(Exception):
    """What the storage raises in these tests (a bug, the database going away ...)."""


async def failing_storage(*args: object, **kwargs: object) -> object:
    raise SimulatedFailure("the storage failed")


# --- A Sentry ingestion endpoint --------------------------------------------------------------


@dataclass
class FakeSentry:
    port: int = 0
    bodies: list[bytes] = field(default_factory=list)  # decompressed
    items: list[tuple[dict[str, Any], bytes]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def dsn(self, project: int = 42) -> str:
        return f"http://publickey@127.0.0.1:{self.port}/{project}"

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(payload) for header, payload in self.items if header["type"] == "event"]

    async def wait_for_events(self, count: int) -> list[dict[str, Any]]:
        await asyncio.to_thread(sentry_sdk.flush, TIMEOUT)
        async with asyncio.timeout(TIMEOUT):
            while len(self.events) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.events


def parse_envelope(body: bytes) -> list[tuple[dict[str, Any], bytes]]:
    """The items of an envelope: a header line, then for each item a header line and its
    payload (`length` bytes, or up to the end of the line)."""
    _, _, rest = body.partition(b"\n")
    items = []
    while rest.strip():
        header_line, _, rest = rest.partition(b"\n")
        header = json.loads(header_line)
        if "length" in header:
            payload, rest = rest[: header["length"]], rest[header["length"] :]
            rest = rest.removeprefix(b"\n")
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append((header, payload))
    return items


@pytest.fixture
async def fake_sentry() -> AsyncIterator[FakeSentry]:
    received = FakeSentry()

    async def ingest(request: web.Request) -> web.Response:
        # (aiohttp already undoes a `Content-Encoding` it knows: gzip, deflate)
        body = await request.read()
        if body.startswith(b"\x1f\x8b"):
            body = gzip.decompress(body)
        elif body.startswith(b"x"):
            body = zlib.decompress(body)
        received.paths.append(request.path)
        received.bodies.append(body)
        if request.path.endswith("/envelope/"):
            received.items += parse_envelope(body)
        else:  # the older store endpoint: one event
            received.items.append(({"type": "event"}, body))
        received.arrived.set()
        return web.json_response({"id": "0" * 32})

    app = web.Application()
    app.router.add_post("/api/{project}/envelope/", ingest)
    app.router.add_post("/api/{project}/store/", ingest)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    received.port = runner.addresses[0][1]
    try:
        yield received
    finally:
        await runner.cleanup()


@pytest.fixture
def reporting() -> Iterator[None]:
    """Stops Sentry reporting after the test (`init_sentry` is global to the process)."""
    try:
        yield
    finally:
        sentry.close_sentry()


def sentry_config(fake: FakeSentry, db_url: str = "MOCKED", **overrides: Any) -> BackendConfig:
    return make_config(db_url, sentry_url=fake.dsn(), sentry_environment=ENVIRONMENT, **overrides)


def every_form(raw: bytes) -> list[str]:
    """How bytes could show in a JSON text: hex, base64, their repr."""
    return [raw.hex(), base64.b64encode(raw).decode(), repr(raw)[2:-1]]


# --- End to end ---------------------------------------------------------------------------------


async def test_command_failure_is_reported_without_secrets(
    db_url: str,
    fake_sentry: FakeSentry,
    reporting: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = sentry_config(fake_sentry, db_url)
    claimer_email = f"zoe.{secrets.token_hex(4)}@example.com"
    blob = b"blob-" + secrets.token_hex(16).encode()
    with logging_to(tmp_path / "server.log") as log_file:
        assert sentry.init_sentry(config)
        async with running_server(config) as server:
            org = await create_org(server)
            async with await org.alice.connect() as conn:
                invitation = await conn.cmd(
                    "invite_new", type="USER", claimer_email=claimer_email, send_email=False
                )
                realm_id = await create_realm(conn, org.alice)
            monkeypatch.setattr(server.app.vlob, "create", failing_storage)
            ws = await authenticated_ws(org.alice)
            await ws.send(
                codec.encode(
                    {
                        "cmd": "vlob_create",
                        "realm_id": realm_id,
                        "encryption_revision": 1,
                        "vlob_id": new_id(),
                        "timestamp": now(),
                        "blob": blob,
                    }
                )
            )
            assert await assert_closed_without_reply(ws) == 1011
            [event] = await fake_sentry.wait_for_events(1)

    # What arrived: where, which environment and release, which exception.
    assert all(path == "/api/42/envelope/" for path in fake_sentry.paths)
    assert event["environment"] == ENVIRONMENT
    assert event["release"] == sentry.release()
    assert event["release"].startswith("parsec-server@")
    assert event["level"] == "error"
    assert event["logger"] == "parsec.connection"
    assert event["logentry"]["message"] == "connection failed"
    [exception] = event["exception"]["values"]
    assert exception["type"] == "SimulatedFailure"
    assert exception["value"] == "the storage failed"
    assert exception["stacktrace"]["frames"][-1]["function"] == "failing_storage"
    log_context = event["contexts"]["log"]
    assert log_context["organization"] == org.organization_id
    assert log_context["device"] == org.alice.device_id
    assert log_context["peer"] == "authenticated"
    assert event["tags"]["organization"] == org.organization_id

    # What did not.
    for frame in exception["stacktrace"]["frames"]:
        assert "vars" not in frame
    for key in ("request", "user", "extra"):
        assert key not in event
    assert "peer_address" not in log_context
    everything = b"\n".join(fake_sentry.bodies).decode()
    secret_texts = [ADMINISTRATION_TOKEN, claimer_email, "alice@example.com", "bob@example.com"]
    token = invitation["token"].uuid
    secret_texts += [token.hex, str(token), *every_form(token.bytes)]
    secret_texts += every_form(blob)
    for key in (
        org.alice.signing_key.encode(),
        org.alice.signing_key.verify_key.encode(),
        org.alice.private_key.encode(),
        org.alice.root_verify_key,
    ):
        secret_texts += every_form(key)
    leaked = [text for text in secret_texts if text in everything]
    assert leaked == [], leaked
    assert "127.0.0.1:" not in everything.replace(f"127.0.0.1:{fake_sentry.port}", "")

    # The server's own log has the failure too.
    [failure] = [line for line in json_lines(log_file) if line["event"] == "connection failed"]
    assert "SimulatedFailure: the storage failed" in failure["exception"]


async def test_crash_at_start_up_is_reported(
    fake_sentry: FakeSentry, reporting: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error stopping `parsec backend run` once configured (not a
    `StartupError`, which the operator fixes) is reported."""
    config = sentry_config(fake_sentry)

    def crash(_config: BackendConfig) -> None:
        raise SimulatedFailure("could not start")

    monkeypatch.setattr(asgi_server, "run_server", crash)
    with logging_to(tmp_path / "server.log"):
        assert sentry.init_sentry(config)
        with pytest.raises(backend_run.click.ClickException):
            backend_run._serve(config)
        [event] = await fake_sentry.wait_for_events(1)

    assert event["environment"] == ENVIRONMENT
    assert event["logentry"]["message"] == "Server stopped by an unexpected error"
    assert [value["type"] for value in event["exception"]["values"]] == ["SimulatedFailure"]


async def test_warnings_are_breadcrumbs_of_the_next_error(
    fake_sentry: FakeSentry, reporting: None, tmp_path: Path
) -> None:
    import structlog

    logger = structlog.get_logger("parsec.tests")
    with logging_to(tmp_path / "server.log", level="WARNING"):
        assert sentry.init_sentry(sentry_config(fake_sentry))
        logger.info("not kept: below the log level")
        logger.warning("something odd", peer_address="192.0.2.1", detail="x")
        logger.error("then a failure", organization="Org1")
        [event] = await fake_sentry.wait_for_events(1)

    assert "exception" not in event
    assert event["logentry"]["message"] == "then a failure"
    assert event["contexts"]["log"] == {"organization": "Org1"}
    crumbs = event["breadcrumbs"]["values"]
    assert [(crumb["category"], crumb["message"], crumb["level"]) for crumb in crumbs] == [
        ("parsec.tests", "something odd", "warning")
    ]
    assert "data" not in crumbs[0]
    assert "192.0.2.1" not in json.dumps(event)


async def test_nothing_is_reported_without_sentry_url(tmp_path: Path) -> None:
    assert not sentry.init_sentry(make_config())
    assert not sentry_sdk.get_client().is_active()


# --- What `before_send` lets through -----------------------------------------------------------


def test_configured_secrets_are_collected() -> None:
    config = make_config(
        db_url="postgresql://parsec:Db-Pa55word@db.example.com/parsec",
        organization_bootstrap_webhook="https://hook:H00k-pa55@hook.example.com/x?key=H00k-qu3ry",
        email=SmtpEmailConfig(
            host="smtp.example.com",
            port=587,
            sender="no-reply@example.com",
            host_user="parsec",
            host_password="Smtp-pa55word",
            use_ssl=False,
            use_tls=True,
        ),
        blockstore=RaidBlockstoreConfig(
            mode="RAID1",
            nodes=(
                S3BlockstoreConfig(None, "eu-west-1", "bucket", "AKIA-key-id", "S3-secret-key"),
                S3BlockstoreConfig(None, "eu-west-1", "bucket2", "short", "S3-other-secret"),
            ),
        ),
    )

    assert set(sentry.configured_secrets(config)) == {
        ADMINISTRATION_TOKEN,
        "Db-Pa55word",
        "H00k-pa55",
        "H00k-qu3ry",
        "Smtp-pa55word",
        "AKIA-key-id",
        "S3-secret-key",
        "S3-other-secret",
    }  # "short" is too short to be replaced everywhere


def test_before_send_drops_request_user_extras_variables_and_breadcrumb_data() -> None:
    secret = "Adm1n-t0ken-S3CRET"
    event = {
        "message": f"token {secret} for someone@example.org",
        "request": {"url": "https://x/", "headers": {"Authorization": secret}, "data": "x"},
        "user": {"ip_address": "192.0.2.1", "email": "someone@example.org"},
        "extra": {"sys.argv": ["parsec", "--administration-token", secret]},
        "exception": {
            "values": [
                {
                    "type": "KeyError",
                    "value": f"'{secret}'",
                    "stacktrace": {"frames": [{"function": "f", "vars": {"token": secret}}]},
                }
            ]
        },
        "threads": {"values": [{"stacktrace": {"frames": [{"vars": {"blob": "x"}}]}}]},
        "breadcrumbs": {"values": [{"message": "m", "data": {"url": "https://x/?t=1"}}]},
        "contexts": {"log": {"organization": "Org1", "note": f"pass={secret}"}},
    }

    sent = sentry._before_send((secret,), event, {})

    assert sent == {
        "message": "token [Filtered] for [Filtered]",
        "exception": {
            "values": [
                {
                    "type": "KeyError",
                    "value": "'[Filtered]'",
                    "stacktrace": {"frames": [{"function": "f"}]},
                }
            ]
        },
        "threads": {"values": [{"stacktrace": {"frames": [{}]}}]},
        "breadcrumbs": {"values": [{"message": "m"}]},
        "contexts": {"log": {"organization": "Org1", "note": "pass=[Filtered]"}},
    }


def test_start_up_errors_are_not_reported() -> None:
    """They are the operator's to fix (reported without traceback, or seen by the uncaught
    exception hook with `--debug`)."""
    error = StartupError("Database not initialized")
    hint = {"exc_info": (StartupError, error, None)}
    assert sentry._before_send((), {"exception": {"values": []}}, hint) is None
    assert sentry._before_send((), {"message": "x"}, {}) == {"message": "x"}


def test_device_ids_are_not_mistaken_for_email_addresses() -> None:
    device_id = "a" * 32 + "@" + "b" * 32
    assert sentry._scrub(f"device {device_id}", ()) == f"device {device_id}"


def test_workers_report_on_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker process starts its own Sentry client after the fork (the parent's
    transport thread and connections are not the child's)."""
    calls: list[BackendConfig] = []
    monkeypatch.setattr(asgi_server, "init_sentry", calls.append)
    monkeypatch.setattr(asgi_server.uvloop, "run", lambda coroutine: coroutine.close())
    config = replace(make_config(), sentry_url="http://k@127.0.0.1:1/1")

    asgi_server._worker(config, sock=None, role=None)  # type: ignore[arg-type]

    assert calls == [config]
