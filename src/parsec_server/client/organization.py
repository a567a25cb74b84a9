"""Organization administration and bootstrap, on the client side."""

from __future__ import annotations

from typing import Any

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from parsec_server.api.addr import BackendAddr
from parsec_server.api.codec import DateTime
from parsec_server.api.ids import HumanHandle, UserProfile
from parsec_server.client.certificates import device_certificates, user_certificates
from parsec_server.client.connection import AdministrationAuth, AnonymousAuth, BackendConnection
from parsec_server.client.device import LocalDevice


class CommandFailed(Exception):
    """The server answered a command with a non-ok status."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(f"{reply}")
        self.reply = reply


async def admin_command(
    addr: BackendAddr, administration_token: str, cmd: str, **fields: Any
) -> dict[str, Any]:
    """One administration command on a fresh connection; returns the raw reply."""
    async with await BackendConnection.connect(addr, AdministrationAuth(administration_token)) as c:
        return await c.cmd(cmd, **fields)


async def create_organization(
    addr: BackendAddr,
    administration_token: str,
    organization_id: str,
    expiration_date: DateTime | None = None,
) -> str:
    """Returns the bootstrap token."""
    reply = await admin_command(
        addr,
        administration_token,
        "organization_create",
        organization_id=organization_id,
        expiration_date=expiration_date,
    )
    if reply["status"] != "ok":
        raise CommandFailed(reply)
    token: str = reply["bootstrap_token"]
    return token


async def bootstrap_organization(
    addr: BackendAddr,
    organization_id: str,
    bootstrap_token: str,
    human_handle: HumanHandle | None,
    device_label: str | None,
    user_id: str = "admin",
    device_name: str = "dev1",
) -> LocalDevice:
    root_key = SigningKey.generate()
    signing_key = SigningKey.generate()
    private_key = PrivateKey.generate()
    device_id = f"{user_id}@{device_name}"
    now = DateTime.now()
    user, redacted_user = user_certificates(
        root_key, None, now, user_id, human_handle, private_key.public_key, UserProfile.ADMIN
    )
    device, redacted_device = device_certificates(
        root_key, None, now, device_id, device_label, signing_key.verify_key
    )
    async with await BackendConnection.connect(addr, AnonymousAuth(organization_id)) as c:
        reply = await c.cmd(
            "organization_bootstrap",
            bootstrap_token=bootstrap_token,
            root_verify_key=bytes(root_key.verify_key),
            user_certificate=user,
            device_certificate=device,
            redacted_user_certificate=redacted_user,
            redacted_device_certificate=redacted_device,
        )
    if reply["status"] != "ok":
        raise CommandFailed(reply)
    return LocalDevice(
        backend_addr=addr,
        organization_id=organization_id,
        device_id=device_id,
        device_label=device_label,
        human_handle=human_handle,
        profile=UserProfile.ADMIN,
        signing_key=signing_key,
        private_key=private_key,
        root_verify_key=bytes(root_key.verify_key),
    )
