from __future__ import annotations

import dataclasses

from parsec_server.api.codec import DateTime
from parsec_server.backend.audit import STREAM_ONLY, AuditLog
from parsec_server.backend.events import EventBus
from parsec_server.backend.organization import Organization
from parsec_server.backend.storage.memory.datamodel import MemoryDatamodel, MemoryOrganization
from parsec_server.backend.user import (
    BaseUserComponent,
    CertifiedDevice,
    DeviceCreateBadOutcome,
    HumanCandidate,
    UserCreateBadOutcome,
    UserFreezeBadOutcome,
    UserRevokeBadOutcome,
    creation_refused,
    walk_trustchain,
)
from parsec_server.backend.user_types import Device, User, UserSummary, UserWithTrustchain


def _email_taken(org: MemoryOrganization, email: str) -> bool:
    # A revoked user frees its email at once, whatever its revocation date.
    return any(
        u.human_handle is not None and u.human_handle[0] == email and u.revoked_on is None
        for u in org.users.values()
    )


class MemoryUserComponent(BaseUserComponent):
    def __init__(
        self, data: MemoryDatamodel, event_bus: EventBus, audit: AuditLog = STREAM_ONLY
    ) -> None:
        super().__init__(event_bus, audit)
        self._data = data

    async def get_identity(
        self, organization_id: str, device_id: str
    ) -> tuple[Organization, User, Device] | None:
        org = self._data.organizations.get(organization_id)
        if org is None:
            return None
        device = org.devices.get(device_id)
        if device is None:
            return None
        user = org.users[device.user_id]
        if user.user_id in org.frozen_users:
            user = dataclasses.replace(user, frozen=True)
        return org.organization, user, device

    async def create_user(
        self, organization_id: str, user: User, first_device: Device
    ) -> UserCreateBadOutcome | None:
        org = self._data.organizations[organization_id]
        if user.user_id in org.users:
            return UserCreateBadOutcome.USER_ALREADY_EXISTS
        if user.human_handle is not None and _email_taken(org, user.human_handle[0]):
            return UserCreateBadOutcome.HUMAN_HANDLE_ALREADY_TAKEN
        refused = creation_refused(org.settings, user.profile, org.active_users())
        if refused is not None:
            return refused
        org.users[user.user_id] = user
        org.devices[first_device.device_id] = first_device
        return None

    async def create_device(
        self, organization_id: str, device: Device
    ) -> DeviceCreateBadOutcome | None:
        org = self._data.organizations[organization_id]
        if device.device_id in org.devices:
            return DeviceCreateBadOutcome.ALREADY_EXISTS
        org.devices[device.device_id] = device
        return None

    async def get_user_with_trustchain(
        self, organization_id: str, user_id: str, redacted: bool
    ) -> UserWithTrustchain | None:
        org = self._data.organizations.get(organization_id)
        user = None if org is None else org.users.get(user_id)
        if org is None or user is None:
            return None
        devices = [d for d in org.devices.values() if d.user_id == user_id]

        start = [user.user_certifier, user.revoked_user_certifier]
        start += [d.device_certifier for d in devices]
        trustchain = await walk_trustchain(
            start, lambda ids: self.certified_devices(organization_id, ids), redacted
        )
        return UserWithTrustchain(
            user_certificate=user.redacted_user_certificate if redacted else user.user_certificate,
            revoked_user_certificate=user.revoked_user_certificate,
            device_certificates=[
                d.redacted_device_certificate if redacted else d.device_certificate for d in devices
            ],
            trustchain=trustchain,
        )

    async def certified_devices(
        self, organization_id: str, device_ids: set[str]
    ) -> dict[str, CertifiedDevice]:
        org = self._data.organizations[organization_id]
        found = {}
        for device_id in device_ids:
            device = org.devices.get(device_id)
            if device is None:
                continue
            owner = org.users[device.user_id]
            found[device_id] = CertifiedDevice(
                device.device_certificate,
                device.redacted_device_certificate,
                device.device_certifier,
                owner.user_certificate,
                owner.redacted_user_certificate,
                owner.user_certifier,
                owner.revoked_user_certificate,
                owner.revoked_user_certifier,
            )
        return found

    async def revoke_user(
        self,
        organization_id: str,
        user_id: str,
        revoked_user_certificate: bytes,
        revoked_user_certifier: str,
        revoked_on: DateTime,
    ) -> UserRevokeBadOutcome | None:
        org = self._data.organizations[organization_id]
        user = org.users.get(user_id)
        if user is None:
            return UserRevokeBadOutcome.NOT_FOUND
        if user.revoked_on is not None:
            return UserRevokeBadOutcome.ALREADY_REVOKED
        org.users[user_id] = dataclasses.replace(
            user,
            revoked_on=revoked_on,
            revoked_user_certificate=revoked_user_certificate,
            revoked_user_certifier=revoked_user_certifier,
        )
        return None

    async def human_candidates(self, organization_id: str) -> list[HumanCandidate]:
        org = self._data.organizations[organization_id]
        return [HumanCandidate(u.user_id, u.human_handle, u.revoked_on) for u in org.users.values()]

    async def list_users(self, organization_id: str) -> list[UserSummary] | None:
        org = self._data.organizations.get(organization_id)
        if org is None:
            return None
        return [_summary(org, org.users[user_id]) for user_id in sorted(org.users)]

    async def set_frozen(
        self, organization_id: str, user_id: str | None, email: str | None, frozen: bool
    ) -> UserSummary | UserFreezeBadOutcome:
        org = self._data.organizations.get(organization_id)
        if org is None:
            return UserFreezeBadOutcome.ORGANIZATION_NOT_FOUND
        user = _find_user(org, user_id, email)
        if user is None:
            return UserFreezeBadOutcome.USER_NOT_FOUND
        if frozen:
            org.frozen_users.add(user.user_id)
        else:
            org.frozen_users.discard(user.user_id)
        return _summary(org, user)


def _find_user(org: MemoryOrganization, user_id: str | None, email: str | None) -> User | None:
    if user_id is not None:
        return org.users.get(user_id)
    for user in org.users.values():
        handle = user.human_handle
        if handle is not None and handle[0] == email and user.revoked_on is None:
            return user
    return None


def _summary(org: MemoryOrganization, user: User) -> UserSummary:
    return UserSummary(
        user_id=user.user_id,
        human_handle=user.human_handle,
        profile=user.profile,
        created_on=user.created_on,
        revoked_on=user.revoked_on,
        frozen=user.user_id in org.frozen_users,
    )
