"""What a connection knows about its peer once the handshake succeeded, and the few things
domain code tells a connection (the domain's whole interface to the transport)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from parsec_server.api.handshake import HandshakeResult
from parsec_server.api.ids import HumanHandle, UserProfile
from parsec_server.api.protocol.base import Rep
from parsec_server.backend.client_events import ClientEvents

if TYPE_CHECKING:
    from parsec_server.backend.invite import Invitation


@dataclass(slots=True)
class AuthenticatedClientContext:
    organization_id: str
    device_id: str
    user_id: str
    profile: UserProfile
    human_handle: HumanHandle | None
    verify_key: bytes
    api_major: int
    events: ClientEvents = field(default_factory=ClientEvents)
    # The peer's IP address (after the trusted proxy headers), for the audit log.
    peer_address: str | None = None


@dataclass(slots=True)
class InvitedClientContext:
    organization_id: str
    invitation: Invitation  # as it was at handshake time
    # The key this connection deposited in step 1 of the rendezvous, while it may still be
    # part of it (None: it never started, or its exchange was reset by someone else).
    # What its departure undoes (`BaseInviteComponent.on_claimer_disconnected`).
    conduit_key: bytes | None = None


@dataclass(slots=True)
class AnonymousClientContext:
    organization_id: str


@dataclass(slots=True)
class AdministrationClientContext:
    # The peer's IP address (after the trusted proxy headers), for the audit log.
    peer_address: str | None = None


ClientContext = (
    AuthenticatedClientContext
    | InvitedClientContext
    | AnonymousClientContext
    | AdministrationClientContext
)


def loggable(client: ClientContext | None) -> dict[str, str]:
    """What may be logged about a peer: its kind, organization and device, never a token,
    e-mail, human name or key."""
    match client:
        case AuthenticatedClientContext():
            return {
                "peer": "authenticated",
                "organization": client.organization_id,
                "device": client.device_id,
            }
        case InvitedClientContext():
            return {
                "peer": "invited",
                "organization": client.organization_id,
                "invitation_type": client.invitation.type.value,
            }
        case AnonymousClientContext():
            return {"peer": "anonymous", "organization": client.organization_id}
        case AdministrationClientContext():
            return {"peer": "administration"}
    return {"peer": "none"}


@dataclass(frozen=True, slots=True)
class HandshakeRefusal:
    """Why the handshake failed: `result` is what the client is told (with the optional
    text `help`), `reason` what the audit log says (docs/audit-log.md, fixed words)."""

    result: HandshakeResult
    reason: str
    help: str | None = None


# A handler's answer meaning: close the connection without replying (what a claimer gets
# when its invitation is deleted under it). Compared by identity.
CLOSE_CONNECTION: Rep = {"status": "__close__"}

# Websocket close codes of the connections closed because they could miss events (see
# docs/events.md). Any close makes the 2.0.0 client reconnect and synchronize again.
# 1012 "Service Restart": this process may have missed events (its event listening
# connection to the database was lost).
CLOSE_EVENTS_MISSED = 1012
# 1013 "Try Again Later": the connection's queue of undelivered events is full (the client
# does not read its events fast enough).
CLOSE_EVENTS_OVERFLOW = 1013


class CloseConnection(Exception):
    """Raised by a handler: the connection is closed with `code`, without reply."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code
