"""API 1 (legacy) invitations, see protocol/30-commands-org-user-invite.md §6.

The inviter registers an invitation for a user id (or a device id of its own user) and
waits; the claimer, on an anonymous connection, sends its encrypted claim and waits for
the inviter to create the user (or device). Both waits are "breathing" (a new request
abandons them) and last at most 300 s. The relay goes through the event bus, so inviter
and claimer may be served by different processes.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from parsec_server.api.codec import DateTime
from parsec_server.api.ids import UserProfile
from parsec_server.api.protocol import apiv1_invite as proto
from parsec_server.api.protocol.base import OK, Rep, error, ok
from parsec_server.backend.client_context import (
    CLOSE_EVENTS_MISSED,
    AnonymousClientContext,
    AuthenticatedClientContext,
    CloseConnection,
)
from parsec_server.backend.events import (
    APIV1InvitationCancelledEvent,
    APIV1InvitationClaimedEvent,
    DeviceCreatedEvent,
    Event,
    EventBus,
    EventsMissed,
    EventWaiters,
    UserCreatedEvent,
)
from parsec_server.backend.user import BaseUserComponent
from parsec_server.backend.user_types import Trustchain

INVITATION_VALIDITY_SECONDS = 3600.0
WAIT_TIMEOUT_SECONDS = 300.0

TIMEOUT_USER_CLAIM = "Timeout while waiting for new user to be claimed."
TIMEOUT_DEVICE_CLAIM = "Timeout while waiting for new device to be claimed."
TIMEOUT_CREATOR = "Timeout while waiting for invitation creator to answer."
DENIED = "Invitation creator rejected us."


class APIV1InvitationKind(Enum):
    USER = "USER"
    DEVICE = "DEVICE"


@dataclass(frozen=True, slots=True)
class APIV1Invitation:
    creator_device_id: str
    created_on: DateTime

    def is_expired(self, now: DateTime) -> bool:
        return now.timestamp() - self.created_on.timestamp() > INVITATION_VALIDITY_SECONDS


def require_admin_v1_invite(client: AuthenticatedClientContext) -> Rep | None:
    if client.profile is not UserProfile.ADMIN:
        return error("not_allowed", "Only allowed for user with ADMIN profile.")
    return None


def _invited_id_of(event: Event) -> str | None:
    match event:
        case APIV1InvitationClaimedEvent() | APIV1InvitationCancelledEvent():
            return event.invited_id
        case UserCreatedEvent():
            return event.user_id
        case DeviceCreatedEvent():
            return event.device_id
    return None


def _trustchain_rep(trustchain: Trustchain) -> Rep:
    return {
        "devices": trustchain.devices,
        "users": trustchain.users,
        "revoked_users": trustchain.revoked_users,
    }


class BaseAPIV1InviteComponent(ABC):
    def __init__(self, event_bus: EventBus, waiters: EventWaiters, user: BaseUserComponent):
        self._event_bus = event_bus
        self._waiters = waiters
        self._user = user

    # Storage

    @abstractmethod
    async def register(
        self,
        organization_id: str,
        kind: APIV1InvitationKind,
        invited_id: str,
        creator_device_id: str,
        created_on: DateTime,
    ) -> bool:
        """Register (or replace) the invitation; False if the user/device already exists."""

    @abstractmethod
    async def get(
        self, organization_id: str, kind: APIV1InvitationKind, invited_id: str
    ) -> APIV1Invitation | None:
        """None when there is no invitation or the user/device already exists."""

    @abstractmethod
    async def delete(
        self, organization_id: str, kind: APIV1InvitationKind, invited_id: str
    ) -> None: ...

    # Shared steps

    @staticmethod
    def _event_for(
        organization_id: str, invited_id: str, *kinds: type[Event]
    ) -> Callable[[Event], bool]:
        def matches(event: Event) -> bool:
            return (
                isinstance(event, kinds)
                and event.organization_id == organization_id
                and _invited_id_of(event) == invited_id
            )

        return matches

    async def _invite(
        self,
        client: AuthenticatedClientContext,
        kind: APIV1InvitationKind,
        invited_id: str,
        already_exists: str,
        timeout_reason: str,
    ) -> Rep:
        org = client.organization_id
        claimed = self._event_for(org, invited_id, APIV1InvitationClaimedEvent)
        with self._waiters.expect(claimed) as future:
            if not await self.register(org, kind, invited_id, client.device_id, DateTime.now()):
                return error("already_exists", already_exists)
            try:
                async with asyncio.timeout(WAIT_TIMEOUT_SECONDS):
                    event = await future
            except TimeoutError:
                return error("timeout", timeout_reason)
            except EventsMissed:
                # The claim may have been missed: the inviter starts again.
                raise CloseConnection(CLOSE_EVENTS_MISSED) from None
        assert isinstance(event, APIV1InvitationClaimedEvent)
        return ok(encrypted_claim=event.encrypted_claim)

    async def _get_creator(
        self, client: AnonymousClientContext, kind: APIV1InvitationKind, invited_id: str
    ) -> Rep:
        invitation = await self.get(client.organization_id, kind, invited_id)
        if invitation is None or invitation.is_expired(DateTime.now()):
            return error("not_found")
        found = await self._user.get_device_with_trustchain(
            client.organization_id, invitation.creator_device_id
        )
        if found is None:
            return error("not_found")
        user_certificate, device_certificate, trustchain = found
        return ok(
            user_certificate=user_certificate,
            device_certificate=device_certificate,
            trustchain=_trustchain_rep(trustchain),
        )

    async def _claim(
        self,
        client: AnonymousClientContext,
        kind: APIV1InvitationKind,
        invited_id: str,
        encrypted_claim: bytes,
    ) -> Rep:
        org = client.organization_id
        created_kind = UserCreatedEvent if kind is APIV1InvitationKind.USER else DeviceCreatedEvent
        answer = self._event_for(org, invited_id, created_kind, APIV1InvitationCancelledEvent)
        with self._waiters.expect(answer) as future:
            invitation = await self.get(org, kind, invited_id)
            if invitation is None:
                return error("not_found")
            await self._event_bus.send(
                APIV1InvitationClaimedEvent(
                    organization_id=org, invited_id=invited_id, encrypted_claim=encrypted_claim
                )
            )
            # The reference relays the claim even for an expired invitation.
            if invitation.is_expired(DateTime.now()):
                return error("not_found")
            try:
                async with asyncio.timeout(WAIT_TIMEOUT_SECONDS):
                    event = await future
            except TimeoutError:
                return error("timeout", TIMEOUT_CREATOR)
            except EventsMissed:
                # The answer may have been missed: the claimer starts again.
                raise CloseConnection(CLOSE_EVENTS_MISSED) from None
        match event:
            case UserCreatedEvent():
                return ok(
                    user_certificate=event.user_certificate,
                    device_certificate=event.first_device_certificate,
                )
            case DeviceCreatedEvent():
                return ok(
                    device_certificate=event.device_certificate,
                    encrypted_answer=event.encrypted_answer,
                )
        return error("denied", DENIED)

    async def _cancel(
        self, client: AuthenticatedClientContext, kind: APIV1InvitationKind, invited_id: str
    ) -> Rep:
        await self.delete(client.organization_id, kind, invited_id)
        await self._event_bus.send(
            APIV1InvitationCancelledEvent(
                organization_id=client.organization_id, invited_id=invited_id
            )
        )
        return OK

    # Commands

    async def api_user_invite(
        self, client: AuthenticatedClientContext, req: proto.APIV1UserInviteReq
    ) -> Rep:
        return await self._invite(
            client,
            APIV1InvitationKind.USER,
            req.user_id,
            f"User `{req.user_id}` already exists",
            TIMEOUT_USER_CLAIM,
        )

    async def api_user_get_invitation_creator(
        self, client: AnonymousClientContext, req: proto.APIV1UserGetInvitationCreatorReq
    ) -> Rep:
        return await self._get_creator(client, APIV1InvitationKind.USER, req.invited_user_id)

    async def api_user_claim(
        self, client: AnonymousClientContext, req: proto.APIV1UserClaimReq
    ) -> Rep:
        return await self._claim(
            client, APIV1InvitationKind.USER, req.invited_user_id, req.encrypted_claim
        )

    async def api_user_cancel_invitation(
        self, client: AuthenticatedClientContext, req: proto.APIV1UserCancelInvitationReq
    ) -> Rep:
        return await self._cancel(client, APIV1InvitationKind.USER, req.user_id)

    async def api_device_invite(
        self, client: AuthenticatedClientContext, req: proto.APIV1DeviceInviteReq
    ) -> Rep:
        device_id = f"{client.user_id}@{req.invited_device_name}"
        return await self._invite(
            client,
            APIV1InvitationKind.DEVICE,
            device_id,
            f"Device `{device_id}` already exists",
            TIMEOUT_DEVICE_CLAIM,
        )

    async def api_device_get_invitation_creator(
        self, client: AnonymousClientContext, req: proto.APIV1DeviceGetInvitationCreatorReq
    ) -> Rep:
        return await self._get_creator(client, APIV1InvitationKind.DEVICE, req.invited_device_id)

    async def api_device_claim(
        self, client: AnonymousClientContext, req: proto.APIV1DeviceClaimReq
    ) -> Rep:
        return await self._claim(
            client, APIV1InvitationKind.DEVICE, req.invited_device_id, req.encrypted_claim
        )

    async def api_device_cancel_invitation(
        self, client: AuthenticatedClientContext, req: proto.APIV1DeviceCancelInvitationReq
    ) -> Rep:
        device_id = f"{client.user_id}@{req.invited_device_name}"
        return await self._cancel(client, APIV1InvitationKind.DEVICE, device_id)
