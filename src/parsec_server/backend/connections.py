"""The connections of this process, indexed so that an event only visits the connections
it may concern (an organization can have thousands of open connections)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Set
from typing import Protocol, TypeVar

import structlog

from parsec_server.backend.client_context import (
    CLOSE_EVENTS_MISSED,
    AuthenticatedClientContext,
    ClientContext,
    InvitedClientContext,
)
from parsec_server.backend.events import (
    Event,
    InviteStatusChangedEvent,
    MessageReceivedEvent,
    OrganizationExpiredEvent,
    PingedEvent,
    RealmMaintenanceFinishedEvent,
    RealmMaintenanceStartedEvent,
    RealmRolesUpdatedEvent,
    RealmVlobsUpdatedEvent,
    UserFrozenEvent,
    UserRevokedEvent,
)


class ClientConnection(Protocol):
    """What the registry needs of a live connection (the transport implements it)."""

    @property
    def client(self) -> ClientContext | None: ...

    def on_event(self, event: Event) -> None: ...

    def request_close(self, code: int) -> None:
        """Close the connection with this websocket close code, abandoning whatever it
        is doing (it unregisters itself once closed)."""
        ...


logger = structlog.get_logger("parsec.events")

K = TypeVar("K")


def _add(index: dict[K, set[ClientConnection]], key: K, conn: ClientConnection) -> None:
    index[key].add(conn)


def _remove(index: dict[K, set[ClientConnection]], key: K, conn: ClientConnection) -> None:
    conns = index.get(key)
    if conns is not None:
        conns.discard(conn)
        if not conns:
            del index[key]


_NOBODY: frozenset[ClientConnection] = frozenset()


class ConnectionRegistry:
    def __init__(self) -> None:
        self._by_organization: dict[str | None, set[ClientConnection]] = defaultdict(set)
        self._by_user: dict[tuple[str, str], set[ClientConnection]] = defaultdict(set)
        # Claimer connections, by (organization, invitation token).
        self._by_invitation: dict[tuple[str, uuid.UUID], set[ClientConnection]] = defaultdict(set)
        self._subscribed_by_organization: dict[str, set[ClientConnection]] = defaultdict(set)
        self._subscribed_by_realm: dict[tuple[str, uuid.UUID], set[ClientConnection]] = defaultdict(
            set
        )
        self._by_client: dict[int, ClientConnection] = {}

    def register(self, conn: ClientConnection) -> None:
        client = conn.client
        self._by_client[id(client)] = conn
        _add(self._by_organization, getattr(client, "organization_id", None), conn)
        if isinstance(client, AuthenticatedClientContext):
            _add(self._by_user, (client.organization_id, client.user_id), conn)
        elif isinstance(client, InvitedClientContext):
            _add(self._by_invitation, (client.organization_id, client.invitation.token), conn)

    def unregister(self, conn: ClientConnection) -> None:
        client = conn.client
        self._by_client.pop(id(client), None)
        organization_id = getattr(client, "organization_id", None)
        _remove(self._by_organization, organization_id, conn)
        if isinstance(client, AuthenticatedClientContext):
            _remove(self._by_user, (client.organization_id, client.user_id), conn)
            if client.events.subscribed:
                _remove(self._subscribed_by_organization, client.organization_id, conn)
                for realm_id in client.events.realms:
                    _remove(self._subscribed_by_realm, (client.organization_id, realm_id), conn)
        elif isinstance(client, InvitedClientContext):
            key = (client.organization_id, client.invitation.token)
            _remove(self._by_invitation, key, conn)

    async def subscribe(
        self,
        client: AuthenticatedClientContext,
        read_realms: Callable[[], Awaitable[set[uuid.UUID]]],
    ) -> None:
        """Subscribe the connection to its events, `read_realms()` giving the realms where
        its user has a role. The subscription starts before the read: the role changes
        seen during the read are applied on top of its result, so none is missed."""
        conn = self._by_client.get(id(client))
        events = client.events
        if conn is None or events.subscribed:
            return
        events.subscribed = True
        events.role_changes = {}
        _add(self._subscribed_by_organization, client.organization_id, conn)
        try:
            realms = await read_realms()
        except BaseException:
            events.subscribed = False
            events.role_changes = None
            _remove(self._subscribed_by_organization, client.organization_id, conn)
            raise
        changes, events.role_changes = events.role_changes, None
        # A change seen during the read may or may not be in what was read: either way it
        # is the most recent one known, as when following role changes afterwards.
        for realm_id, has_role in changes.items():
            if has_role:
                realms.add(realm_id)
            else:
                realms.discard(realm_id)
        events.realms = realms
        for realm_id in realms:
            _add(self._subscribed_by_realm, (client.organization_id, realm_id), conn)

    def _follow_role_change(self, event: RealmRolesUpdatedEvent) -> None:
        for conn in list(self._by_user.get((event.organization_id, event.user_id), ())):
            client = conn.client
            assert isinstance(client, AuthenticatedClientContext)
            events = client.events
            if events.role_changes is not None:  # subscribing: reading the realms
                events.role_changes[event.realm_id] = event.role is not None
                continue
            if not events.subscribed:
                continue
            key = (event.organization_id, event.realm_id)
            if event.role is None:
                events.realms.discard(event.realm_id)
                _remove(self._subscribed_by_realm, key, conn)
            else:
                events.realms.add(event.realm_id)
                _add(self._subscribed_by_realm, key, conn)

    def on_events_missed(self) -> None:
        """Events may have been missed: close every connection subscribed to events (the
        client reconnects, subscribes again and synchronizes, seeing what it missed)."""
        subscribed = [conn for conns in self._subscribed_by_organization.values() for conn in conns]
        if subscribed:
            logger.warning(
                "closing the connections subscribed to events", connections=len(subscribed)
            )
        for conn in subscribed:
            conn.request_close(CLOSE_EVENTS_MISSED)

    def _recipients(self, event: Event) -> Set[ClientConnection]:
        org = event.organization_id
        match event:
            case UserRevokedEvent(user_id=user_id) | UserFrozenEvent(user_id=user_id):
                return self._by_user.get((org, user_id), set())
            case MessageReceivedEvent(recipient=user_id):
                return self._by_user.get((org, user_id), set())
            case InviteStatusChangedEvent(greeter=user_id, token=token):
                # The greeter's connections (events), and the claimer's (closed on deletion).
                greeters = self._by_user.get((org, user_id), set())
                return greeters | self._by_invitation.get((org, token), set())
            case RealmRolesUpdatedEvent():
                self._follow_role_change(event)
                return self._by_user.get((org, event.user_id), set())
            case (
                RealmVlobsUpdatedEvent()
                | RealmMaintenanceStartedEvent()
                | RealmMaintenanceFinishedEvent()
            ):
                return self._subscribed_by_realm.get((org, event.realm_id), set())
            case PingedEvent():
                return self._subscribed_by_organization.get(org, set())
            case OrganizationExpiredEvent():
                return self._by_organization.get(org, set())
        # The others (conduit updates, user/device creations, API 1 invitation relays) are
        # for the commands waiting on them (EventWaiters, invite conduit), not connections.
        return _NOBODY

    def dispatch(self, event: Event) -> None:
        for conn in list(self._recipients(event)):
            conn.on_event(event)

    def of_user(self, organization_id: str, user_id: str) -> Set[ClientConnection]:
        return self._by_user.get((organization_id, user_id), _NOBODY)

    def __len__(self) -> int:
        return sum(len(c) for c in self._by_organization.values())
