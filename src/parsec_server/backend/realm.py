"""Realms: creation, roles, status, role certificates, re-encryption maintenance."""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass

from parsec_server.api.certificates import CertificateError, RealmRoleCertificate, verify_and_load
from parsec_server.api.codec import DateTime
from parsec_server.api.ids import RealmRole, UserProfile
from parsec_server.api.protocol import realm as proto
from parsec_server.api.protocol.base import OK, Rep, error, ok
from parsec_server.backend.ballpark import (
    role_certificate_timestamp_acceptable,
    timestamps_in_the_ballpark,
)
from parsec_server.backend.client_context import AuthenticatedClientContext
from parsec_server.backend.events import (
    EventBus,
    MessageReceivedEvent,
    RealmMaintenanceFinishedEvent,
    RealmMaintenanceStartedEvent,
    RealmRolesUpdatedEvent,
)
from parsec_server.backend.realm_types import (
    BAD_TIMESTAMP_OUT_OF_DATE,
    NewMessage,
    RealmBadOutcome,
    RoleGrant,
    bad_outcome_reply,
)


@dataclass(frozen=True, slots=True)
class RealmStatus:
    encryption_revision: int
    maintenance_started_on: DateTime | None
    maintenance_started_by: str | None

    @property
    def in_maintenance(self) -> bool:
        return self.maintenance_started_on is not None


@dataclass(frozen=True, slots=True)
class RealmStats:
    blocks_size: int
    vlobs_size: int


def refuse_outsider_realm_creation(client: AuthenticatedClientContext) -> Rep | None:
    """Precheck of realm_create (before validation, as the reference)."""
    if client.profile is UserProfile.OUTSIDER:
        return error("not_allowed", "Outsider user cannot create realm")
    return None


def _invalid_certification(detail: str) -> Rep:
    return error("invalid_certification", f"Invalid certification data ({detail}).")


