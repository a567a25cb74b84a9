from __future__ import annotations

import dataclasses

from parsec_server.api.codec import DateTime
from parsec_server.backend.audit import STREAM_ONLY, AuditLog
from parsec_server.backend.events import EventBus
from parsec_server.backend.organization import (
    BaseOrganizationComponent,
    Organization,
    OrganizationBootstrapBadOutcome,
    OrganizationCreateBadOutcome,
    OrganizationStats,
    bootstrap_token_matches,
)
from parsec_server.backend.storage.memory.datamodel import MemoryDatamodel, MemoryOrganization
from parsec_server.backend.user_types import Device, User
from parsec_server.backend.webhooks import BootstrapWebhook


class MemoryOrganizationComponent(BaseOrganizationComponent):
    def __init__(
        self,
        data: MemoryDatamodel,
        event_bus: EventBus,
        webhook: BootstrapWebhook,
        audit: AuditLog = STREAM_ONLY,
    ) -> None:
        super().__init__(event_bus, webhook, audit)
        self._data = data

    async def create(
        self, organization_id: str, bootstrap_token: str, expiration_date: DateTime | None
    ) -> OrganizationCreateBadOutcome | None:
        existing = self._data.organizations.get(organization_id)
        if existing is not None and existing.organization.is_bootstrapped:
            return OrganizationCreateBadOutcome.ALREADY_BOOTSTRAPPED
        self._data.organizations[organization_id] = MemoryOrganization(
            Organization(organization_id, bootstrap_token, expiration_date, None)
        )
        return None

    async def create_if_missing(self, organization_id: str, bootstrap_token: str) -> None:
        if organization_id not in self._data.organizations:
            self._data.organizations[organization_id] = MemoryOrganization(
                Organization(organization_id, bootstrap_token, None, None)
            )

    async def get(self, organization_id: str) -> Organization | None:
        org = self._data.organizations.get(organization_id)
        return None if org is None else org.organization

    async def bootstrap(
        self,
        organization_id: str,
        bootstrap_token: str,
        root_verify_key: bytes,
        first_user: User,
        first_device: Device,
    ) -> OrganizationBootstrapBadOutcome | None:
        org = self._data.organizations.get(organization_id)
        if org is None:
            return OrganizationBootstrapBadOutcome.NOT_FOUND
        if org.organization.is_bootstrapped:
            return OrganizationBootstrapBadOutcome.ALREADY_BOOTSTRAPPED
        if not bootstrap_token_matches(org.organization, bootstrap_token):
            return OrganizationBootstrapBadOutcome.BAD_TOKEN
        org.organization = dataclasses.replace(org.organization, root_verify_key=root_verify_key)
        org.users[first_user.user_id] = first_user
        org.devices[first_device.device_id] = first_device
        return None

    async def stats(self, organization_id: str) -> OrganizationStats | None:
        org = self._data.organizations.get(organization_id)
        if org is None:
            return None
        return OrganizationStats(
            users=len(org.users), data_size=org.data_size, metadata_size=org.metadata_size
        )

    async def update_expiration_date(
        self, organization_id: str, expiration_date: DateTime | None
    ) -> bool:
        org = self._data.organizations.get(organization_id)
        if org is None:
            return False
        org.organization = dataclasses.replace(org.organization, expiration_date=expiration_date)
        return True
