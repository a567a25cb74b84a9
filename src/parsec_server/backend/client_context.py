"""What a connection knows about its peer once the handshake succeeded."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from parsec_server.api.ids import HumanHandle, UserProfile
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


@dataclass(slots=True)
class InvitedClientContext:
    organization_id: str
    invitation: Invitation  # as it was at handshake time


@dataclass(slots=True)
class AnonymousClientContext:
    organization_id: str


@dataclass(slots=True)
class AdministrationClientContext:
    pass


ClientContext = (
    AuthenticatedClientContext
    | InvitedClientContext
    | AnonymousClientContext
    | AdministrationClientContext
)
