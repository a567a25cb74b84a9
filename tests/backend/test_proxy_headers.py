"""Behind a reverse proxy (`--proxy-trusted-addresses`): `X-Forwarded-For` and
`X-Forwarded-Proto` are believed from the trusted peers only, on plain HTTP requests and on
websocket connections; the request logs then show the client's address and scheme.

The client side binds its socket to 127.0.0.1 (trusted in these tests) or to 127.0.0.2 (not
trusted), both on the loopback interface.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from parsec_server.api.crypto import sign
from parsec_server.api.handshake import (
    API_V2,
    AuthenticatedAnswer,
    build_answer,
    challenge_decoder,
)
from parsec_server.client.device import LocalDevice
from tests.backend.common import TIMEOUT, send_cmd
from tests.fixtures.logs import json_lines, logging_to
from tests.fixtures.raw import recv_map
from tests.fixtures.servers import RunningServer, create_org, make_config, running_server

TRUSTED, UNTRUSTED = "127.0.0.1", "127.0.0.2"
CLIENT = "203.0.113.7"  # the address a proxy says it serves
FORWARDED = {"X-Forwarded-For": CLIENT, "X-Forwarded-Proto": "https"}

ServerWith = Callable[..., AbstractAsyncContextManager[RunningServer]]


@pytest.fixture
def server_with() -> ServerWith:
    def start(*trusted: str) -> AbstractAsyncContextManager[RunningServer]:
        return running_server(make_config(proxy_trusted_addresses=trusted))

    return start


async def http_get(
    port: int, target: str, source: str, headers: dict[str, str] | None = None
) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    lines = [f"GET {target} HTTP/1.1", "Host: parsec.example.com"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    async with asyncio.timeout(TIMEOUT):
        answer = await reader.read()
    writer.close()
    return answer


def http_lines(log_file: Path) -> list[dict[str, Any]]:
    return [line for line in json_lines(log_file) if line["event"] == "HTTP request"]


async def seen_over_http(
    server: RunningServer, tmp_path: Path, source: str, headers: dict[str, str]
) -> tuple[str, str]:
    """(peer address, scheme) the server logs for a request from `source`."""
    with logging_to(tmp_path / f"http-{source}.log") as log_file:
        answer = await http_get(server.addr.port, "/", source, headers)
        assert answer.startswith(b"HTTP/1.1 200 ")
        [line] = http_lines(log_file)
    return line["peer_address"], line["scheme"]


@pytest.mark.parametrize(
    ("trusted", "source", "headers", "seen"),
    [
        # From a trusted proxy: the client's address and scheme.
        ((TRUSTED,), TRUSTED, FORWARDED, (CLIENT, "https")),
        (("127.0.0.0/31",), TRUSTED, FORWARDED, (CLIENT, "https")),
        (("*",), UNTRUSTED, FORWARDED, (CLIENT, "https")),
        # Only the proto, or only the address.
        ((TRUSTED,), TRUSTED, {"X-Forwarded-Proto": "https"}, (TRUSTED, "https")),
        ((TRUSTED,), TRUSTED, {"X-Forwarded-For": CLIENT}, (CLIENT, "http")),
        # Several proxies: the rightmost address that is not a trusted proxy.
        ((TRUSTED,), TRUSTED, {"X-Forwarded-For": f"198.51.100.1, {CLIENT}"}, (CLIENT, "http")),
        (
            ("127.0.0.0/24",),
            TRUSTED,
            {"X-Forwarded-For": f"198.51.100.1, {CLIENT}, 127.0.0.5"},
            (CLIENT, "http"),
        ),
        # From anybody else the headers are ignored.
        ((TRUSTED,), UNTRUSTED, FORWARDED, (UNTRUSTED, "http")),
        (("127.0.0.0/31",), UNTRUSTED, FORWARDED, (UNTRUSTED, "http")),
        # Without the option, nobody is trusted (not even the loopback, unlike uvicorn).
        ((), TRUSTED, FORWARDED, (TRUSTED, "http")),
    ],
)
async def test_forwarded_headers_on_plain_http(
    trusted: tuple[str, ...],
    source: str,
    headers: dict[str, str],
    seen: tuple[str, str],
    server_with: ServerWith,
    tmp_path: Path,
) -> None:
    async with server_with(*trusted) as server:
        assert await seen_over_http(server, tmp_path, source, headers) == seen


async def authenticated_ws_from(
    device: LocalDevice, source: str, headers: dict[str, str]
) -> ClientConnection:
    addr = device.backend_addr
    ws = await connect(
        f"ws://{addr.hostname}:{addr.port}/ws",
        additional_headers=headers,
        local_addr=(source, 0),
        compression=None,
        ping_interval=None,
    )
    raw = await ws.recv()
    assert isinstance(raw, bytes)
    challenge = challenge_decoder.decode(raw).challenge
    answer = AuthenticatedAnswer(
        organization_id=device.organization_id,
        device_id=device.device_id,
        rvk=device.root_verify_key,
        answer=sign(device.signing_key, challenge),
    )
    await ws.send(build_answer(API_V2, answer))
    assert await recv_map(ws) == {"handshake": "result", "result": "ok"}
    return ws


@pytest.fixture
async def proxied_server(server_with: ServerWith) -> AsyncIterator[RunningServer]:
    async with server_with(TRUSTED) as server:
        yield server


@pytest.mark.parametrize(("source", "seen"), [(TRUSTED, CLIENT), (UNTRUSTED, UNTRUSTED)])
async def test_forwarded_for_on_websocket_connections(
    source: str, seen: str, proxied_server: RunningServer, tmp_path: Path
) -> None:
    org = await create_org(proxied_server)
    with logging_to(tmp_path / "server.log") as log_file:
        ws = await authenticated_ws_from(org.alice, source, FORWARDED)
        assert await send_cmd(ws, "ping", ping="x") == {"status": "ok", "pong": "x"}
        await ws.close()
        [line] = [line for line in json_lines(log_file) if line["event"] == "Request"]
    assert (line["cmd"], line["peer_address"]) == ("ping", seen)


async def test_redirection_comes_from_the_backend_address_whatever_the_proxy_says(
    proxied_server: RunningServer,
) -> None:
    """`/redirect` builds its `parsec://` URL from `--backend-addr` alone (10-transport.md
    6.3): neither the request's scheme (forwarded or not) nor its host count."""
    answer = await http_get(
        proxied_server.addr.port,
        "/redirect/Org?action=claim_user",
        TRUSTED,
        {**FORWARDED, "X-Forwarded-Host": "evil.example.com"},
    )
    assert b"\r\nlocation: parsec://127.0.0.1:6777/Org?action=claim_user&no_ssl=true\r\n" in (
        answer
    )
