"""API 2 invitations. For now only the INVITED handshake's lookup: no invitation exists
yet, so every claimer is told the invitation is not found (the full rendezvous comes next)."""

from __future__ import annotations

from parsec_server.api.codec import DateTime
from parsec_server.api.handshake import (
    HELP_INVITATION_NOT_FOUND,
    HandshakeResult,
    InvitedAnswer,
    result_frame,
)
from parsec_server.backend.client_context import InvitedClientContext
from parsec_server.backend.events import Event, EventBus, OrganizationExpiredEvent
from parsec_server.backend.handshake import HandshakeOutcome
from parsec_server.backend.organization import BaseOrganizationComponent


class InviteComponent:
    def __init__(self, organization: BaseOrganizationComponent, event_bus: EventBus) -> None:
        self._organization = organization
        self._event_bus = event_bus

    async def handshake(self, answer: InvitedAnswer) -> HandshakeOutcome:
        organization = await self._organization.get(answer.organization_id)
        if organization is None:
            return HandshakeOutcome(result_frame(HandshakeResult.BAD_IDENTITY))
        if organization.is_expired(DateTime.now()):
            await self._event_bus.send(
                OrganizationExpiredEvent(organization_id=answer.organization_id)
            )
            return HandshakeOutcome(result_frame(HandshakeResult.ORGANIZATION_EXPIRED))
        return HandshakeOutcome(
            result_frame(HandshakeResult.BAD_IDENTITY, HELP_INVITATION_NOT_FOUND)
        )

    def closes_invited_connection(self, client: InvitedClientContext, event: Event) -> bool:
        return False
