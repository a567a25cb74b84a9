"""Blocks: encrypted file content. Metadata (realm, author, size) in the database, data in
the blockstore. No database connection is held while the blockstore works."""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod

from parsec_server.api.codec import DateTime
from parsec_server.api.protocol.base import OK, Rep, error, ok
from parsec_server.api.protocol.block import BlockCreateReq, BlockReadReq
from parsec_server.backend.blockstore.base import BlockStore, BlockStoreBadOutcome
from parsec_server.backend.client_context import AuthenticatedClientContext
from parsec_server.backend.realm_types import RealmBadOutcome, bad_outcome_reply


def _block_reply(outcome: RealmBadOutcome) -> Rep:
    """Block errors carry no reason, not even an unknown realm (50-block-blockstore.md §1.1)."""
    if outcome is RealmBadOutcome.REALM_NOT_FOUND:
        return error("not_found")
    return bad_outcome_reply(outcome)


class BaseBlockComponent(ABC):
    def __init__(self, blockstore: BlockStore) -> None:
        self.blockstore = blockstore  # where the data goes (tests may wrap it)

    # Storage (metadata)

    @abstractmethod
    async def check_create(
        self, organization_id: str, user_id: str, realm_id: uuid.UUID, block_id: uuid.UUID
    ) -> RealmBadOutcome | None:
        """Realm exists, caller may write, not in maintenance, block id unused."""

    @abstractmethod
    async def record(
        self,
        organization_id: str,
        author: str,
        realm_id: uuid.UUID,
        block_id: uuid.UUID,
        size: int,
        created_on: DateTime,
    ) -> RealmBadOutcome | None:
        """Insert the metadata if, atomically with the insert, the realm still exists, the
        author's user may still write in it and it is not in maintenance (the data upload
        since `check_create` may have been long); BLOCK_ALREADY_EXISTS if a concurrent
        create won."""

    @abstractmethod
    async def check_read(
        self, organization_id: str, user_id: str, block_id: uuid.UUID
    ) -> RealmBadOutcome | None:
        """Block known, caller may read its realm, not in maintenance."""

    # Commands

    async def api_block_create(
        self, client: AuthenticatedClientContext, req: BlockCreateReq
    ) -> Rep:
        org, realm_id, block_id = client.organization_id, req.realm_id.uuid, req.block_id.uuid
        refused = await self.check_create(org, client.user_id, realm_id, block_id)
        if refused is not None:
            return _block_reply(refused)
        # Data first, metadata last: a block is never announced before its data is stored.
        if await self.blockstore.create(org, block_id, req.block) is not None:
            return bad_outcome_reply(RealmBadOutcome.BLOCKSTORE_UNAVAILABLE)
        outcome = await self.record(
            org, client.device_id, realm_id, block_id, len(req.block), DateTime.now()
        )
        if outcome is not None:
            # The data stays in the blockstore, unreachable: block_read answers from the
            # metadata only, and the id is the caller's own random one (a retry of this
            # upload stores the same data again, idempotently). Removing it would need a
            # delete operation on every blockstore for one block per lost race.
            return _block_reply(outcome)
        return OK

    async def api_block_read(self, client: AuthenticatedClientContext, req: BlockReadReq) -> Rep:
        org, block_id = client.organization_id, req.block_id.uuid
        refused = await self.check_read(org, client.user_id, block_id)
        if refused is not None:
            return _block_reply(refused)
        data = await self.blockstore.read(org, block_id)
        if data is BlockStoreBadOutcome.NOT_FOUND:
            return bad_outcome_reply(RealmBadOutcome.BLOCK_NOT_FOUND)
        if isinstance(data, BlockStoreBadOutcome):
            return bad_outcome_reply(RealmBadOutcome.BLOCKSTORE_UNAVAILABLE)
        return ok(block=data)
