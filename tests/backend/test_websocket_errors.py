"""Frames that break the websocket protocol itself are refused by the transport (uvicorn's
websockets-sansio) with a close code naming the fault, before any of our code sees them
(docs/frame-outcomes.md): 1002 protocol error, 1007 invalid UTF-8 in a text message, 1009
message too big. Spoken here byte by byte over a plain TCP connection."""

from __future__ import annotations

import asyncio
import base64
import os
import struct

import pytest

from parsec_server.backend.asgi.server import WS_MAX_MESSAGE_SIZE
from tests.backend.common import TIMEOUT, assert_server_serves
from tests.fixtures.servers import RunningServer, create_org


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    length = len(payload)
    if length < 126:
        header = bytes([first, (0x80 if mask else 0) | length])
    elif length < 65536:
        header = bytes([first, (0x80 if mask else 0) | 126]) + struct.pack(">H", length)
    else:
        header = bytes([first, (0x80 if mask else 0) | 127]) + struct.pack(">Q", length)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def upgraded(server: RunningServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(server.addr.hostname, server.addr.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: {server.addr.hostname}\r\nUpgrade: WebSocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101")
    await read_frame(reader)  # the handshake challenge
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack(">H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack(">Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(length)


async def close_code_after(server: RunningServer, data: bytes) -> int:
    reader, writer = await upgraded(server)
    try:
        writer.write(data)
        await writer.drain()
        while True:
            opcode, payload = await read_frame(reader)
            if opcode == 0x8:
                (code,) = struct.unpack(">H", payload[:2])
                return int(code)
    finally:
        writer.close()


PROTOCOL_ERRORS = {
    "unmasked_frame": (frame(0x2, b"\x80", mask=False), 1002),
    "reserved_opcode": (frame(0x3, b"\x80"), 1002),
    "reserved_control_opcode": (frame(0xB, b""), 1002),
    "rsv_bits_set": (frame(0x2, b"\x80", rsv=0b100), 1002),
    "fragmented_ping": (frame(0x9, b"x", fin=False), 1002),
    "ping_over_125_bytes": (frame(0x9, b"x" * 126), 1002),
    "continuation_without_start": (frame(0x0, b"\x80"), 1002),
    "new_message_inside_a_fragmented_one": (
        frame(0x2, b"\x81", fin=False) + frame(0x2, b"\xa1"),
        1002,
    ),
    "close_with_a_1_byte_payload": (frame(0x8, b"\x03"), 1002),
    "text_with_invalid_utf8": (frame(0x1, b"\xff\xfe"), 1007),
    "close_reason_with_invalid_utf8": (frame(0x8, b"\x03\xe8\xff"), 1007),
    "message_over_the_size_limit": (
        # Only the header: the transport refuses on the announced length.
        bytes([0x82, 0xFF]) + struct.pack(">Q", WS_MAX_MESSAGE_SIZE + 1) + os.urandom(4),
        1009,
    ),
}


@pytest.mark.parametrize("data, code", PROTOCOL_ERRORS.values(), ids=PROTOCOL_ERRORS.keys())
async def test_websocket_protocol_errors_close_with_their_code(
    server: RunningServer, data: bytes, code: int
) -> None:
    assert await close_code_after(server, data) == code
    await assert_server_serves((await create_org(server)).alice)
