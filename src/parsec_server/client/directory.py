"""Who the other devices and users are: verify keys of devices and public keys of users,
fetched with `user_get` and checked up to the organization's root key, cached for the
session (one object per command, no global state)."""

from __future__ import annotations

from dataclasses import dataclass

from parsec_server.api.certificates import (
    CertificateError,
    DeviceCertificate,
    RevokedUserCertificate,
    UserCertificate,
    unsecure_load,
    verify_and_load,
)
from parsec_server.api.ids import HumanHandle, UserProfile, user_id_of
from parsec_server.client.connection import BackendConnection
from parsec_server.client.device import LocalDevice
from parsec_server.client.organization import CommandFailed


class TrustError(Exception):
    """A certificate of the server does not check up to the root key."""


@dataclass(frozen=True)
class UserInfo:
    user_id: str
    human_handle: HumanHandle | None
    profile: UserProfile
    public_key: bytes
    revoked: bool

    @property
    def display(self) -> str:
        if self.human_handle is None:
            return self.user_id
        email, label = self.human_handle
        return f"{label} <{email}>"


class Directory:
    def __init__(self, conn: BackendConnection, device: LocalDevice) -> None:
        self._conn = conn
        self._root_verify_key = device.root_verify_key
        self._verify_keys: dict[str, bytes] = {
            device.device_id: bytes(device.signing_key.verify_key)
        }
        self._users: dict[str, UserInfo] = {}

    async def verify_key(self, device_id: str) -> bytes:
        key = self._verify_keys.get(device_id)
        if key is None:
            await self._fetch(user_id_of(device_id))
            key = self._verify_keys.get(device_id)
            if key is None:
                raise TrustError(f"Unknown device `{device_id}`")
        return key

    async def user(self, user_id: str) -> UserInfo:
        info = self._users.get(user_id)
        if info is None:
            await self._fetch(user_id)
            info = self._users[user_id]
        return info

    async def _fetch(self, user_id: str) -> None:
        reply = await self._conn.cmd("user_get", user_id=user_id)
        if reply.get("status") != "ok":
            raise CommandFailed(reply)
        trustchain = reply["trustchain"]
        devices: dict[str, bytes] = {}
        for raw in [*trustchain["devices"], *reply["device_certificates"]]:
            devices[unsecure_load(DeviceCertificate, raw).device_id] = raw
        users = {
            unsecure_load(UserCertificate, raw).user_id: raw
            for raw in [*trustchain["users"], reply["user_certificate"]]
        }
        try:
            for device_id in devices:
                self._check_device(device_id, devices, set())
            raw_user = users[user_id]
            author = unsecure_load(UserCertificate, raw_user).author
            certificate = verify_and_load(
                UserCertificate, raw_user, self._author_key(author, devices), author
            )
            revoked = reply["revoked_user_certificate"]
            if revoked is not None:
                revoker = unsecure_load(RevokedUserCertificate, revoked).author
                verify_and_load(
                    RevokedUserCertificate, revoked, self._author_key(revoker, devices), revoker
                )
        except CertificateError as exc:
            raise TrustError(f"Certificates of user `{user_id}` do not check: {exc}") from exc
        self._users[user_id] = UserInfo(
            user_id=user_id,
            human_handle=certificate.human_handle,
            profile=certificate.effective_profile,
            public_key=certificate.public_key,
            revoked=revoked is not None,
        )

    def _author_key(self, author: str | None, devices: dict[str, bytes]) -> bytes:
        if author is None:
            return self._root_verify_key
        return self._check_device(author, devices, set())

    def _check_device(self, device_id: str, devices: dict[str, bytes], seen: set[str]) -> bytes:
        known = self._verify_keys.get(device_id)
        if known is not None:
            return known
        if device_id in seen or device_id not in devices:
            raise TrustError(f"Cannot check the certificate of device `{device_id}`")
        seen.add(device_id)
        raw = devices[device_id]
        author = unsecure_load(DeviceCertificate, raw).author
        author_key = (
            self._root_verify_key if author is None else self._check_device(author, devices, seen)
        )
        certificate = verify_and_load(DeviceCertificate, raw, author_key, author)
        self._verify_keys[device_id] = certificate.verify_key
        return certificate.verify_key


async def list_users(conn: BackendConnection, directory: Directory) -> list[UserInfo]:
    """Every user of the organization (`human_find`, page by page), checked."""
    users: list[UserInfo] = []
    page = 1
    while True:
        reply = await conn.cmd("human_find", query=None, page=page, per_page=100)
        if reply.get("status") != "ok":
            raise CommandFailed(reply)
        for result in reply["results"]:
            users.append(await directory.user(result["user_id"]))
        if page * 100 >= reply["total"] or not reply["results"]:
            return users
        page += 1
