"""What the server does with frames a well-behaved client never sends, and with clients
that misbehave (protocol/10-transport.md §2 and §4)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from parsec_server.api import codec
from parsec_server.backend.asgi.server import WS_MAX_MESSAGE_SIZE
from tests.backend.common import (
    TIMEOUT,
    administration_ws,
    anonymous_ws,
    assert_closed_without_reply,
    assert_server_serves,
    assert_still_open,
    authenticated_ws,
    recv_reply,
    send_cmd,
    wait_set,
    wait_until,
)
from tests.fixtures.servers import Organization, RunningServer

_F64 = struct.Struct(">d")
INVALID_MSG_FORMAT = {"status": "invalid_msg_format", "reason": "Invalid message format"}
UNKNOWN_COMMAND = {"status": "unknown_command", "reason": "Unknown command"}
MiB = 1024 * 1024
REVOKED = "revoked_user_certificate"


def ping_frame(**extra: Any) -> bytes:
    return codec.encode({"cmd": "ping", "ping": "x", **extra})


async def assert_invalid_format_then_closed(ws: ClientConnection) -> None:
    assert await recv_reply(ws) == INVALID_MSG_FORMAT
    assert await assert_closed_without_reply(ws) == 1000


INVALID_FRAMES = {
    "not_msgpack": b"\xc1",
    "empty": b"",
    "truncated": ping_frame()[:-1],
    "trailing_bytes": ping_frame() + b"\x00",
    "two_maps": ping_frame() + ping_frame(),
    "top_level_array": codec.encode(["ping", "x"]),
    "top_level_int": codec.encode(42),
    "top_level_str": codec.encode("ping"),
    "top_level_nil": codec.encode(None),
    "invalid_utf8": b"\x82\xa3cmd\xa4ping\xa4ping\xa4\xff\xfe\xfd\xfc",
    "invalid_utf8_key": b"\x82\xa3cmd\xa4ping\xa4\xff\xfe\xfd\xfc\xa1x",
    "uuid_ext_too_short": ping_frame(extra=msgspec.msgpack.Ext(2, b"abc")),
    "datetime_ext_too_short": ping_frame(extra=msgspec.msgpack.Ext(1, b"1234")),
    "uuid_ext_too_short_in_a_known_field": codec.encode(
        {"cmd": "user_get", "user_id": msgspec.msgpack.Ext(2, b"abc")}
    ),
    "datetime_ext_infinite": ping_frame(extra=msgspec.msgpack.Ext(1, b"\x7f\xf0" + bytes(6))),
    "datetime_ext_year_10000": codec.encode(
        {"cmd": "user_revoke", "revoked_user_certificate": msgspec.msgpack.Ext(1, _F64.pack(3e11))}
    ),
    # {"cmd": "ping", "ping": "x", "y": [[[...[0]...]]]}, 5000 levels deep
    "deeply_nested": b"\x83" + ping_frame()[1:] + b"\xa1y" + b"\x91" * 5000 + b"\x00",
}


@pytest.mark.parametrize("frame", INVALID_FRAMES.values(), ids=INVALID_FRAMES.keys())
async def test_invalid_frame_gets_invalid_msg_format_then_the_connection_closes(
    org: Organization, frame: bytes
) -> None:
    ws = await authenticated_ws(org.alice)
    await ws.send(frame)
    await assert_invalid_format_then_closed(ws)
    await assert_server_serves(org.alice)


OVER_LIMIT_FRAMES = {
    "str_over_1MiB": lambda: ping_frame(extra="x" * (MiB + 1)),
    "bin_over_1MiB": lambda: ping_frame(extra=b"x" * (MiB + 1)),
    "ext_over_1MiB": lambda: ping_frame(extra=msgspec.msgpack.Ext(5, b"x" * (MiB + 1))),
    "array_over_131072": lambda: ping_frame(extra=[0] * (131072 + 1)),
    "map_over_32768": lambda: ping_frame(extra={str(i): 0 for i in range(32768 + 1)}),
}


@pytest.mark.parametrize("build", OVER_LIMIT_FRAMES.values(), ids=OVER_LIMIT_FRAMES.keys())
async def test_value_over_the_msgpack_limits_gets_invalid_msg_format(
    org: Organization, build: Any
) -> None:
    ws = await authenticated_ws(org.alice)
    await ws.send(build())
    await assert_invalid_format_then_closed(ws)
    await assert_server_serves(org.alice)


AT_LIMIT_FRAMES = {
    "str_of_1MiB": lambda: ping_frame(extra="x" * MiB),
    "bin_of_1MiB": lambda: ping_frame(extra=b"x" * MiB),
    "array_of_131072": lambda: ping_frame(extra=[0] * 131072),
    "map_of_32768": lambda: ping_frame(extra={str(i): 0 for i in range(32768)}),
    "several_1MiB_bins": lambda: ping_frame(
        **{f"bin{i}": b"x" * MiB for i in range(WS_MAX_MESSAGE_SIZE // MiB - 1)}
    ),
}


@pytest.mark.parametrize("build", AT_LIMIT_FRAMES.values(), ids=AT_LIMIT_FRAMES.keys())
async def test_values_at_the_msgpack_limits_are_accepted(org: Organization, build: Any) -> None:
    ws = await authenticated_ws(org.alice)
    await ws.send(build())
    assert await recv_reply(ws) == {"status": "ok", "pong": "x"}
    await ws.close()


async def test_text_frame_gets_invalid_msg_format_then_the_connection_closes(
    org: Organization,
) -> None:
    ws = await authenticated_ws(org.alice)
    await ws.send(codec.encode({"cmd": "ping", "ping": "x"}).decode("latin-1"))
    await assert_invalid_format_then_closed(ws)
    await assert_server_serves(org.alice)


async def test_text_frame_during_events_listen_gets_invalid_msg_format(
    org: Organization,
) -> None:
    ws = await authenticated_ws(org.alice)
    assert await send_cmd(ws, "events_subscribe") == {"status": "ok"}
    await ws.send(codec.encode({"cmd": "events_listen"}))
    await ws.send("hello")
    await assert_invalid_format_then_closed(ws)
    await assert_server_serves(org.alice)


async def test_invalid_frame_on_administration_connection_closes_it(
    server: RunningServer, org: Organization
) -> None:
    ws = await administration_ws(server.addr)
    await ws.send(b"\xc1")
    await assert_invalid_format_then_closed(ws)
    await assert_server_serves(org.alice)


async def test_invalid_frame_on_anonymous_connection_closes_it(
    server: RunningServer, org: Organization
) -> None:
    ws = await anonymous_ws(server.addr, org.organization_id)
    await ws.send(codec.encode([1, 2, 3]))
    await assert_invalid_format_then_closed(ws)
    await assert_server_serves(org.alice)


UNKNOWN_COMMAND_REQUESTS: dict[str, dict[str, Any]] = {
    "unknown_name": {"cmd": "foo"},
    "empty_name": {"cmd": ""},
    "missing_cmd": {"ping": "x"},
    "empty_map": {},
    "cmd_int": {"cmd": 42},
    "cmd_nil": {"cmd": None},
    "cmd_bin": {"cmd": b"ping"},
    "cmd_list": {"cmd": ["ping"]},
    "administration_command": {"cmd": "organization_create", "organization_id": "Org"},
    "anonymous_command": {"cmd": "organization_bootstrap"},
    "invited_command": {"cmd": "invite_info"},
}


@pytest.mark.parametrize(
    "request_", UNKNOWN_COMMAND_REQUESTS.values(), ids=UNKNOWN_COMMAND_REQUESTS.keys()
)
async def test_unknown_command_keeps_the_connection_usable(
    org: Organization, request_: dict[str, Any]
) -> None:
    ws = await authenticated_ws(org.alice)
    await ws.send(codec.encode(request_))
    assert await recv_reply(ws) == UNKNOWN_COMMAND
    await assert_still_open(ws)
    await ws.close()


@pytest.mark.parametrize(
    "cmd", ["user_get", "events_subscribe", "events_listen", "human_find", "organization_bootstrap"]
)
async def test_commands_of_other_handshake_types_are_unknown_on_administration(
    server: RunningServer, cmd: str
) -> None:
    ws = await administration_ws(server.addr)
    assert await send_cmd(ws, cmd) == UNKNOWN_COMMAND
    await assert_still_open(ws)
    await ws.close()


@pytest.mark.parametrize(
    "cmd", ["user_get", "events_subscribe", "user_create", "organization_create", "invite_info"]
)
async def test_commands_of_other_handshake_types_are_unknown_on_anonymous(
    server: RunningServer, org: Organization, cmd: str
) -> None:
    ws = await anonymous_ws(server.addr, org.organization_id)
    assert await send_cmd(ws, cmd) == UNKNOWN_COMMAND
    await assert_still_open(ws)
    await ws.close()


async def test_missing_field_is_bad_message_naming_it(org: Organization) -> None:
    ws = await authenticated_ws(org.alice)
    assert await send_cmd(ws, "ping") == {
        "status": "bad_message",
        "reason": "Invalid message.",
        "errors": {"ping": ["Missing data for required field."]},
    }
    await assert_still_open(ws)
    await ws.close()


@pytest.mark.parametrize(
    "cmd, fields, field_name",
    [
        ("ping", {"ping": 42}, "ping"),
        ("ping", {"ping": None}, "ping"),
        ("ping", {"ping": ["x"]}, "ping"),
        ("user_get", {"user_id": "not a user id"}, "user_id"),
        ("user_get", {"user_id": codec.ID.new()}, "user_id"),
        ("events_listen", {"wait": "yes"}, "wait"),
        ("human_find", {"page": 1.5}, "page"),
        (
            "user_revoke",
            {"revoked_user_certificate": codec.DateTime.now()},
            "revoked_user_certificate",
        ),
    ],
)
async def test_ill_typed_field_is_bad_message_naming_it(
    org: Organization, cmd: str, fields: dict[str, Any], field_name: str
) -> None:
    ws = await authenticated_ws(org.alice)
    rep = await send_cmd(ws, cmd, **fields)
    assert rep["status"] == "bad_message"
    assert rep["reason"] == "Invalid message."
    assert list(rep["errors"]) == [field_name]
    messages = rep["errors"][field_name]
    assert isinstance(messages, list) and messages
    assert all(isinstance(m, str) for m in messages)
    await assert_still_open(ws)
    await ws.close()


async def test_unknown_fields_are_ignored(org: Organization) -> None:
    ws = await authenticated_ws(org.alice)
    assert await send_cmd(ws, "ping", ping="x", extra=b"\x00", other=[1, {"a": None}]) == {
        "status": "ok",
        "pong": "x",
    }
    await ws.close()


async def test_message_over_the_websocket_size_limit_closes_the_connection(
    org: Organization,
) -> None:
    ws = await authenticated_ws(org.alice)
    frame = ping_frame(**{f"b{i}": b"x" * MiB for i in range(WS_MAX_MESSAGE_SIZE // MiB + 1)})
    assert len(frame) > WS_MAX_MESSAGE_SIZE
    with contextlib.suppress(ConnectionClosed):
        await ws.send(frame)  # the server may close before it has read the whole frame
    await assert_closed_without_reply(ws)
    await assert_server_serves(org.alice)


async def test_fragmented_message_is_reassembled(org: Organization) -> None:
    ws = await authenticated_ws(org.alice)
    frame = ping_frame()
    await ws.send([frame[:3], frame[3:7], frame[7:]])
    assert await recv_reply(ws) == {"status": "ok", "pong": "x"}
    await ws.close()


async def test_pipelined_requests_are_answered_in_order(org: Organization) -> None:
    ws = await authenticated_ws(org.alice)
    for i in range(20):
        await ws.send(codec.encode({"cmd": "ping", "ping": str(i)}))
    await ws.send(codec.encode({"cmd": "user_get", "user_id": "bob"}))
    await ws.send(codec.encode({"cmd": "nope"}))
    for i in range(20):
        assert await recv_reply(ws) == {"status": "ok", "pong": str(i)}
    assert (await recv_reply(ws))["status"] == "ok"
    assert await recv_reply(ws) == UNKNOWN_COMMAND
    await ws.close()


async def test_websocket_ping_is_answered(org: Organization) -> None:
    ws = await authenticated_ws(org.alice)
    pong = await ws.ping(b"keepalive")
    await asyncio.wait_for(pong, TIMEOUT)
    await assert_still_open(ws)
    await ws.close()


async def test_websocket_ping_is_answered_while_events_listen_waits(org: Organization) -> None:
    ws = await authenticated_ws(org.alice)
    assert await send_cmd(ws, "events_subscribe") == {"status": "ok"}
    await ws.send(codec.encode({"cmd": "events_listen"}))
    pong = await ws.ping(b"keepalive")
    await asyncio.wait_for(pong, TIMEOUT)
    await ws.close()


async def test_client_close_is_echoed(org: Organization) -> None:
    ws = await authenticated_ws(org.alice)
    await ws.close(code=1001)
    assert ws.close_code == 1001


async def test_client_leaving_without_reading_its_reply_leaves_the_server_serving(
    server: RunningServer, org: Organization
) -> None:
    ws = await authenticated_ws(org.alice)
    await ws.send(codec.encode({"cmd": "user_get", "user_id": "bob"}))
    await ws.close()
    await assert_server_serves(org.bob)
    await wait_until(lambda: len(server.app.connections) == 0)


async def test_client_vanishing_in_the_middle_of_a_command_leaves_the_server_serving(
    server: RunningServer, org: Organization, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    original = server.app.user.get_user_with_trustchain

    async def slow(*args: Any, **kwargs: Any) -> Any:
        started.set()
        await release.wait()
        return await original(*args, **kwargs)

    monkeypatch.setattr(server.app.user, "get_user_with_trustchain", slow)
    ws = await authenticated_ws(org.alice)
    await ws.send(codec.encode({"cmd": "user_get", "user_id": "bob"}))
    await wait_set(started)
    ws.transport.abort()  # no Close frame, the TCP connection just ends
    release.set()
    await assert_server_serves(org.bob)
    async with await org.bob.connect() as conn:
        assert (await conn.cmd("user_get", user_id="alice"))["status"] == "ok"
    await wait_until(lambda: len(server.app.connections) == 0)


async def test_client_vanishing_during_events_listen_leaves_the_server_serving(
    server: RunningServer, org: Organization
) -> None:
    ws = await authenticated_ws(org.alice)
    assert await send_cmd(ws, "events_subscribe") == {"status": "ok"}
    await ws.send(codec.encode({"cmd": "events_listen"}))
    ws.transport.abort()
    await wait_until(lambda: len(server.app.connections) == 0)
    # Events emitted now concern no connection of the vanished client.
    async with await org.bob.connect() as conn:
        assert await conn.cmd("ping", ping="anyone?") == {"status": "ok", "pong": "anyone?"}


async def test_client_vanishing_during_the_handshake_leaves_the_server_serving(
    server: RunningServer, org: Organization
) -> None:
    from tests.fixtures.raw import raw_connect

    ws = await raw_connect(server.addr)
    await ws.recv()  # the challenge
    ws.transport.abort()
    await assert_server_serves(org.alice)


async def test_failing_handler_closes_only_its_connection(
    server: RunningServer, org: Organization, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("storage exploded")

    monkeypatch.setattr(server.app.user, "get_user_with_trustchain", broken)
    bystander = await authenticated_ws(org.bob)
    ws = await authenticated_ws(org.alice)
    await ws.send(codec.encode({"cmd": "user_get", "user_id": "bob"}))
    await assert_closed_without_reply(ws)
    await assert_still_open(bystander)
    await assert_server_serves(org.alice)
    monkeypatch.undo()
    rep = await send_cmd(bystander, "user_get", user_id="alice")
    assert rep["status"] == "ok"
    await bystander.close()
    await wait_until(lambda: len(server.app.connections) == 0)


def _invited_answer(**overrides: Any) -> bytes:
    fields = {
        "handshake": "answer",
        "client_api_version": [2, 0],
        "type": "INVITED",
        "organization_id": "Org",
        "invitation_type": "USER",
        "token": codec.ID.new(),
    }
    return codec.encode({**fields, **overrides})


HOSTILE_ANSWERS = {
    "deeply_nested": b"\x82\xa9handshake\xa6answer\xa1y" + b"\x91" * 5000 + b"\xc0",
    "datetime_ext_infinite_as_token": _invited_answer(
        token=msgspec.msgpack.Ext(1, b"\x7f\xf0" + bytes(6))
    ),
    "invalid_utf8_in_an_unknown_field": _invited_answer(y="éé").replace(
        "éé".encode(), b"\xff\xfe\xff\xfe"
    ),
    "bin_over_1MiB": _invited_answer(extra=b"x" * (MiB + 1)),
    "truncated": _invited_answer()[:-3],
}


@pytest.mark.parametrize("answer", HOSTILE_ANSWERS.values(), ids=HOSTILE_ANSWERS.keys())
async def test_hostile_handshake_answer_gets_bad_protocol_then_the_connection_closes(
    server: RunningServer, org: Organization, answer: bytes
) -> None:
    from tests.fixtures.raw import raw_connect, recv_map

    ws = await raw_connect(server.addr)
    await ws.recv()  # the challenge
    await ws.send(answer)
    result = await asyncio.wait_for(recv_map(ws), TIMEOUT)
    assert result["handshake"] == "result"
    assert result["result"] == "bad_protocol"
    assert await assert_closed_without_reply(ws) == 1000
    await assert_server_serves(org.alice)
