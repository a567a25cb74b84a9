"""API 2 invitations: creation, listing, deletion, the INVITED handshake, and the
rendezvous steps of greeter and claimer."""

from __future__ import annotations

import asyncio
import uuid
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum, StrEnum, auto
from functools import partial
from typing import TypeVar

import structlog

from parsec_server.api.codec import ID, DateTime
from parsec_server.api.handshake import (
    HELP_INVITATION_DELETED,
    HELP_INVITATION_NOT_FOUND,
    HandshakeResult,
    InvitedAnswer,
)
from parsec_server.api.ids import HumanHandle, InvitationType, UserProfile
from parsec_server.api.protocol import invite as proto
from parsec_server.api.protocol.base import OK, Rep, error, ok
from parsec_server.backend.client_context import (
    CLOSE_CONNECTION,
    AuthenticatedClientContext,
    HandshakeRefusal,
    InvitedClientContext,
)
from parsec_server.backend.events import (
    Event,
    EventBus,
    InviteConduitUpdatedEvent,
    InviteStatusChangedEvent,
    OrganizationExpiredEvent,
)
from parsec_server.backend.invite_conduit import (
    ConduitBadOutcome,
    ConduitSlots,
    ConduitState,
    Listened,
    Talked,
    claimer_left,
    listen,
    talk,
    withdraw,
)
from parsec_server.backend.invite_email import InvitationMailer
from parsec_server.backend.organization import BaseOrganizationComponent

logger = structlog.get_logger("parsec.invite")

T = TypeVar("T")
ConduitStep = Callable[[ConduitSlots], tuple[ConduitSlots | None, T | ConduitBadOutcome]]


class InvitationStatus(StrEnum):
    IDLE = "IDLE"
    READY = "READY"
    DELETED = "DELETED"


@dataclass(frozen=True, slots=True)
class Invitation:
    token: uuid.UUID
    type: InvitationType
    greeter_user_id: str
    greeter_human_handle: HumanHandle | None
    claimer_email: str | None
    created_on: DateTime
    deleted_on: DateTime | None = None


class InviteDeleteBadOutcome(Enum):
    NOT_FOUND = auto()
    ALREADY_DELETED = auto()


