from __future__ import annotations

import uuid

from parsec_server.api.codec import DateTime
from parsec_server.api.ids import user_id_of
from parsec_server.backend.block import BaseBlockComponent
from parsec_server.backend.blockstore.base import BlockStore
from parsec_server.backend.realm_types import READ_ROLES, WRITE_ROLES, RealmBadOutcome
from parsec_server.backend.storage.memory.datamodel import (
    MemoryBlock,
    MemoryDatamodel,
    MemoryOrganization,
)


def _create_refusal(
    org: MemoryOrganization, user_id: str, realm_id: uuid.UUID, block_id: uuid.UUID
) -> RealmBadOutcome | None:
    realm = org.realms.get(realm_id)
    if realm is None:
        return RealmBadOutcome.REALM_NOT_FOUND
    if realm.current_role(user_id) not in WRITE_ROLES:
        return RealmBadOutcome.NOT_ALLOWED
    if realm.in_maintenance:
        return RealmBadOutcome.IN_MAINTENANCE
    if block_id in org.blocks:
        return RealmBadOutcome.BLOCK_ALREADY_EXISTS
    return None


class MemoryBlockComponent(BaseBlockComponent):
    def __init__(self, data: MemoryDatamodel, blockstore: BlockStore) -> None:
        super().__init__(blockstore)
        self._data = data

    async def check_create(
        self, organization_id: str, user_id: str, realm_id: uuid.UUID, block_id: uuid.UUID
    ) -> RealmBadOutcome | None:
        org = self._data.organizations[organization_id]
        return _create_refusal(org, user_id, realm_id, block_id)

    async def record(
        self,
        organization_id: str,
        author: str,
        realm_id: uuid.UUID,
        block_id: uuid.UUID,
        size: int,
        created_on: DateTime,
    ) -> RealmBadOutcome | None:
        org = self._data.organizations[organization_id]
        # Checked again: the role or the maintenance may have changed during the upload.
        refused = _create_refusal(org, user_id_of(author), realm_id, block_id)
        if refused is not None:
            return refused
        org.blocks[block_id] = MemoryBlock(realm_id, author, size, created_on)
        org.realms[realm_id].blocks_size += size
        return None

    async def check_read(
        self, organization_id: str, user_id: str, block_id: uuid.UUID
    ) -> RealmBadOutcome | None:
        org = self._data.organizations[organization_id]
        block = org.blocks.get(block_id)
        if block is None:
            return RealmBadOutcome.BLOCK_NOT_FOUND
        realm = org.realms[block.realm_id]
        if realm.current_role(user_id) not in READ_ROLES:
            return RealmBadOutcome.NOT_ALLOWED
        if realm.in_maintenance:
            return RealmBadOutcome.IN_MAINTENANCE
        return None
