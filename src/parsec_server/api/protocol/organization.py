from __future__ import annotations

from msgspec import UNSET, UnsetType

from parsec_server.api.codec import DateTime
from parsec_server.api.ids import OrganizationID, Text, VerifyKeyBytes
from parsec_server.api.protocol.base import Req


class OrganizationCreateReq(Req, frozen=True, tag="organization_create"):
    organization_id: OrganizationID
    expiration_date: DateTime | None = None


class OrganizationStatusReq(Req, frozen=True, tag="organization_status"):
    organization_id: OrganizationID


class OrganizationStatsReq(Req, frozen=True, tag="organization_stats"):
    organization_id: OrganizationID


class OrganizationUpdateReq(Req, frozen=True, tag="organization_update"):
    organization_id: OrganizationID
    expiration_date: DateTime | None


class OrganizationBootstrapReq(Req, frozen=True, tag="organization_bootstrap"):
    bootstrap_token: Text
    root_verify_key: VerifyKeyBytes
    user_certificate: bytes
    device_certificate: bytes
    redacted_user_certificate: bytes | UnsetType = UNSET
    redacted_device_certificate: bytes | UnsetType = UNSET
