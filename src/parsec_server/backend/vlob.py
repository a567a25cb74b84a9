"""Vlobs: versioned opaque blobs (encrypted manifests) in realms, and their re-encryption."""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass

from parsec_server.api.codec import ID, DateTime
from parsec_server.api.protocol import vlob as proto
from parsec_server.api.protocol.base import OK, Rep, ok
from parsec_server.backend.ballpark import timestamps_in_the_ballpark
from parsec_server.backend.client_context import AuthenticatedClientContext
from parsec_server.backend.events import EventBus, RealmVlobsUpdatedEvent
from parsec_server.backend.realm_types import (
    BAD_TIMESTAMP_OUT_OF_DATE,
    RealmBadOutcome,
    bad_outcome_reply,
)


@dataclass(frozen=True, slots=True)
class VlobVersion:
    version: int
    blob: bytes
    author: str
    created_on: DateTime


@dataclass(frozen=True, slots=True)
class ReencryptionEntry:
    vlob_id: uuid.UUID
    version: int
    blob: bytes


class BaseVlobComponent(ABC):
    def __init__(self, event_bus: EventBus) -> None:
        self._event_bus = event_bus

    # Storage: each method is one atomic operation; `author`/`user_id` is the caller.
    # Writes return the realm's new checkpoint.

    @abstractmethod
    async def create(
        self,
        organization_id: str,
        author: str,
        realm_id: uuid.UUID,
        encryption_revision: int,
        vlob_id: uuid.UUID,
        timestamp: DateTime,
        blob: bytes,
    ) -> int | RealmBadOutcome: ...

    @abstractmethod
    async def read(
        self,
        organization_id: str,
        user_id: str,
        encryption_revision: int,
        vlob_id: uuid.UUID,
        version: int | None,
        timestamp: DateTime | None,
    ) -> VlobVersion | RealmBadOutcome: ...

    @abstractmethod
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
        """Returns (realm id, new checkpoint)."""

    @abstractmethod
    async def poll_changes(
        self, organization_id: str, user_id: str, realm_id: uuid.UUID, last_checkpoint: int
    ) -> tuple[dict[uuid.UUID, int], int] | RealmBadOutcome: ...

    @abstractmethod
    async def list_versions(
        self, organization_id: str, user_id: str, vlob_id: uuid.UUID
    ) -> list[tuple[int, DateTime, str]] | RealmBadOutcome: ...

    @abstractmethod
    async def get_reencryption_batch(
        self,
        organization_id: str,
        user_id: str,
        realm_id: uuid.UUID,
        encryption_revision: int,
        size: int,
    ) -> list[ReencryptionEntry] | RealmBadOutcome: ...

    @abstractmethod
    async def save_reencryption_batch(
        self,
        organization_id: str,
        user_id: str,
        realm_id: uuid.UUID,
        encryption_revision: int,
        batch: list[ReencryptionEntry],
    ) -> tuple[int, int] | RealmBadOutcome:
        """Returns (total, done)."""

    # Commands

    async def _announce(
        self,
        client: AuthenticatedClientContext,
        realm_id: uuid.UUID,
        checkpoint: int,
        vlob_id: uuid.UUID,
        version: int,
    ) -> None:
        await self._event_bus.send(
            RealmVlobsUpdatedEvent(
                organization_id=client.organization_id,
                author=client.device_id,
                realm_id=realm_id,
                checkpoint=checkpoint,
                src_id=vlob_id,
                src_version=version,
            )
        )

    async def api_vlob_create(
        self, client: AuthenticatedClientContext, req: proto.VlobCreateReq
    ) -> Rep:
        if not timestamps_in_the_ballpark(req.timestamp, DateTime.now()):
            return BAD_TIMESTAMP_OUT_OF_DATE
        realm_id, vlob_id = req.realm_id.uuid, req.vlob_id.uuid
        checkpoint = await self.create(
            client.organization_id,
            client.device_id,
            realm_id,
            req.encryption_revision,
            vlob_id,
            req.timestamp,
            req.blob,
        )
        if isinstance(checkpoint, RealmBadOutcome):
            return bad_outcome_reply(checkpoint, realm_id=realm_id, vlob_id=vlob_id)
        await self._announce(client, realm_id, checkpoint, vlob_id, 1)
        return OK

    async def api_vlob_read(
        self, client: AuthenticatedClientContext, req: proto.VlobReadReq
    ) -> Rep:
        found = await self.read(
            client.organization_id,
            client.user_id,
            req.encryption_revision,
            req.vlob_id.uuid,
            req.version,
            req.timestamp,
        )
        if isinstance(found, RealmBadOutcome):
            return bad_outcome_reply(found, vlob_id=req.vlob_id.uuid)
        return ok(
            version=found.version, blob=found.blob, author=found.author, timestamp=found.created_on
        )

    async def api_vlob_update(
        self, client: AuthenticatedClientContext, req: proto.VlobUpdateReq
    ) -> Rep:
        if not timestamps_in_the_ballpark(req.timestamp, DateTime.now()):
            return BAD_TIMESTAMP_OUT_OF_DATE
        vlob_id = req.vlob_id.uuid
        updated = await self.update(
            client.organization_id,
            client.device_id,
            req.encryption_revision,
            vlob_id,
            req.version,
            req.timestamp,
            req.blob,
        )
        if isinstance(updated, RealmBadOutcome):
            return bad_outcome_reply(updated, vlob_id=vlob_id)
        realm_id, checkpoint = updated
        await self._announce(client, realm_id, checkpoint, vlob_id, req.version)
        return OK

    async def api_vlob_poll_changes(
        self, client: AuthenticatedClientContext, req: proto.VlobPollChangesReq
    ) -> Rep:
        polled = await self.poll_changes(
            client.organization_id, client.user_id, req.realm_id.uuid, req.last_checkpoint
        )
        if isinstance(polled, RealmBadOutcome):
            return bad_outcome_reply(polled, realm_id=req.realm_id.uuid)
        changes, checkpoint = polled
        return ok(
            changes={ID(vlob_id): version for vlob_id, version in changes.items()},
            current_checkpoint=checkpoint,
        )

    async def api_vlob_list_versions(
        self, client: AuthenticatedClientContext, req: proto.VlobListVersionsReq
    ) -> Rep:
        versions = await self.list_versions(
            client.organization_id, client.user_id, req.vlob_id.uuid
        )
        if isinstance(versions, RealmBadOutcome):
            return bad_outcome_reply(versions, vlob_id=req.vlob_id.uuid)
        return ok(versions={v: [created_on, author] for v, created_on, author in versions})

    async def api_vlob_maintenance_get_reencryption_batch(
        self, client: AuthenticatedClientContext, req: proto.VlobMaintenanceGetReencryptionBatchReq
    ) -> Rep:
        batch = await self.get_reencryption_batch(
            client.organization_id,
            client.user_id,
            req.realm_id.uuid,
            req.encryption_revision,
            req.size,
        )
        if isinstance(batch, RealmBadOutcome):
            return bad_outcome_reply(batch, realm_id=req.realm_id.uuid)
        return ok(
            batch=[{"vlob_id": ID(e.vlob_id), "version": e.version, "blob": e.blob} for e in batch]
        )

    async def api_vlob_maintenance_save_reencryption_batch(
        self,
        client: AuthenticatedClientContext,
        req: proto.VlobMaintenanceSaveReencryptionBatchReq,
    ) -> Rep:
        saved = await self.save_reencryption_batch(
            client.organization_id,
            client.user_id,
            req.realm_id.uuid,
            req.encryption_revision,
            [ReencryptionEntry(e.vlob_id.uuid, e.version, e.blob) for e in req.batch],
        )
        if isinstance(saved, RealmBadOutcome):
            return bad_outcome_reply(saved, realm_id=req.realm_id.uuid)
        total, done = saved
        return ok(total=total, done=done)
