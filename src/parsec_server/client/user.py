"""Creating users and devices from an existing device."""

from __future__ import annotations

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from parsec_server.api.codec import DateTime
from parsec_server.api.ids import HumanHandle, UserProfile
from parsec_server.client.certificates import device_certificates, user_certificates
from parsec_server.client.connection import BackendConnection
from parsec_server.client.device import LocalDevice
from parsec_server.client.organization import CommandFailed


async def create_user(
    conn: BackendConnection,
    author: LocalDevice,
    user_id: str,
    device_name: str,
    human_handle: HumanHandle | None,
    profile: UserProfile,
    device_label: str | None = None,
) -> LocalDevice:
    signing_key = SigningKey.generate()
    private_key = PrivateKey.generate()
    device_id = f"{user_id}@{device_name}"
    now = DateTime.now()
    user, redacted_user = user_certificates(
        author.signing_key,
        author.device_id,
        now,
        user_id,
        human_handle,
        private_key.public_key,
        profile,
    )
    device, redacted_device = device_certificates(
        author.signing_key, author.device_id, now, device_id, device_label, signing_key.verify_key
    )
    reply = await conn.cmd(
        "user_create",
        user_certificate=user,
        device_certificate=device,
        redacted_user_certificate=redacted_user,
        redacted_device_certificate=redacted_device,
    )
    if reply["status"] != "ok":
        raise CommandFailed(reply)
    return LocalDevice(
        backend_addr=author.backend_addr,
        organization_id=author.organization_id,
        device_id=device_id,
        device_label=device_label,
        human_handle=human_handle,
        profile=profile,
        signing_key=signing_key,
        private_key=private_key,
        root_verify_key=author.root_verify_key,
    )


async def create_device(
    conn: BackendConnection, author: LocalDevice, device_name: str, device_label: str | None = None
) -> LocalDevice:
    signing_key = SigningKey.generate()
    device_id = f"{author.user_id}@{device_name}"
    device, redacted_device = device_certificates(
        author.signing_key,
        author.device_id,
        DateTime.now(),
        device_id,
        device_label,
        signing_key.verify_key,
    )
    reply = await conn.cmd(
        "device_create", device_certificate=device, redacted_device_certificate=redacted_device
    )
    if reply["status"] != "ok":
        raise CommandFailed(reply)
    return LocalDevice(
        backend_addr=author.backend_addr,
        organization_id=author.organization_id,
        device_id=device_id,
        device_label=device_label,
        human_handle=author.human_handle,
        profile=author.profile,
        signing_key=signing_key,
        private_key=author.private_key,
        root_verify_key=author.root_verify_key,
        # The user's own: every device of a user shares its user manifest.
        user_manifest_id=author.user_manifest_id,
        user_manifest_key=author.user_manifest_key,
    )
