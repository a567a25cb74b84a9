from __future__ import annotations

import dataclasses
import uuid

from parsec_server.api.codec import DateTime
from parsec_server.api.ids import InvitationType
from parsec_server.api.protocol.invite import InvitationDeletedReason
from parsec_server.backend.events import EventBus, InviteConduitUpdatedEvent
from parsec_server.backend.invite import (
    BaseInviteComponent,
    ConduitStep,
    Invitation,
    InviteDeleteBadOutcome,
    T,
)
from parsec_server.backend.invite_conduit import ConduitBadOutcome
from parsec_server.backend.invite_email import InvitationMailer
from parsec_server.backend.organization import BaseOrganizationComponent
from parsec_server.backend.storage.memory.datamodel import MemoryDatamodel, MemoryInvitation


class MemoryInviteComponent(BaseInviteComponent):
    def __init__(
        self,
        data: MemoryDatamodel,
        organization: BaseOrganizationComponent,
        event_bus: EventBus,
        mailer: InvitationMailer,
    ) -> None:
        super().__init__(organization, event_bus, mailer)
        self._data = data

    async def new(
        self,
        organization_id: str,
        greeter_user_id: str,
        type: InvitationType,
        claimer_email: str | None,
        created_on: DateTime,
    ) -> tuple[Invitation, bool]:
        org = self._data.organizations[organization_id]
        for item in org.invitations.values():
            invitation = item.invitation
            if (
                invitation.deleted_on is None
                and invitation.greeter_user_id == greeter_user_id
                and invitation.type is type
                and invitation.claimer_email == claimer_email
            ):
                return invitation, False
        greeter = org.users[greeter_user_id]
        invitation = Invitation(
            token=uuid.uuid4(),
            type=type,
            greeter_user_id=greeter_user_id,
            greeter_human_handle=greeter.human_handle,
            claimer_email=claimer_email,
            created_on=created_on,
        )
        org.invitations[invitation.token] = MemoryInvitation(invitation)
        return invitation, True

    async def delete(
        self,
        organization_id: str,
        greeter_user_id: str,
        token: uuid.UUID,
        on: DateTime,
        reason: InvitationDeletedReason,
    ) -> InviteDeleteBadOutcome | None:
        org = self._data.organizations[organization_id]
        item = org.invitations.get(token)
        if item is None or item.invitation.greeter_user_id != greeter_user_id:
            return InviteDeleteBadOutcome.NOT_FOUND
        if item.invitation.deleted_on is not None:
            return InviteDeleteBadOutcome.ALREADY_DELETED
        item.invitation = dataclasses.replace(item.invitation, deleted_on=on)
        return None

    async def list_open(self, organization_id: str, greeter_user_id: str) -> list[Invitation]:
        org = self._data.organizations[organization_id]
        invitations = [
            item.invitation
            for item in org.invitations.values()
            if item.invitation.greeter_user_id == greeter_user_id
            and item.invitation.deleted_on is None
        ]
        return sorted(invitations, key=lambda i: i.created_on)

    async def get(self, organization_id: str, token: uuid.UUID) -> Invitation | None:
        org = self._data.organizations.get(organization_id)
        item = None if org is None else org.invitations.get(token)
        return None if item is None else item.invitation

    async def conduit_update(
        self,
        organization_id: str,
        token: uuid.UUID,
        greeter_user_id: str | None,
        step: ConduitStep[T],
    ) -> T | ConduitBadOutcome:
        org = self._data.organizations[organization_id]
        item = org.invitations.get(token)
        if item is None or (
            greeter_user_id is not None and item.invitation.greeter_user_id != greeter_user_id
        ):
            return ConduitBadOutcome.NOT_FOUND
        if item.invitation.deleted_on is not None:
            return ConduitBadOutcome.ALREADY_DELETED
        new_slots, outcome = step(item.conduit)
        if new_slots is not None and new_slots != item.conduit:
            item.conduit = new_slots
            await self._event_bus.send(
                InviteConduitUpdatedEvent(organization_id=organization_id, token=token)
            )
        return outcome
