from __future__ import annotations

import dataclasses

from msgspec import UnsetType

from parsec_server.api.codec import DateTime
from parsec_server.backend.audit import STREAM_ONLY, AuditLog
from parsec_server.backend.events import EventBus
from parsec_server.backend.organization import (
    BaseOrganizationComponent,
    Organization,
    OrganizationBootstrapBadOutcome,
    OrganizationCreateBadOutcome,
    OrganizationDetails,
    OrganizationSettings,
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
        self,
        organization_id: str,
        bootstrap_token: str,
        expiration_date: DateTime | None,
        settings: OrganizationSettings,
        created_on: DateTime,
        replace_unbootstrapped: bool,
    ) -> OrganizationCreateBadOutcome | None:
        existing = self._data.organizations.get(organization_id)
        if existing is not None:
            if existing.organization.is_bootstrapped:
                return OrganizationCreateBadOutcome.ALREADY_BOOTSTRAPPED
            if not replace_unbootstrapped:
                return OrganizationCreateBadOutcome.ALREADY_EXISTS
        self._data.organizations[organization_id] = MemoryOrganization(
            Organization(organization_id, bootstrap_token, expiration_date, None),
            settings=settings,
            created_on=created_on,
        )
        return None

    async def create_if_missing(self, organization_id: str, bootstrap_token: str) -> None:
        if organization_id not in self._data.organizations:
            self._data.organizations[organization_id] = MemoryOrganization(
                Organization(organization_id, bootstrap_token, None, None),
                created_on=DateTime.now(),
            )

    async def get(self, organization_id: str) -> Organization | None:
        org = self._data.organizations.get(organization_id)
        return None if org is None else org.organization

    async def get_details(self, organization_id: str) -> OrganizationDetails | None:
        org = self._data.organizations.get(organization_id)
        return None if org is None else _details(org)

    async def list_details(self, offset: int, limit: int) -> tuple[list[OrganizationDetails], int]:
        ids = sorted(self._data.organizations)
        page = ids[offset : offset + limit]
        return [_details(self._data.organizations[i]) for i in page], len(ids)

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

    async def stats(self, organization_id: str, at: DateTime | None) -> OrganizationStats | None:
        org = self._data.organizations.get(organization_id)
        return None if org is None else org.stats(at)

    async def all_stats(self, at: DateTime | None) -> list[tuple[str, OrganizationStats]]:
        return [
            (organization_id, org.stats(at))
            for organization_id, org in sorted(self._data.organizations.items())
            if org.created_on is None or at is None or org.created_on <= at
        ]

    async def update(
        self,
        organization_id: str,
        expiration_date: DateTime | UnsetType | None,
        active_users_limit: int | UnsetType | None,
        user_profile_outsider_allowed: bool | UnsetType,
    ) -> bool:
        org = self._data.organizations.get(organization_id)
        if org is None:
            return False
        if not isinstance(expiration_date, UnsetType):
            org.organization = dataclasses.replace(
                org.organization, expiration_date=expiration_date
            )
        if not isinstance(active_users_limit, UnsetType):
            org.settings = dataclasses.replace(org.settings, active_users_limit=active_users_limit)
        if not isinstance(user_profile_outsider_allowed, UnsetType):
            org.settings = dataclasses.replace(
                org.settings, user_profile_outsider_allowed=user_profile_outsider_allowed
            )
        return True


def _details(org: MemoryOrganization) -> OrganizationDetails:
    return OrganizationDetails(org.organization, org.settings, org.created_on)
