"""The in-memory storage's state. Every memory component mutates it without awaiting in
between a check and its write, which makes each command atomic on the event loop."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from parsec_server.backend.apiv1_invite import APIV1Invitation, APIV1InvitationKind
from parsec_server.backend.invite import Invitation
from parsec_server.backend.invite_conduit import EMPTY_CONDUIT, ConduitSlots
from parsec_server.backend.organization import Organization
from parsec_server.backend.user_types import Device, User


@dataclass
class MemoryInvitation:
    invitation: Invitation
    conduit: ConduitSlots = EMPTY_CONDUIT


@dataclass
class MemoryOrganization:
    organization: Organization
    users: dict[str, User] = field(default_factory=dict)
    devices: dict[str, Device] = field(default_factory=dict)
    invitations: dict[uuid.UUID, MemoryInvitation] = field(default_factory=dict)
    apiv1_invitations: dict[tuple[APIV1InvitationKind, str], APIV1Invitation] = field(
        default_factory=dict
    )
    data_size: int = 0
    metadata_size: int = 0


@dataclass
class MemoryDatamodel:
    organizations: dict[str, MemoryOrganization] = field(default_factory=dict)
