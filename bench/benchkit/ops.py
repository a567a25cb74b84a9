"""The commands the load loops send, on one connection with its own state (its realm,
the vlobs and blocks it created)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from parsec_server.api.codec import ID, DateTime
from parsec_server.client.connection import BackendConnection

ENCRYPTION_REVISION = 1
POLL_CHANGES = 10  # vlob_poll_changes asks for the changes after (checkpoint - this)


@dataclass
class ConnState:
    conn: BackendConnection
    realm_id: ID | None = None
    vlobs: list[list[Any]] = field(default_factory=list)  # [vlob_id, latest version]
    vlob_cursor: int = 0
    writes: int = 0  # vlob writes in the realm = its checkpoint (the realm is ours only)
    blocks: list[ID] = field(default_factory=list)
    block_cursor: int = 0

    def next_vlob(self) -> list[Any]:
        if not self.vlobs:
            raise RuntimeError("no vlob created on this connection")
        vlob = self.vlobs[self.vlob_cursor % len(self.vlobs)]
        self.vlob_cursor += 1
        return vlob

    def next_block(self) -> ID:
        if not self.blocks:
            raise RuntimeError("no block created on this connection")
        block = self.blocks[self.block_cursor % len(self.blocks)]
        self.block_cursor += 1
        return block


Op = Callable[[ConnState, bytes], Awaitable[dict[str, Any]]]


async def _ping(st: ConnState, data: bytes) -> dict[str, Any]:
    return await st.conn.cmd("ping", ping="x")


async def _vlob_create(st: ConnState, data: bytes) -> dict[str, Any]:
    vlob_id = ID.new()
    reply = await st.conn.cmd(
        "vlob_create",
        realm_id=st.realm_id,
        encryption_revision=ENCRYPTION_REVISION,
        vlob_id=vlob_id,
        timestamp=DateTime.now(),
        blob=data,
    )
    if reply.get("status") == "ok":
        st.vlobs.append([vlob_id, 1])
        st.writes += 1
    return reply


async def _vlob_read(st: ConnState, data: bytes) -> dict[str, Any]:
    vlob_id, _ = st.next_vlob()
    return await st.conn.cmd(
        "vlob_read",
        encryption_revision=ENCRYPTION_REVISION,
        vlob_id=vlob_id,
        version=None,
        timestamp=None,
    )


async def _vlob_update(st: ConnState, data: bytes) -> dict[str, Any]:
    vlob = st.next_vlob()
    reply = await st.conn.cmd(
        "vlob_update",
        encryption_revision=ENCRYPTION_REVISION,
        vlob_id=vlob[0],
        timestamp=DateTime.now(),
        version=vlob[1] + 1,
        blob=data,
    )
    if reply.get("status") == "ok":
        vlob[1] += 1
        st.writes += 1
    return reply


async def _vlob_poll_changes(st: ConnState, data: bytes) -> dict[str, Any]:
    return await st.conn.cmd(
        "vlob_poll_changes",
        realm_id=st.realm_id,
        last_checkpoint=max(0, st.writes - POLL_CHANGES),
    )


async def _block_create(st: ConnState, data: bytes) -> dict[str, Any]:
    block_id = ID.new()
    reply = await st.conn.cmd("block_create", block_id=block_id, realm_id=st.realm_id, block=data)
    if reply.get("status") == "ok":
        st.blocks.append(block_id)
    return reply


async def _block_read(st: ConnState, data: bytes) -> dict[str, Any]:
    reply = await st.conn.cmd("block_read", block_id=st.next_block())
    if reply.get("status") == "ok" and len(reply.get("block", b"")) != len(data):
        return {"status": f"block of {len(reply.get('block', b''))} bytes, {len(data)} expected"}
    return reply


OPS: dict[str, Op] = {
    "ping": _ping,
    "vlob_create": _vlob_create,
    "vlob_read": _vlob_read,
    "vlob_update": _vlob_update,
    "vlob_poll_changes": _vlob_poll_changes,
    "block_create": _block_create,
    "block_read": _block_read,
}
