from __future__ import annotations

import dataclasses
import uuid

from parsec_server.api.codec import DateTime
from parsec_server.api.ids import RealmRole, UserProfile, user_id_of
from parsec_server.backend.events import EventBus
from parsec_server.backend.realm import BaseRealmComponent, RealmStats, RealmStatus
from parsec_server.backend.realm_types import (
    NewMessage,
    RealmBadOutcome,
    RoleGrant,
    can_change_role,
    check_role_timestamp,
)
from parsec_server.backend.storage.memory.datamodel import (
    MemoryDatamodel,
    MemoryOrganization,
    MemoryRealm,
)


def _member_realm(
    org: MemoryOrganization, user_id: str, realm_id: uuid.UUID
) -> MemoryRealm | RealmBadOutcome:
    realm = org.realms.get(realm_id)
    if realm is None:
        return RealmBadOutcome.REALM_NOT_FOUND
    if realm.current_role(user_id) is None:
        return RealmBadOutcome.NOT_ALLOWED
    return realm


def _owned_realm_in_maintenance(
    org: MemoryOrganization, author_user: str, realm_id: uuid.UUID, encryption_revision: int
) -> MemoryRealm | RealmBadOutcome:
    realm = org.realms.get(realm_id)
    if realm is None:
        return RealmBadOutcome.REALM_NOT_FOUND
    if realm.current_role(author_user) is not RealmRole.OWNER:
        return RealmBadOutcome.NOT_ALLOWED
    if not realm.in_maintenance:
        return RealmBadOutcome.NOT_IN_MAINTENANCE
    if encryption_revision != realm.encryption_revision:
        return RealmBadOutcome.BAD_ENCRYPTION_REVISION
    return realm


