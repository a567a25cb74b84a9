"""Request logs (docs/logging.md): with `--log-level INFO`, one line per command of a
websocket connection and per plain HTTP request, with a request id, the peer's address,
organization and device, the command, the reply status and the duration; never a payload.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from parsec_server.api import codec
from parsec_server.api.handshake import API_V2, InvitedAnswer, build_answer
from parsec_server.api.ids import InvitationType
from parsec_server.backend.asgi import request_log
from tests.backend.common import (
    TIMEOUT,
    assert_closed_without_reply,
    authenticated_ws,
    recv_reply,
    send_cmd,
)
from tests.backend.realm_helpers import new_id
from tests.fixtures.logs import json_lines, logging_to
from tests.fixtures.raw import raw_connect, recv_map
from tests.fixtures.servers import Organization, RunningServer, create_org, make_config
from tests.fixtures.servers import running_server as start_server

REQUEST_ID = re.compile(r"^(?P<connection>[0-9a-f]{8})-(?P<seq>[0-9]+)$")
COMMAND_LINE_KEYS = {
    "event",
    "request_id",
    "peer_address",
    "peer",
    "organization",
    "cmd",
    "status",
    "duration_ms",
    "logger",
    "level",
    "timestamp",
}


@pytest.fixture
async def running() -> AsyncIterator[RunningServer]:
    async with start_server(make_config()) as server:
        yield server


@pytest.fixture
async def organization(running: RunningServer) -> Organization:
    return await create_org(running)


def command_lines(log_file: Path) -> list[dict[str, Any]]:
    return [line for line in json_lines(log_file) if line["event"] == "Request"]


async def http_get(port: int, target: str, headers: dict[str, str] | None = None) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [
        f"GET {target} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    async with asyncio.timeout(TIMEOUT):
        answer = await reader.read()
    writer.close()
    return answer


async def invited_ws(server: RunningServer, organization_id: str, token: Any) -> ClientConnection:
    ws = await raw_connect(server.addr)
    await ws.recv()  # the challenge, unused by INVITED answers
    answer = InvitedAnswer(
        organization_id=organization_id, invitation_type=InvitationType.USER, token=token
    )
    await ws.send(build_answer(API_V2, answer))
    assert await recv_map(ws) == {"handshake": "result", "result": "ok"}
    return ws


async def test_one_line_per_command_with_its_status(
    running: RunningServer, organization: Organization, tmp_path: Path
) -> None:
    blob = b"Secret-blob-S3CRET"
    with logging_to(tmp_path / "server.log") as log_file:
        alice = await authenticated_ws(organization.alice)
        assert (await send_cmd(alice, "ping", ping="hello"))["status"] == "ok"
        vlob_read = await send_cmd(alice, "vlob_read", encryption_revision=1, vlob_id=new_id())
        assert vlob_read["status"] == "not_found"
        assert (await send_cmd(alice, "no_such_command"))["status"] == "unknown_command"
        assert (await send_cmd(alice, "ping", ping=123))["status"] == "bad_message"
        assert (await send_cmd(alice, "events_listen", wait=False))["status"] == "no_events"
        # A breathing command abandoned by the next request: no reply, one line.
        await alice.send(codec.encode({"cmd": "events_listen", "wait": True}))
        rep = await send_cmd(
            alice,
            "vlob_create",
            realm_id=new_id(),
            encryption_revision=1,
            vlob_id=new_id(),
            timestamp=codec.DateTime.now(),
            blob=blob,
        )
        assert rep["status"] == "not_found"
        invitation = await send_cmd(
            alice, "invite_new", type="USER", claimer_email="zoe@example.com", send_email=False
        )
        await alice.close()
        claimer = await invited_ws(running, organization.organization_id, invitation["token"])
        assert (await send_cmd(claimer, "invite_info"))["status"] == "ok"
        await claimer.close()
        await asyncio.sleep(0.05)  # the server's side of the closes
        lines = command_lines(log_file)

    assert [(line["cmd"], line["status"]) for line in lines] == [
        ("ping", "ok"),
        ("vlob_read", "not_found"),
        (None, "unknown_command"),
        (None, "bad_message"),
        ("events_listen", "no_events"),
        ("events_listen", "abandoned"),
        ("vlob_create", "not_found"),
        ("invite_new", "ok"),
        ("invite_info", "ok"),
    ]
    alice_lines, [claimer_line] = lines[:-1], lines[-1:]
    for line in alice_lines:
        assert set(line) == COMMAND_LINE_KEYS | {"device"}
        assert (line["peer"], line["organization"], line["device"]) == (
            "authenticated",
            organization.organization_id,
            organization.alice.device_id,
        )
    assert set(claimer_line) == COMMAND_LINE_KEYS | {"invitation_type"}
    assert (claimer_line["peer"], claimer_line["invitation_type"]) == ("invited", "USER")
    for line in lines:
        assert line["peer_address"] == "127.0.0.1"
        assert (line["level"], line["logger"]) == ("info", "parsec.request")
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    ids = [REQUEST_ID.match(line["request_id"]) for line in lines]
    assert all(ids)
    assert len({match["connection"] for match in ids if match}) == 2
    assert [int(match["seq"]) for match in ids if match] == [1, 2, 3, 4, 5, 6, 7, 8, 1]
    logs = log_file.read_text()
    for secret in ("S3CRET", "zoe@example.com", "alice@example.com", invitation["token"].hex):
        assert secret not in logs


async def test_failed_command_is_logged_then_the_failure_with_its_connection(
    running: RunningServer,
    organization: Organization,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(*args: object) -> object:
        raise RuntimeError("storage failure")

    monkeypatch.setattr(running.app.vlob, "read", broken)
    with logging_to(tmp_path / "server.log") as log_file:
        alice = await authenticated_ws(organization.alice)
        await alice.send(
            codec.encode({"cmd": "vlob_read", "encryption_revision": 1, "vlob_id": new_id()})
        )
        assert await assert_closed_without_reply(alice) == 1011
        lines = json_lines(log_file)

    command, failure = (line for line in lines if line["event"] in ("Request", "connection failed"))
    assert (command["cmd"], command["status"]) == ("vlob_read", "error")
    assert failure["event"] == "connection failed"
    assert command["request_id"] == f"{failure['connection']}-1"
    assert failure["device"] == organization.alice.device_id
    assert failure["peer_address"] == "127.0.0.1"


async def test_nothing_is_logged_per_command_at_the_default_level(
    running: RunningServer, organization: Organization, tmp_path: Path
) -> None:
    with logging_to(tmp_path / "server.log", level="WARNING") as log_file:
        assert not request_log.enabled()
        alice = await authenticated_ws(organization.alice)
        assert (await send_cmd(alice, "ping", ping="hello"))["status"] == "ok"
        await http_get(running.addr.port, "/")
        await alice.close()
        assert json_lines(log_file) == []


async def test_plain_http_request_is_logged_without_its_query(
    running: RunningServer, tmp_path: Path
) -> None:
    with logging_to(tmp_path / "server.log") as log_file:
        answer = await http_get(
            running.addr.port, "/redirect/MyOrg?action=claim_user&token=T0ken-S3CRET"
        )
        assert answer.startswith(b"HTTP/1.1 302 ")
        await http_get(running.addr.port, "/nothing/here")
        lines = [line for line in json_lines(log_file) if line["event"] == "HTTP request"]

    assert [(line["method"], line["path"], line["status"]) for line in lines] == [
        ("GET", "/redirect/MyOrg", 302),
        ("GET", "/nothing/here", 404),
    ]
    for line in lines:
        assert (line["peer_address"], line["scheme"]) == ("127.0.0.1", "http")
        assert REQUEST_ID.match(line["request_id"])
    assert "S3CRET" not in log_file.read_text()


async def test_pipelined_commands_are_each_logged(
    running: RunningServer, organization: Organization, tmp_path: Path
) -> None:
    """Requests sent without waiting are answered in order, one line each."""
    with logging_to(tmp_path / "server.log") as log_file:
        alice = await authenticated_ws(organization.alice)
        for i in range(20):
            await alice.send(codec.encode({"cmd": "ping", "ping": str(i)}))
        pongs = [(await recv_reply(alice))["pong"] for _ in range(20)]
        await alice.close()
        lines = command_lines(log_file)
    assert pongs == [str(i) for i in range(20)]
    assert len(lines) == 20