class BaseRealmComponent(ABC):
    def __init__(self, event_bus: EventBus) -> None:
        self._event_bus = event_bus

    # Storage: each method is one atomic operation; the `user_id` given is the caller's,
    # whose current role is checked.

    @abstractmethod
    async def create(self, organization_id: str, grant: RoleGrant) -> RealmBadOutcome | None: ...

    @abstractmethod
    async def get_status(
        self, organization_id: str, user_id: str, realm_id: uuid.UUID
    ) -> RealmStatus | RealmBadOutcome: ...

    @abstractmethod
    async def get_stats(
        self, organization_id: str, user_id: str, realm_id: uuid.UUID
    ) -> RealmStats | RealmBadOutcome: ...

    @abstractmethod
    async def get_role_certificates(
        self, organization_id: str, user_id: str, realm_id: uuid.UUID, since: DateTime | None
    ) -> list[bytes] | RealmBadOutcome: ...

    @abstractmethod
    async def update_roles(
        self, organization_id: str, grant: RoleGrant, recipient_message: bytes | None
    ) -> NewMessage | RealmBadOutcome | None:
        """Steps 5-13 of 40-realm-vlob.md §4.5 (uses `can_change_role`), with
        `check_role_timestamp` after step 10; returns the message appended for the subject,
        if any."""

    @abstractmethod
    async def start_reencryption_maintenance(
        self,
        organization_id: str,
        author: str,
        realm_id: uuid.UUID,
        encryption_revision: int,
        timestamp: DateTime,
        per_participant_message: dict[str, bytes],
    ) -> list[NewMessage] | RealmBadOutcome: ...

    @abstractmethod
    async def finish_reencryption_maintenance(
        self, organization_id: str, author: str, realm_id: uuid.UUID, encryption_revision: int
    ) -> RealmBadOutcome | None: ...

    @abstractmethod
    async def realms_of_user(self, organization_id: str, user_id: str) -> set[uuid.UUID]:
        """Realms where the user currently has a role."""

    # Commands

    async def _announce_messages(
        self, client: AuthenticatedClientContext, messages: list[NewMessage]
    ) -> None:
        for message in messages:
            await self._event_bus.send(
                MessageReceivedEvent(
                    organization_id=client.organization_id,
                    author=client.device_id,
                    recipient=message.recipient,
                    index=message.index,
                )
            )

    def _load_role_certificate(
        self, client: AuthenticatedClientContext, certificate: bytes
    ) -> RealmRoleCertificate | Rep:
        try:
            cert = verify_and_load(
                RealmRoleCertificate, certificate, client.verify_key, client.device_id
            )
        except CertificateError as exc:
            return _invalid_certification(str(exc))
        # Narrower than the ballpark in the future (5 minutes), see ballpark.py.
        if not role_certificate_timestamp_acceptable(cert.timestamp, DateTime.now()):
            return error("invalid_certification", "Invalid timestamp in certification.")
        return cert

    async def api_realm_create(
        self, client: AuthenticatedClientContext, req: proto.RealmCreateReq
    ) -> Rep:
        cert = self._load_role_certificate(client, req.role_certificate)
        if isinstance(cert, dict):
            return cert
        if cert.user_id != client.user_id:
            return error("invalid_data", "Initial realm role certificate must be self-signed.")
        if cert.role is not RealmRole.OWNER:
            return error("invalid_data", "Initial realm role certificate must set OWNER role.")
        grant = RoleGrant(
            realm_id=cert.realm_id.uuid,
            user_id=cert.user_id,
            role=cert.role,
            certificate=req.role_certificate,
            granted_by=client.device_id,
            granted_on=cert.timestamp,
        )
        outcome = await self.create(client.organization_id, grant)
        if outcome is not None:
            return bad_outcome_reply(outcome, realm_id=grant.realm_id)
        await self._event_bus.send(
            RealmRolesUpdatedEvent(
                organization_id=client.organization_id,
                author=client.device_id,
                realm_id=grant.realm_id,
                user_id=client.user_id,
                role=RealmRole.OWNER.value,
            )
        )
        return OK

    async def api_realm_status(
        self, client: AuthenticatedClientContext, req: proto.RealmStatusReq
    ) -> Rep:
        status = await self.get_status(client.organization_id, client.user_id, req.realm_id.uuid)
        if isinstance(status, RealmBadOutcome):
            return bad_outcome_reply(status, realm_id=req.realm_id.uuid)
        return ok(
            in_maintenance=status.in_maintenance,
            maintenance_type="REENCRYPTION" if status.in_maintenance else None,
            maintenance_started_on=status.maintenance_started_on,
            maintenance_started_by=status.maintenance_started_by,
            encryption_revision=status.encryption_revision,
        )

    async def api_realm_stats(
        self, client: AuthenticatedClientContext, req: proto.RealmStatsReq
    ) -> Rep:
        stats = await self.get_stats(client.organization_id, client.user_id, req.realm_id.uuid)
        if isinstance(stats, RealmBadOutcome):
            return bad_outcome_reply(stats, realm_id=req.realm_id.uuid)
        return ok(blocks_size=stats.blocks_size, vlobs_size=stats.vlobs_size)

    async def api_realm_get_role_certificates(
        self, client: AuthenticatedClientContext, req: proto.RealmGetRoleCertificatesReq
    ) -> Rep:
        certificates = await self.get_role_certificates(
            client.organization_id, client.user_id, req.realm_id.uuid, req.since
        )
        if isinstance(certificates, RealmBadOutcome):
            return bad_outcome_reply(certificates, realm_id=req.realm_id.uuid)
        return ok(certificates=certificates)

    async def api_realm_update_roles(
        self, client: AuthenticatedClientContext, req: proto.RealmUpdateRolesReq
    ) -> Rep:
        cert = self._load_role_certificate(client, req.role_certificate)
        if isinstance(cert, dict):
            return cert
        if cert.user_id == client.user_id:
            return error("invalid_data", "Realm role certificate cannot be self-signed.")
        grant = RoleGrant(
            realm_id=cert.realm_id.uuid,
            user_id=cert.user_id,
            role=cert.role,
            certificate=req.role_certificate,
            granted_by=client.device_id,
            granted_on=cert.timestamp,
        )
        outcome = await self.update_roles(client.organization_id, grant, req.recipient_message)
        if isinstance(outcome, RealmBadOutcome):
            return bad_outcome_reply(outcome, realm_id=grant.realm_id, user_id=grant.user_id)
        await self._event_bus.send(
            RealmRolesUpdatedEvent(
                organization_id=client.organization_id,
                author=client.device_id,
                realm_id=grant.realm_id,
                user_id=grant.user_id,
                role=grant.role.value if grant.role is not None else None,
            )
        )
        if outcome is not None:
            await self._announce_messages(client, [outcome])
        return OK

    async def api_realm_start_reencryption_maintenance(
        self, client: AuthenticatedClientContext, req: proto.RealmStartReencryptionMaintenanceReq
    ) -> Rep:
        if not timestamps_in_the_ballpark(req.timestamp, DateTime.now()):
            return BAD_TIMESTAMP_OUT_OF_DATE
        realm_id = req.realm_id.uuid
        messages = await self.start_reencryption_maintenance(
            client.organization_id,
            client.device_id,
            realm_id,
            req.encryption_revision,
            req.timestamp,
            req.per_participant_message,
        )
        if isinstance(messages, RealmBadOutcome):
            return bad_outcome_reply(messages, realm_id=realm_id)
        await self._event_bus.send(
            RealmMaintenanceStartedEvent(
                organization_id=client.organization_id,
                author=client.device_id,
                realm_id=realm_id,
                encryption_revision=req.encryption_revision,
            )
        )
        await self._announce_messages(client, messages)
        return OK

    async def api_realm_finish_reencryption_maintenance(
        self, client: AuthenticatedClientContext, req: proto.RealmFinishReencryptionMaintenanceReq
    ) -> Rep:
        realm_id = req.realm_id.uuid
        outcome = await self.finish_reencryption_maintenance(
            client.organization_id, client.device_id, realm_id, req.encryption_revision
        )
        if outcome is not None:
            return bad_outcome_reply(outcome, realm_id=realm_id)
        await self._event_bus.send(
            RealmMaintenanceFinishedEvent(
                organization_id=client.organization_id,
                author=client.device_id,
                realm_id=realm_id,
                encryption_revision=req.encryption_revision,
            )
        )
        return OK
