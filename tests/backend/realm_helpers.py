"""Helpers of the realm, vlob, block, re-encryption and message tests
(protocol/40-realm-vlob.md, 50-block-blockstore.md)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from websockets.asyncio.client import ClientConnection

from parsec_server.api.codec import ID, DateTime
from parsec_server.api.ids import RealmRole
from parsec_server.backend.events import Event
from parsec_server.client.certificates import realm_role_certificate
from parsec_server.client.connection import BackendConnection
from parsec_server.client.device import LocalDevice
from parsec_server.client.realm import create_realm, share
from tests.backend.common import authenticated_ws, send_cmd, watch_events
from tests.fixtures.servers import RunningServer

OK = {"status": "ok"}
NOT_ALLOWED = {"status": "not_allowed"}
IN_MAINTENANCE = {"status": "in_maintenance"}
BAD_ENCRYPTION_REVISION = {"status": "bad_encryption_revision"}
BAD_VERSION = {"status": "bad_version"}
ALREADY_GRANTED = {"status": "already_granted"}
NO_EVENTS = {"status": "no_events"}
OUT_OF_DATE = {"status": "bad_timestamp", "reason": "Timestamp is out of date."}

ROLES: list[RealmRole | None] = [None, *RealmRole]


def realm_not_found(realm_id: ID) -> dict[str, Any]:
    return {"status": "not_found", "reason": f"Realm `{realm_id}` doesn't exist"}


def vlob_not_found(vlob_id: ID) -> dict[str, Any]:
    return {"status": "not_found", "reason": f"Vlob `{vlob_id}` doesn't exist"}


def not_in_maintenance(realm_id: ID) -> dict[str, Any]:
    return {"status": "not_in_maintenance", "reason": f"Realm `{realm_id}` not under maintenance"}


def now() -> DateTime:
    return DateTime.now()


def role_certificate(
    author: LocalDevice,
    realm_id: ID,
    user_id: str,
    role: RealmRole | None,
    timestamp: DateTime | None = None,
) -> bytes:
    return realm_role_certificate(
        author.signing_key, author.device_id, timestamp or now(), realm_id, user_id, role
    )


async def new_realm(
    device: LocalDevice,
    members: dict[LocalDevice, RealmRole] | None = None,
    realm_id: ID | None = None,
    created_on: DateTime | None = None,
) -> ID:
    """A realm created by `device` (its OWNER), shared by it with `members`."""
    async with await device.connect() as conn:
        realm_id = await create_realm(conn, device, realm_id, created_on)
        for member, role in (members or {}).items():
            await share(conn, device, realm_id, member.user_id, role)
    return realm_id


async def update_roles(
    conn: BackendConnection,
    author: LocalDevice,
    realm_id: ID,
    user_id: str,
    role: RealmRole | None,
    message: bytes | None = None,
    timestamp: DateTime | None = None,
) -> dict[str, Any]:
    return await conn.cmd(
        "realm_update_roles",
        role_certificate=role_certificate(author, realm_id, user_id, role, timestamp),
        recipient_message=message,
    )


async def vlob_create(
    conn: BackendConnection,
    realm_id: ID,
    vlob_id: ID,
    blob: bytes = b"<manifest v1>",
    timestamp: DateTime | None = None,
    encryption_revision: int = 1,
) -> dict[str, Any]:
    return await conn.cmd(
        "vlob_create",
        realm_id=realm_id,
        encryption_revision=encryption_revision,
        vlob_id=vlob_id,
        timestamp=timestamp or now(),
        blob=blob,
    )


async def vlob_update(
    conn: BackendConnection,
    vlob_id: ID,
    version: int,
    blob: bytes = b"<manifest vN>",
    timestamp: DateTime | None = None,
    encryption_revision: int = 1,
) -> dict[str, Any]:
    return await conn.cmd(
        "vlob_update",
        encryption_revision=encryption_revision,
        vlob_id=vlob_id,
        timestamp=timestamp or now(),
        version=version,
        blob=blob,
    )


async def vlob_read(
    conn: BackendConnection,
    vlob_id: ID,
    version: int | None = None,
    timestamp: DateTime | None = None,
    encryption_revision: int = 1,
) -> dict[str, Any]:
    """As the 2.0.0 client: `version` and `timestamp` always sent, usually nil."""
    return await conn.cmd(
        "vlob_read",
        encryption_revision=encryption_revision,
        vlob_id=vlob_id,
        version=version,
        timestamp=timestamp,
    )


async def start_reencryption(
    conn: BackendConnection,
    realm_id: ID,
    messages: dict[str, bytes],
    encryption_revision: int = 2,
    timestamp: DateTime | None = None,
) -> dict[str, Any]:
    return await conn.cmd(
        "realm_start_reencryption_maintenance",
        realm_id=realm_id,
        encryption_revision=encryption_revision,
        timestamp=timestamp or now(),
        per_participant_message=messages,
    )


async def start_maintenance_alone(owner: LocalDevice, realm_id: ID) -> None:
    """Put a realm whose only member is `owner` in re-encryption maintenance (revision 2)."""
    async with await owner.connect() as conn:
        assert await start_reencryption(conn, realm_id, {owner.user_id: b"key"}) == OK


async def subscribed_ws(device: LocalDevice) -> ClientConnection:
    ws = await authenticated_ws(device)
    assert await send_cmd(ws, "events_subscribe") == OK
    return ws


async def listen(ws: ClientConnection) -> dict[str, Any]:
    return await send_cmd(ws, "events_listen")


async def assert_no_event(ws: ClientConnection) -> None:
    assert await send_cmd(ws, "events_listen", wait=False) == NO_EVENTS


def dispatched(server: RunningServer, event_type: type[Event], **fields: Any) -> asyncio.Event:
    """A flag set once the server has dispatched an event of this type with these fields
    (ids given as ID) to its connections; wait for it with `wait_set`."""
    expected = {k: v.uuid if isinstance(v, ID) else v for k, v in fields.items()}

    def predicate(event: Event) -> bool:
        return isinstance(event, event_type) and all(
            getattr(event, k) == v for k, v in expected.items()
        )

    return watch_events(server, predicate)


def roles_updated(realm_id: ID, role: RealmRole | None) -> dict[str, Any]:
    return {
        "status": "ok",
        "event": "realm.roles_updated",
        "realm_id": realm_id,
        "role": None if role is None else role.value,
    }


def vlobs_updated(realm_id: ID, checkpoint: int, vlob_id: ID, version: int) -> dict[str, Any]:
    return {
        "status": "ok",
        "event": "realm.vlobs_updated",
        "realm_id": realm_id,
        "checkpoint": checkpoint,
        "src_id": vlob_id,
        "src_version": version,
    }


def message_received(index: int) -> dict[str, Any]:
    return {"status": "ok", "event": "message.received", "index": index}


def new_id() -> ID:
    return ID(uuid.uuid4())
