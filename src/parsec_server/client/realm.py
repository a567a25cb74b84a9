"""Creating realms and sharing them, as the client library does."""

from __future__ import annotations

from parsec_server.api.codec import ID, DateTime
from parsec_server.api.ids import RealmRole
from parsec_server.client.certificates import realm_role_certificate
from parsec_server.client.connection import BackendConnection
from parsec_server.client.device import LocalDevice
from parsec_server.client.organization import CommandFailed


async def create_realm(
    conn: BackendConnection,
    device: LocalDevice,
    realm_id: ID | None = None,
    timestamp: DateTime | None = None,
) -> ID:
    """Create a realm owned by `device`'s user (a new id unless given); returns its id."""
    realm_id = realm_id or ID.new()
    certificate = realm_role_certificate(
        device.signing_key,
        device.device_id,
        timestamp or DateTime.now(),
        realm_id,
        device.user_id,
        RealmRole.OWNER,
    )
    reply = await conn.cmd("realm_create", role_certificate=certificate)
    if reply != {"status": "ok"}:
        raise CommandFailed(reply)
    return realm_id


async def share(
    conn: BackendConnection,
    device: LocalDevice,
    realm_id: ID,
    user_id: str,
    role: RealmRole | None,
    message: bytes | None = None,
    timestamp: DateTime | None = None,
) -> bytes:
    """Give `user_id` the role (None: remove its access), with an optional message for it;
    returns the certificate sent."""
    certificate = realm_role_certificate(
        device.signing_key,
        device.device_id,
        timestamp or DateTime.now(),
        realm_id,
        user_id,
        role,
    )
    reply = await conn.cmd(
        "realm_update_roles", role_certificate=certificate, recipient_message=message
    )
    if reply != {"status": "ok"}:
        raise CommandFailed(reply)
    return certificate