class BaseInviteComponent(ABC):
    def __init__(
        self,
        organization: BaseOrganizationComponent,
        event_bus: EventBus,
        mailer: InvitationMailer,
    ) -> None:
        self._organization = organization
        self._event_bus = event_bus
        self._mailer = mailer
        self._conduit_waiters: dict[tuple[str, uuid.UUID], set[asyncio.Event]] = defaultdict(set)
        # Tokens with a claimer connected, as told by the status events of the cluster.
        self._ready: set[tuple[str, uuid.UUID]] = set()
        event_bus.connect(self._on_event)
        event_bus.connect_events_missed(self._on_events_missed)

    # Storage

    @abstractmethod
    async def new(
        self,
        organization_id: str,
        greeter_user_id: str,
        type: InvitationType,
        claimer_email: str | None,
        created_on: DateTime,
    ) -> tuple[Invitation, bool]:
        """Reuse the greeter's open invitation of that type (and email), else create one.
        Returns (invitation, created)."""

    @abstractmethod
    async def delete(
        self,
        organization_id: str,
        greeter_user_id: str,
        token: uuid.UUID,
        on: DateTime,
        reason: proto.InvitationDeletedReason,
    ) -> InviteDeleteBadOutcome | None: ...

    @abstractmethod
    async def list_open(self, organization_id: str, greeter_user_id: str) -> list[Invitation]:
        """The greeter's open invitations, oldest first."""

    @abstractmethod
    async def get(self, organization_id: str, token: uuid.UUID) -> Invitation | None:
        """Deleted invitations included."""

    @abstractmethod
    async def conduit_update(
        self,
        organization_id: str,
        token: uuid.UUID,
        greeter_user_id: str | None,
        step: ConduitStep[T],
    ) -> T | ConduitBadOutcome:
        """Atomically: load the invitation (NOT_FOUND unless it exists and, when
        `greeter_user_id` is given, belongs to that greeter; ALREADY_DELETED if deleted),
        apply `step` to its conduit, store the new slots if any, and publish a
        conduit-updated event when they changed."""

    # Events of the cluster

    def _on_event(self, event: Event) -> None:
        if isinstance(event, InviteConduitUpdatedEvent):
            for waiter in self._conduit_waiters.get((event.organization_id, event.token), ()):
                waiter.set()
        elif isinstance(event, InviteStatusChangedEvent):
            key = (event.organization_id, event.token)
            if event.status == InvitationStatus.READY:
                self._ready.add(key)
            else:
                self._ready.discard(key)

    def _on_events_missed(self) -> None:
        # A conduit update may have been missed: every waiting step reads its conduit again
        # (a step that finds nothing new goes on waiting).
        for waiters in self._conduit_waiters.values():
            for waiter in waiters:
                waiter.set()

    def closes_invited_connection(self, client: InvitedClientContext, event: Event) -> bool:
        return (
            isinstance(event, InviteStatusChangedEvent)
            and event.status == InvitationStatus.DELETED
            and event.token == client.invitation.token
        )

    async def _send_status(
        self, organization_id: str, greeter: str, token: uuid.UUID, status: InvitationStatus
    ) -> None:
        await self._event_bus.send(
            InviteStatusChangedEvent(
                organization_id=organization_id, greeter=greeter, token=token, status=status
            )
        )

    # Handshake

    async def handshake(self, answer: InvitedAnswer) -> InvitedClientContext | HandshakeRefusal:
        organization = await self._organization.get(answer.organization_id)
        if organization is None:
            return HandshakeRefusal(HandshakeResult.BAD_IDENTITY, "unknown_organization")
        if organization.is_expired(DateTime.now()):
            await self._event_bus.send(
                OrganizationExpiredEvent(organization_id=answer.organization_id)
            )
            return HandshakeRefusal(HandshakeResult.ORGANIZATION_EXPIRED, "organization_expired")
        invitation = await self.get(answer.organization_id, answer.token.uuid)
        if invitation is None:
            return HandshakeRefusal(
                HandshakeResult.BAD_IDENTITY, "unknown_invitation", HELP_INVITATION_NOT_FOUND
            )
        if invitation.deleted_on is not None:
            return HandshakeRefusal(
                HandshakeResult.BAD_IDENTITY, "invitation_deleted", HELP_INVITATION_DELETED
            )
        if invitation.type is not answer.invitation_type:
            return HandshakeRefusal(HandshakeResult.BAD_IDENTITY, "invitation_type_mismatch")
        client = InvitedClientContext(organization_id=answer.organization_id, invitation=invitation)
        return client

    async def on_claimer_connected(self, client: InvitedClientContext) -> None:
        invitation = client.invitation
        await self._send_status(
            client.organization_id,
            invitation.greeter_user_id,
            invitation.token,
            InvitationStatus.READY,
        )

    async def on_claimer_disconnected(self, client: InvitedClientContext) -> None:
        """The claimer's connection has closed (its pending step, if any, is already
        abandoned): undo its part of the rendezvous, then tell the greeter it is gone."""
        invitation = client.invitation
        try:
            if client.conduit_key is not None:
                step = partial(claimer_left, claimer_key=client.conduit_key)
                await self.conduit_update(client.organization_id, invitation.token, None, step)
        finally:
            await self._send_status(
                client.organization_id,
                invitation.greeter_user_id,
                invitation.token,
                InvitationStatus.IDLE,
            )

    # Greeter's management commands

    async def api_invite_new(
        self, client: AuthenticatedClientContext, req: proto.InviteNewReq
    ) -> Rep:
        if req.type is InvitationType.USER:
            if client.profile is not UserProfile.ADMIN:
                return error("not_allowed")
            assert isinstance(req.claimer_email, str)
            claimer_email: str | None = req.claimer_email
        else:
            if req.send_email and client.human_handle is None:
                return error("not_available")
            claimer_email = None
        invitation, _ = await self.new(
            client.organization_id, client.user_id, req.type, claimer_email, DateTime.now()
        )
        await self._send_status(
            client.organization_id, client.user_id, invitation.token, InvitationStatus.IDLE
        )
        if req.send_email:
            await self._mailer.send_invitation(client.organization_id, invitation)
        return ok(token=ID(invitation.token))

    async def api_invite_delete(
        self, client: AuthenticatedClientContext, req: proto.InviteDeleteReq
    ) -> Rep:
        outcome = await self.delete(
            client.organization_id, client.user_id, req.token.uuid, DateTime.now(), req.reason
        )
        match outcome:
            case InviteDeleteBadOutcome.NOT_FOUND:
                return error("not_found")
            case InviteDeleteBadOutcome.ALREADY_DELETED:
                return error("already_deleted")
            case None:
                pass
        await self._send_status(
            client.organization_id, client.user_id, req.token.uuid, InvitationStatus.DELETED
        )
        return OK

    async def api_invite_list(
        self, client: AuthenticatedClientContext, req: proto.InviteListReq
    ) -> Rep:
        invitations = []
        for invitation in await self.list_open(client.organization_id, client.user_id):
            ready = (client.organization_id, invitation.token) in self._ready
            item: Rep = {
                "type": invitation.type.value,
                "token": ID(invitation.token),
                "created_on": invitation.created_on,
                "status": InvitationStatus.READY if ready else InvitationStatus.IDLE,
            }
            if invitation.claimer_email is not None:
                item["claimer_email"] = invitation.claimer_email
            invitations.append(item)
        return ok(invitations=invitations)

    # Claimer's info

    async def api_invite_info(self, client: InvitedClientContext, req: proto.InviteInfoReq) -> Rep:
        invitation = client.invitation
        rep = ok(
            type=invitation.type.value,
            greeter_user_id=invitation.greeter_user_id,
            greeter_human_handle=(
                list(invitation.greeter_human_handle) if invitation.greeter_human_handle else None
            ),
        )
        if invitation.claimer_email is not None:
            rep["claimer_email"] = invitation.claimer_email
        return rep

    # The rendezvous

    @contextmanager
    def _conduit_waiter(self, organization_id: str, token: uuid.UUID) -> Iterator[asyncio.Event]:
        key = (organization_id, token)
        waiter = asyncio.Event()
        self._conduit_waiters[key].add(waiter)
        try:
            yield waiter
        finally:
            waiters = self._conduit_waiters[key]
            waiters.discard(waiter)
            if not waiters:
                del self._conduit_waiters[key]

    async def _exchange(
        self,
        organization_id: str,
        token: uuid.UUID,
        greeter_user_id: str | None,
        state: ConduitState,
        payload: bytes,
    ) -> bytes | ConduitBadOutcome:
        """Deposit our payload for `state` and wait for the peer's. No timeout, as the
        reference: the client gives up by closing its connection, which abandons the wait
        (the task is cancelled) and, at step 1, withdraws our key."""
        try:
            return await self._talk_and_listen(
                organization_id, token, greeter_user_id, state, payload
            )
        except asyncio.CancelledError:
            if state is ConduitState.STATE_1_WAIT_PEERS:
                await self._withdraw(organization_id, token, greeter_user_id, payload)
            raise

    async def _withdraw(
        self, organization_id: str, token: uuid.UUID, greeter_user_id: str | None, key: bytes
    ) -> None:
        step = partial(
            withdraw,
            is_greeter=greeter_user_id is not None,
            state=ConduitState.STATE_1_WAIT_PEERS,
            payload=key,
        )
        try:
            await self.conduit_update(organization_id, token, greeter_user_id, step)
        except Exception:
            logger.exception(
                "cannot withdraw an abandoned step 1 key", organization=organization_id
            )

    async def _talk_and_listen(
        self,
        organization_id: str,
        token: uuid.UUID,
        greeter_user_id: str | None,
        state: ConduitState,
        payload: bytes,
    ) -> bytes | ConduitBadOutcome:
        is_greeter = greeter_user_id is not None
        # 1. Arm the waiter before talking, so that no notification can be missed.
        with self._conduit_waiter(organization_id, token) as waiter:
            talked = await self.conduit_update(
                organization_id,
                token,
                greeter_user_id,
                partial(talk, is_greeter=is_greeter, state=state, payload=payload),
            )
            if not isinstance(talked, Talked):
                return talked
            listen_step = partial(
                listen,
                is_greeter=is_greeter,
                state=state,
                payload=payload,
                peer_at_talk=talked.peer_at_talk,
            )
            while True:
                # 2. Every change of the conduit (the talk's own included) wakes us up.
                await waiter.wait()
                waiter.clear()
                listened = await self.conduit_update(
                    organization_id, token, greeter_user_id, listen_step
                )
                if not isinstance(listened, Listened):
                    return listened
                if listened.payload is not None:
                    return listened.payload

    async def _greeter_steps(
        self,
        client: AuthenticatedClientContext,
        token: ID,
        steps: list[tuple[ConduitState, bytes]],
    ) -> bytes | Rep:
        result: bytes | ConduitBadOutcome = b""
        for state, payload in steps:
            result = await self._exchange(
                client.organization_id, token.uuid, client.user_id, state, payload
            )
            if isinstance(result, ConduitBadOutcome):
                return _greeter_bad_outcome(result)
        assert isinstance(result, bytes)
        return result

    async def _claimer_steps(
        self, client: InvitedClientContext, steps: list[tuple[ConduitState, bytes]]
    ) -> bytes | Rep:
        result: bytes | ConduitBadOutcome = b""
        for state, payload in steps:
            if state is ConduitState.STATE_1_WAIT_PEERS:
                client.conduit_key = payload  # set first: the wait may be abandoned
            result = await self._exchange(
                client.organization_id, client.invitation.token, None, state, payload
            )
            if isinstance(result, ConduitBadOutcome):
                if result is ConduitBadOutcome.INVALID_STATE:
                    # Reset by someone else (or a step out of order): leaving now must
                    # not reset the exchange another claimer connection may have started.
                    client.conduit_key = None
                return _claimer_bad_outcome(result)
        assert isinstance(result, bytes)
        return result

    async def api_invite_1_greeter_wait_peer(
        self, client: AuthenticatedClientContext, req: proto.Invite1GreeterWaitPeerReq
    ) -> Rep:
        result = await self._greeter_steps(
            client, req.token, [(ConduitState.STATE_1_WAIT_PEERS, req.greeter_public_key)]
        )
        return ok(claimer_public_key=result) if isinstance(result, bytes) else result

    async def api_invite_1_claimer_wait_peer(
        self, client: InvitedClientContext, req: proto.Invite1ClaimerWaitPeerReq
    ) -> Rep:
        result = await self._claimer_steps(
            client, [(ConduitState.STATE_1_WAIT_PEERS, req.claimer_public_key)]
        )
        return ok(greeter_public_key=result) if isinstance(result, bytes) else result

    async def api_invite_2a_claimer_send_hashed_nonce(
        self, client: InvitedClientContext, req: proto.Invite2aClaimerSendHashedNonceReq
    ) -> Rep:
        result = await self._claimer_steps(
            client,
            [
                (ConduitState.STATE_2_1_CLAIMER_HASHED_NONCE, req.claimer_hashed_nonce),
                (ConduitState.STATE_2_2_GREETER_NONCE, b""),
            ],
        )
        return ok(greeter_nonce=result) if isinstance(result, bytes) else result

    async def api_invite_2a_greeter_get_hashed_nonce(
        self, client: AuthenticatedClientContext, req: proto.Invite2aGreeterGetHashedNonceReq
    ) -> Rep:
        result = await self._greeter_steps(
            client, req.token, [(ConduitState.STATE_2_1_CLAIMER_HASHED_NONCE, b"")]
        )
        return ok(claimer_hashed_nonce=result) if isinstance(result, bytes) else result

    async def api_invite_2b_greeter_send_nonce(
        self, client: AuthenticatedClientContext, req: proto.Invite2bGreeterSendNonceReq
    ) -> Rep:
        result = await self._greeter_steps(
            client,
            req.token,
            [
                (ConduitState.STATE_2_2_GREETER_NONCE, req.greeter_nonce),
                (ConduitState.STATE_2_3_CLAIMER_NONCE, b""),
            ],
        )
        return ok(claimer_nonce=result) if isinstance(result, bytes) else result

    async def api_invite_2b_claimer_send_nonce(
        self, client: InvitedClientContext, req: proto.Invite2bClaimerSendNonceReq
    ) -> Rep:
        result = await self._claimer_steps(
            client, [(ConduitState.STATE_2_3_CLAIMER_NONCE, req.claimer_nonce)]
        )
        return OK if isinstance(result, bytes) else result

    async def api_invite_3a_greeter_wait_peer_trust(
        self, client: AuthenticatedClientContext, req: proto.Invite3aGreeterWaitPeerTrustReq
    ) -> Rep:
        result = await self._greeter_steps(
            client, req.token, [(ConduitState.STATE_3_1_CLAIMER_TRUST, b"")]
        )
        return OK if isinstance(result, bytes) else result

    async def api_invite_3a_claimer_signify_trust(
        self, client: InvitedClientContext, req: proto.Invite3aClaimerSignifyTrustReq
    ) -> Rep:
        result = await self._claimer_steps(client, [(ConduitState.STATE_3_1_CLAIMER_TRUST, b"")])
        return OK if isinstance(result, bytes) else result

    async def api_invite_3b_claimer_wait_peer_trust(
        self, client: InvitedClientContext, req: proto.Invite3bClaimerWaitPeerTrustReq
    ) -> Rep:
        result = await self._claimer_steps(client, [(ConduitState.STATE_3_2_GREETER_TRUST, b"")])
        return OK if isinstance(result, bytes) else result

    async def api_invite_3b_greeter_signify_trust(
        self, client: AuthenticatedClientContext, req: proto.Invite3bGreeterSignifyTrustReq
    ) -> Rep:
        result = await self._greeter_steps(
            client, req.token, [(ConduitState.STATE_3_2_GREETER_TRUST, b"")]
        )
        return OK if isinstance(result, bytes) else result

    async def api_invite_4_greeter_communicate(
        self, client: AuthenticatedClientContext, req: proto.Invite4GreeterCommunicateReq
    ) -> Rep:
        result = await self._greeter_steps(
            client, req.token, [(ConduitState.STATE_4_COMMUNICATE, req.payload)]
        )
        return ok(payload=result) if isinstance(result, bytes) else result

    async def api_invite_4_claimer_communicate(
        self, client: InvitedClientContext, req: proto.Invite4ClaimerCommunicateReq
    ) -> Rep:
        result = await self._claimer_steps(
            client, [(ConduitState.STATE_4_COMMUNICATE, req.payload)]
        )
        return ok(payload=result) if isinstance(result, bytes) else result


def _greeter_bad_outcome(outcome: ConduitBadOutcome) -> Rep:
    match outcome:
        case ConduitBadOutcome.NOT_FOUND:
            return error("not_found")
        case ConduitBadOutcome.ALREADY_DELETED:
            return error("already_deleted")
        case ConduitBadOutcome.INVALID_STATE:
            return error("invalid_state")


def _claimer_bad_outcome(outcome: ConduitBadOutcome) -> Rep:
    match outcome:
        case ConduitBadOutcome.NOT_FOUND:
            return error("not_found")
        case ConduitBadOutcome.ALREADY_DELETED:
            return CLOSE_CONNECTION
        case ConduitBadOutcome.INVALID_STATE:
            return error("invalid_state")
