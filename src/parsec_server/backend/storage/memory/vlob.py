from __future__ import annotations

import uuid

from parsec_server.api.codec import DateTime
from parsec_server.api.ids import user_id_of
from parsec_server.backend.events import EventBus
from parsec_server.backend.realm_types import READ_ROLES, WRITE_ROLES, RealmBadOutcome
from parsec_server.backend.storage.memory.datamodel import (
    MemoryDatamodel,
    MemoryOrganization,
    MemoryRealm,
    MemoryVlob,
)
from parsec_server.backend.storage.memory.realm import _owned_realm_in_maintenance
from parsec_server.backend.vlob import BaseVlobComponent, ReencryptionEntry, VlobVersion


def _vlob_access(
    org: MemoryOrganization,
    user_id: str,
    vlob_id: uuid.UUID,
    roles: frozenset[object],
    encryption_revision: int | None,
) -> tuple[MemoryVlob, MemoryRealm] | RealmBadOutcome:
    """The in-memory order of checks: vlob, role, maintenance, encryption revision."""
    vlob = org.vlobs.get(vlob_id)
    if vlob is None:
        return RealmBadOutcome.VLOB_NOT_FOUND
    realm = org.realms[vlob.realm_id]
    if realm.current_role(user_id) not in roles:
        return RealmBadOutcome.NOT_ALLOWED
    if realm.in_maintenance:
        return RealmBadOutcome.IN_MAINTENANCE
    if encryption_revision is not None and encryption_revision != realm.encryption_revision:
        return RealmBadOutcome.BAD_ENCRYPTION_REVISION
    return vlob, realm


def _record_write(realm: MemoryRealm, vlob_id: uuid.UUID, version: int) -> int:
    realm.checkpoint += 1
    realm.vlob_updates.append((realm.checkpoint, vlob_id, version))
    return realm.checkpoint


class MemoryVlobComponent(BaseVlobComponent):
    def __init__(self, data: MemoryDatamodel, event_bus: EventBus) -> None:
        super().__init__(event_bus)
        self._data = data

    async def create(
        self,
        organization_id: str,
        author: str,
        realm_id: uuid.UUID,
        encryption_revision: int,
        vlob_id: uuid.UUID,
        timestamp: DateTime,
        blob: bytes,
    ) -> int | RealmBadOutcome:
        org = self._data.organizations[organization_id]
        realm = org.realms.get(realm_id)
        if realm is None:
            return RealmBadOutcome.REALM_NOT_FOUND
        if realm.current_role(user_id_of(author)) not in WRITE_ROLES:
            return RealmBadOutcome.NOT_ALLOWED
        if realm.in_maintenance:
            return RealmBadOutcome.IN_MAINTENANCE
        if encryption_revision != realm.encryption_revision:
            return RealmBadOutcome.BAD_ENCRYPTION_REVISION
        if vlob_id in org.vlobs:
            return RealmBadOutcome.VLOB_ALREADY_EXISTS
        org.vlobs[vlob_id] = MemoryVlob(realm_id, [VlobVersion(1, blob, author, timestamp)])
        return _record_write(realm, vlob_id, 1)

    async def read(
        self,
        organization_id: str,
        user_id: str,
        encryption_revision: int,
        vlob_id: uuid.UUID,
        version: int | None,
        timestamp: DateTime | None,
    ) -> VlobVersion | RealmBadOutcome:
        org = self._data.organizations[organization_id]
        access = _vlob_access(org, user_id, vlob_id, READ_ROLES, encryption_revision)
        if isinstance(access, RealmBadOutcome):
            return access
        versions = access[0].versions
        if version is not None:
            if version > len(versions):
                return RealmBadOutcome.BAD_VERSION
            return versions[version - 1]
        if timestamp is not None:
            before = [v for v in versions if v.created_on <= timestamp]
            return before[-1] if before else RealmBadOutcome.BAD_VERSION
        return versions[-1]

    async def update(
        self,
        organization_id: str,
        author: str,
        encryption_revision: int,
        vlob_id: uuid.UUID,
        version: int,
        timestamp: DateTime,
        blob: bytes,
    ) -> tuple[uuid.UUID, int] | RealmBadOutcome:
        org = self._data.organizations[organization_id]
        access = _vlob_access(org, user_id_of(author), vlob_id, WRITE_ROLES, encryption_revision)
        if isinstance(access, RealmBadOutcome):
            return access
        vlob, realm = access
        if version != len(vlob.versions) + 1:
            return RealmBadOutcome.BAD_VERSION
        if timestamp < vlob.versions[-1].created_on:
            return RealmBadOutcome.BAD_TIMESTAMP
        vlob.versions.append(VlobVersion(version, blob, author, timestamp))
        return realm.realm_id, _record_write(realm, vlob_id, version)

    async def poll_changes(
        self, organization_id: str, user_id: str, realm_id: uuid.UUID, last_checkpoint: int
    ) -> tuple[dict[uuid.UUID, int], int] | RealmBadOutcome:
        realm = self._data.organizations[organization_id].realms.get(realm_id)
        if realm is None:
            return RealmBadOutcome.REALM_NOT_FOUND
        if realm.current_role(user_id) is None:
            return RealmBadOutcome.NOT_ALLOWED
        if realm.in_maintenance:
            return RealmBadOutcome.IN_MAINTENANCE
        changes: dict[uuid.UUID, int] = {}
        for index, vlob_id, version in realm.vlob_updates[max(last_checkpoint, 0) :]:
            assert index > last_checkpoint
            changes[vlob_id] = max(version, changes.get(vlob_id, 0))
        return changes, realm.checkpoint

    async def list_versions(
        self, organization_id: str, user_id: str, vlob_id: uuid.UUID
    ) -> list[tuple[int, DateTime, str]] | RealmBadOutcome:
        org = self._data.organizations[organization_id]
        access = _vlob_access(org, user_id, vlob_id, READ_ROLES, None)
        if isinstance(access, RealmBadOutcome):
            return access
        return [(v.version, v.created_on, v.author) for v in access[0].versions]

    async def get_reencryption_batch(
        self,
        organization_id: str,
        user_id: str,
        realm_id: uuid.UUID,
        encryption_revision: int,
        size: int,
    ) -> list[ReencryptionEntry] | RealmBadOutcome:
        org = self._data.organizations[organization_id]
        realm = _owned_realm_in_maintenance(org, user_id, realm_id, encryption_revision)
        if isinstance(realm, RealmBadOutcome):
            return realm
        batch: list[ReencryptionEntry] = []
        for (vlob_id, version), new_blob in realm.reencryption.items():
            if len(batch) >= size:
                break
            if new_blob is None:
                old = org.vlobs[vlob_id].versions[version - 1]
                batch.append(ReencryptionEntry(vlob_id, version, old.blob))
        return batch

    async def save_reencryption_batch(
        self,
        organization_id: str,
        user_id: str,
        realm_id: uuid.UUID,
        encryption_revision: int,
        batch: list[ReencryptionEntry],
    ) -> tuple[int, int] | RealmBadOutcome:
        org = self._data.organizations[organization_id]
        realm = _owned_realm_in_maintenance(org, user_id, realm_id, encryption_revision)
        if isinstance(realm, RealmBadOutcome):
            return realm
        for entry in batch:
            key = (entry.vlob_id, entry.version)
            if key not in realm.reencryption:
                return RealmBadOutcome.REENCRYPTION_ENTRY_NOT_FOUND
            if realm.reencryption[key] is None:
                realm.reencryption[key] = entry.blob
        done = sum(1 for blob in realm.reencryption.values() if blob is not None)
        return len(realm.reencryption), done
