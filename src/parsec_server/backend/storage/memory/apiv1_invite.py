from __future__ import annotations

from parsec_server.api.codec import DateTime
from parsec_server.backend.apiv1_invite import (
    APIV1Invitation,
    APIV1InvitationKind,
    BaseAPIV1InviteComponent,
)
from parsec_server.backend.events import EventBus, EventWaiters
from parsec_server.backend.storage.memory.datamodel import MemoryDatamodel, MemoryOrganization
from parsec_server.backend.user import BaseUserComponent


def _exists(org: MemoryOrganization, kind: APIV1InvitationKind, invited_id: str) -> bool:
    if kind is APIV1InvitationKind.USER:
        return invited_id in org.users
    return invited_id in org.devices


class MemoryAPIV1InviteComponent(BaseAPIV1InviteComponent):
    def __init__(
        self,
        data: MemoryDatamodel,
        event_bus: EventBus,
        waiters: EventWaiters,
        user: BaseUserComponent,
    ) -> None:
        super().__init__(event_bus, waiters, user)
        self._data = data

    async def register(
        self,
        organization_id: str,
        kind: APIV1InvitationKind,
        invited_id: str,
        creator_device_id: str,
        created_on: DateTime,
    ) -> bool:
        org = self._data.organizations[organization_id]
        if _exists(org, kind, invited_id):
            return False
        org.apiv1_invitations[kind, invited_id] = APIV1Invitation(creator_device_id, created_on)
        return True

    async def get(
        self, organization_id: str, kind: APIV1InvitationKind, invited_id: str
    ) -> APIV1Invitation | None:
        org = self._data.organizations[organization_id]
        if _exists(org, kind, invited_id):
            return None
        return org.apiv1_invitations.get((kind, invited_id))

    async def delete(
        self, organization_id: str, kind: APIV1InvitationKind, invited_id: str
    ) -> None:
        self._data.organizations[organization_id].apiv1_invitations.pop((kind, invited_id), None)
