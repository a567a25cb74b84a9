from __future__ import annotations

from parsec_server.api.codec import ID, DateTime
from parsec_server.api.ids import EncryptionRevision, UserID
from parsec_server.api.protocol.base import Req


class RealmCreateReq(Req, frozen=True, tag="realm_create"):
    role_certificate: bytes


class RealmStatusReq(Req, frozen=True, tag="realm_status"):
    realm_id: ID


class RealmStatsReq(Req, frozen=True, tag="realm_stats"):
    realm_id: ID


class RealmGetRoleCertificatesReq(Req, frozen=True, tag="realm_get_role_certificates"):
    realm_id: ID
    since: DateTime | None = None


class RealmUpdateRolesReq(Req, frozen=True, tag="realm_update_roles"):
    role_certificate: bytes
    recipient_message: bytes | None


class RealmStartReencryptionMaintenanceReq(
    Req, frozen=True, tag="realm_start_reencryption_maintenance"
):
    realm_id: ID
    encryption_revision: EncryptionRevision
    timestamp: DateTime
    per_participant_message: dict[UserID, bytes]


class RealmFinishReencryptionMaintenanceReq(
    Req, frozen=True, tag="realm_finish_reencryption_maintenance"
):
    realm_id: ID
    encryption_revision: EncryptionRevision