class MemoryRealmComponent(BaseRealmComponent):
    def __init__(self, data: MemoryDatamodel, event_bus: EventBus) -> None:
        super().__init__(event_bus)
        self._data = data

    async def create(self, organization_id: str, grant: RoleGrant) -> RealmBadOutcome | None:
        org = self._data.organizations[organization_id]
        if grant.realm_id in org.realms:
            return RealmBadOutcome.REALM_ALREADY_EXISTS
        org.realms[grant.realm_id] = MemoryRealm(realm_id=grant.realm_id, roles=[grant])
        return None

    async def get_status(
        self, organization_id: str, user_id: str, realm_id: uuid.UUID
    ) -> RealmStatus | RealmBadOutcome:
        realm = _member_realm(self._data.organizations[organization_id], user_id, realm_id)
        if isinstance(realm, RealmBadOutcome):
            return realm
        return RealmStatus(
            realm.encryption_revision, realm.maintenance_started_on, realm.maintenance_started_by
        )

    async def get_stats(
        self, organization_id: str, user_id: str, realm_id: uuid.UUID
    ) -> RealmStats | RealmBadOutcome:
        org = self._data.organizations[organization_id]
        realm = _member_realm(org, user_id, realm_id)
        if isinstance(realm, RealmBadOutcome):
            return realm
        vlobs_size = sum(
            len(v.blob)
            for vlob in org.vlobs.values()
            if vlob.realm_id == realm_id
            for v in vlob.versions
        )
        return RealmStats(blocks_size=realm.blocks_size, vlobs_size=vlobs_size)

    async def get_role_certificates(
        self, organization_id: str, user_id: str, realm_id: uuid.UUID, since: DateTime | None
    ) -> list[bytes] | RealmBadOutcome:
        realm = _member_realm(self._data.organizations[organization_id], user_id, realm_id)
        if isinstance(realm, RealmBadOutcome):
            return realm
        grants = sorted(realm.roles, key=lambda g: g.granted_on)  # stable: ties keep order
        return [g.certificate for g in grants if since is None or g.granted_on > since]

    async def update_roles(
        self, organization_id: str, grant: RoleGrant, recipient_message: bytes | None
    ) -> NewMessage | RealmBadOutcome | None:
        org = self._data.organizations[organization_id]
        subject = org.users.get(grant.user_id)
        if subject is None:
            return RealmBadOutcome.USER_NOT_FOUND
        if subject.profile is UserProfile.OUTSIDER and grant.role in (
            RealmRole.OWNER,
            RealmRole.MANAGER,
        ):
            return RealmBadOutcome.INCOMPATIBLE_PROFILE
        realm = org.realms.get(grant.realm_id)
        if realm is None:
            return RealmBadOutcome.REALM_NOT_FOUND
        if realm.in_maintenance:
            return RealmBadOutcome.IN_MAINTENANCE
        subject_grant = realm.latest_grant(grant.user_id)
        author_grant = realm.latest_grant(user_id_of(grant.granted_by))
        existing = None if subject_grant is None else subject_grant.role
        author_role = None if author_grant is None else author_grant.role
        if not can_change_role(author_role, existing, grant.role):
            return RealmBadOutcome.NOT_ALLOWED
        if existing == grant.role:
            return RealmBadOutcome.ALREADY_GRANTED
        refused = check_role_timestamp(
            grant.granted_on,
            None if subject_grant is None else subject_grant.granted_on,
            None if author_grant is None else author_grant.granted_on,
        )
        if refused is not None:
            return refused
        realm.roles.append(grant)
        if recipient_message is None:
            return None
        index = org.append_message(
            grant.user_id, grant.granted_by, grant.granted_on, recipient_message
        )
        return NewMessage(grant.user_id, index)

    async def start_reencryption_maintenance(
        self,
        organization_id: str,
        author: str,
        realm_id: uuid.UUID,
        encryption_revision: int,
        timestamp: DateTime,
        per_participant_message: dict[str, bytes],
    ) -> list[NewMessage] | RealmBadOutcome:
        org = self._data.organizations[organization_id]
        realm = org.realms.get(realm_id)
        if realm is None:
            return RealmBadOutcome.REALM_NOT_FOUND
        if realm.current_role(author.partition("@")[0]) is not RealmRole.OWNER:
            return RealmBadOutcome.NOT_ALLOWED
        if realm.in_maintenance:
            return RealmBadOutcome.IN_MAINTENANCE
        if encryption_revision != realm.encryption_revision + 1:
            return RealmBadOutcome.BAD_ENCRYPTION_REVISION
        now = DateTime.now()
        participants = {
            user_id
            for user_id in {g.user_id for g in realm.roles}
            if realm.current_role(user_id) is not None and not org.users[user_id].is_revoked(now)
        }
        if participants != set(per_participant_message):
            return RealmBadOutcome.PARTICIPANTS_MISMATCH
        realm.maintenance_started_on = timestamp
        realm.maintenance_started_by = author
        realm.encryption_revision = encryption_revision
        realm.reencryption = {
            (vlob_id, v.version): None
            for vlob_id, vlob in org.vlobs.items()
            if vlob.realm_id == realm_id
            for v in vlob.versions
        }
        return [
            NewMessage(recipient, org.append_message(recipient, author, timestamp, body))
            for recipient, body in per_participant_message.items()
        ]

    async def finish_reencryption_maintenance(
        self, organization_id: str, author: str, realm_id: uuid.UUID, encryption_revision: int
    ) -> RealmBadOutcome | None:
        org = self._data.organizations[organization_id]
        realm = _owned_realm_in_maintenance(
            org, author.partition("@")[0], realm_id, encryption_revision
        )
        if isinstance(realm, RealmBadOutcome):
            return realm
        if any(blob is None for blob in realm.reencryption.values()):
            return RealmBadOutcome.MAINTENANCE_ERROR
        for (vlob_id, version), blob in realm.reencryption.items():
            assert blob is not None
            vlob = org.vlobs[vlob_id]
            old = vlob.versions[version - 1]
            vlob.versions[version - 1] = dataclasses.replace(old, blob=blob)
        realm.reencryption = {}
        realm.maintenance_started_on = None
        realm.maintenance_started_by = None
        return None

    async def realms_of_user(self, organization_id: str, user_id: str) -> set[uuid.UUID]:
        org = self._data.organizations[organization_id]
        return {
            realm_id
            for realm_id, realm in org.realms.items()
            if realm.current_role(user_id) is not None
        }
