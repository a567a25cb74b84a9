"""A device's keys, as the client library holds them in memory."""

from __future__ import annotations

from dataclasses import dataclass

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from parsec_server.api.addr import BackendAddr
from parsec_server.api.handshake import API_V2
from parsec_server.api.ids import HumanHandle, UserProfile, user_id_of
from parsec_server.client.connection import AuthenticatedAuth, BackendConnection


@dataclass(frozen=True)
class LocalDevice:
    backend_addr: BackendAddr
    organization_id: str
    device_id: str
    device_label: str | None
    human_handle: HumanHandle | None
    profile: UserProfile
    signing_key: SigningKey
    private_key: PrivateKey
    root_verify_key: bytes

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
