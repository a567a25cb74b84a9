"""Users and devices as stored (shared by the user and organization components)."""

from __future__ import annotations

from dataclasses import dataclass

from parsec_server.api.codec import DateTime
from parsec_server.api.ids import HumanHandle, UserProfile


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    human_handle: HumanHandle | None
    profile: UserProfile
    user_certificate: bytes
    redacted_user_certificate: bytes
    user_certifier: str | None  # DeviceID, None = the root key
    created_on: DateTime
    revoked_on: DateTime | None = None
    revoked_user_certificate: bytes | None = None
    revoked_user_certifier: str | None = None
    # Frozen by the administration: refused at the handshake (not a protocol notion)
    frozen: bool = False

    def is_revoked(self, now: DateTime) -> bool:
        return self.revoked_on is not None and self.revoked_on <= now


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    device_label: str | None
    device_certificate: bytes
    redacted_device_certificate: bytes
    device_certifier: str | None
    created_on: DateTime
    verify_key: bytes

    @property
    def user_id(self) -> str:
        return self.device_id.partition("@")[0]


@dataclass(frozen=True, slots=True)
class Trustchain:
    devices: list[bytes]
    users: list[bytes]
    revoked_users: list[bytes]


@dataclass(frozen=True, slots=True)
class UserWithTrustchain:
    user_certificate: bytes
    revoked_user_certificate: bytes | None
    device_certificates: list[bytes]
    trustchain: Trustchain


@dataclass(frozen=True, slots=True)
class HumanFindResult:
    user_id: str
    human_handle: HumanHandle | None
    revoked: bool


@dataclass(frozen=True, slots=True)
class UserSummary:
    """A user as the administration sees it."""

    user_id: str
    human_handle: HumanHandle | None
    profile: UserProfile
    created_on: DateTime
    revoked_on: DateTime | None
    frozen: bool
