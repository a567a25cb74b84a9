"""The in-memory storage's state. Every memory component mutates it without awaiting in
between a check and its write, which makes each command atomic on the event loop."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from parsec_server.api.codec import DateTime
from parsec_server.api.ids import RealmRole
from parsec_server.backend.apiv1_invite import APIV1Invitation, APIV1InvitationKind
from parsec_server.backend.invite import Invitation
from parsec_server.backend.invite_conduit import EMPTY_CONDUIT, ConduitSlots
from parsec_server.backend.message import Message
from parsec_server.backend.organization import (
    DEFAULT_SETTINGS,
    Organization,
    OrganizationSettings,
    OrganizationStats,
    count_users,
)
from parsec_server.backend.realm_types import RoleGrant
from parsec_server.backend.user_types import Device, User
from parsec_server.backend.vlob import VlobVersion


@dataclass
class MemoryInvitation:
    invitation: Invitation
    conduit: ConduitSlots = EMPTY_CONDUIT


@dataclass
class MemoryRealm:
    realm_id: uuid.UUID
    roles: list[RoleGrant]
    encryption_revision: int = 1
    maintenance_started_on: DateTime | None = None
    maintenance_started_by: str | None = None
    checkpoint: int = 0
    vlob_updates: list[tuple[int, uuid.UUID, int]] = field(default_factory=list)
    # During a re-encryption: (vlob id, version) -> blob at the new revision, once saved.
    reencryption: dict[tuple[uuid.UUID, int], bytes | None] = field(default_factory=dict)
    blocks_size: int = 0

    @property
    def in_maintenance(self) -> bool:
        return self.maintenance_started_on is not None

    def latest_grant(self, user_id: str) -> RoleGrant | None:
        """The user's certificate with the greatest timestamp (ties: the last received)."""
        latest: RoleGrant | None = None
        for grant in self.roles:
            if grant.user_id != user_id:
                continue
            if latest is None or grant.granted_on >= latest.granted_on:
                latest = grant
        return latest

    def current_role(self, user_id: str) -> RealmRole | None:
        """The role of the latest certificate."""
        latest = self.latest_grant(user_id)
        return None if latest is None else latest.role


@dataclass
class MemoryVlob:
    realm_id: uuid.UUID
    versions: list[VlobVersion]


@dataclass(frozen=True, slots=True)
class MemoryBlock:
    realm_id: uuid.UUID
    author: str
    size: int
    created_on: DateTime


@dataclass
class MemoryOrganization:
    organization: Organization
    settings: OrganizationSettings = DEFAULT_SETTINGS
    created_on: DateTime | None = None
    frozen_users: set[str] = field(default_factory=set)
    users: dict[str, User] = field(default_factory=dict)
    devices: dict[str, Device] = field(default_factory=dict)
    invitations: dict[uuid.UUID, MemoryInvitation] = field(default_factory=dict)
    apiv1_invitations: dict[tuple[APIV1InvitationKind, str], APIV1Invitation] = field(
        default_factory=dict
    )
    realms: dict[uuid.UUID, MemoryRealm] = field(default_factory=dict)
    vlobs: dict[uuid.UUID, MemoryVlob] = field(default_factory=dict)
    blocks: dict[uuid.UUID, MemoryBlock] = field(default_factory=dict)
    messages: dict[str, list[Message]] = field(default_factory=dict)

    def active_users(self) -> int:
        """Neither revoked nor frozen: what the active users limit counts."""
        return sum(
            1
            for u in self.users.values()
            if u.revoked_on is None and u.user_id not in self.frozen_users
        )

    def stats(self, at: DateTime | None) -> OrganizationStats:
        """As of `at` (None: everything): users created by then (revoked if revoked by
        then), realms whose first role certificate is dated by then, blocks and vlob
        versions created by then."""

        def by(date: DateTime | None) -> bool:
            return date is not None and (at is None or date <= at)

        users, active, per_profile = count_users(
            (u.profile, by(u.revoked_on)) for u in self.users.values() if by(u.created_on)
        )
        return OrganizationStats(
            users=users,
            active_users=active,
            users_per_profile=per_profile,
            realms=sum(
                1
                for realm in self.realms.values()
                if realm.roles and by(min(g.granted_on for g in realm.roles))
            ),
            data_size=sum(b.size for b in self.blocks.values() if by(b.created_on)),
            metadata_size=sum(
                len(v.blob)
                for vlob in self.vlobs.values()
                for v in vlob.versions
                if by(v.created_on)
            ),
        )

    def append_message(self, recipient: str, sender: str, timestamp: DateTime, body: bytes) -> int:
        messages = self.messages.setdefault(recipient, [])
        messages.append(Message(len(messages) + 1, sender, timestamp, body))
        return len(messages)


@dataclass
class MemoryDatamodel:
    organizations: dict[str, MemoryOrganization] = field(default_factory=dict)
