"""A device's keys, as the client library holds them in memory."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from hashlib import sha256

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from parsec_server.api.addr import BackendAddr
from parsec_server.api.codec import ID
from parsec_server.api.handshake import API_V2
from parsec_server.api.ids import HumanHandle, UserProfile, user_id_of
from parsec_server.client.connection import AuthenticatedAuth, BackendConnection

SECRET_KEY_SIZE = 32
_SLUG_HASH_PREFIX = 10


def new_secret_key() -> bytes:
    return secrets.token_bytes(SECRET_KEY_SIZE)


@dataclass(frozen=True)
class LocalDevice:
    """A device as the 2.0.0 client keeps it: what talking to the server needs, plus three
    client-side secrets a device key file must hold (the user manifest's id and key, shared
    by all the devices of a user and handed over by a DEVICE invitation, and a per-device
    local key for the local cache). A new user gets random ones by default."""

    backend_addr: BackendAddr
    organization_id: str
    device_id: str
    device_label: str | None
    human_handle: HumanHandle | None
    profile: UserProfile
    signing_key: SigningKey
    private_key: PrivateKey
    root_verify_key: bytes
    user_manifest_id: ID = field(default_factory=ID.new)
    user_manifest_key: bytes = field(default_factory=new_secret_key, repr=False)
    local_symkey: bytes = field(default_factory=new_secret_key, repr=False)

    @property
    def user_id(self) -> str:
        return user_id_of(self.device_id)

    def auth(self, api_version: tuple[int, int] = API_V2) -> AuthenticatedAuth:
        return AuthenticatedAuth(
            organization_id=self.organization_id,
            device_id=self.device_id,
            signing_key=self.signing_key,
            root_verify_key=self.root_verify_key,
            api_version=api_version,
        )

    async def connect(self, api_version: tuple[int, int] = API_V2) -> BackendConnection:
        return await BackendConnection.connect(self.backend_addr, self.auth(api_version))

    @property
    def slug(self) -> str:
        """`<10 hex of SHA-256(root verify key)>#<organization>#<device id>`: how the
        2.0.0 client tells devices apart (the hash separates organizations recreated
        with the same name)."""
        return device_slug(self)


def device_slug(device: LocalDevice) -> str:
    hash_part = sha256(device.root_verify_key).hexdigest()[:_SLUG_HASH_PREFIX]
    return f"{hash_part}#{device.organization_id}#{device.device_id}"


def slughash(slug: str) -> str:
    """SHA-256 of the slug, in hex: the key file's name and the CLI's `--device` value."""
    return sha256(slug.encode("utf-8")).hexdigest()
