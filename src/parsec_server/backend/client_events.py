"""A connection's event subscription: which events concern it and its pending queue.

The queue holds the events themselves (shared by every connection they concern: queuing
costs no allocation per connection); each becomes its reply when `events_listen` takes
it. It is bounded in count and in (estimated) encoded size: past either bound the
connection must be closed (see docs/events.md), since dropping events would leave the
client showing stale data.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from typing import TYPE_CHECKING

from parsec_server.api import codec
from parsec_server.api.codec import ID
from parsec_server.api.protocol.base import Rep
from parsec_server.backend.events import (
    Event,
    InviteStatusChangedEvent,
    MessageReceivedEvent,
    PingedEvent,
    RealmMaintenanceFinishedEvent,
    RealmMaintenanceStartedEvent,
    RealmRolesUpdatedEvent,
    RealmVlobsUpdatedEvent,
)

if TYPE_CHECKING:
    from parsec_server.backend.client_context import AuthenticatedClientContext

MAX_PENDING_EVENTS = 1000
MAX_PENDING_BYTES = 128 * 1024


class ClientEvents:
    def __init__(self) -> None:
        self.subscribed = False
        self.realms: set[uuid.UUID] = set()
        # While `events_subscribe` reads the user's realms: the role changes seen meanwhile
        # (realm -> has a role), applied on top of what was read (connections.py).
        self.role_changes: dict[uuid.UUID, bool] | None = None
        # The queue overflowed: the connection is being closed, nothing more is queued.
        self.overflowed = False
        self._pending: deque[Event] = deque()
        self._pending_bytes = 0
        self._wakeup = asyncio.Event()

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def pop(self) -> Rep | None:
        if self._pending:
            event = self._pending.popleft()
            self._pending_bytes -= _estimated_size(event)
            return _to_reply(event)
        self._wakeup.clear()
        return None

    async def wait_next(self) -> Rep:
        while True:
            rep = self.pop()
            if rep is not None:
                return rep
            await self._wakeup.wait()

    def on_event(self, client: AuthenticatedClientContext, event: Event) -> bool:
        """Queue `event` if it concerns the connection. False when the queue just
        overflowed: the connection must be closed (its queue is dropped)."""
        if not self.subscribed or self.overflowed or not self._concerns(client, event):
            return True
        size = _estimated_size(event)
        if (
            len(self._pending) >= MAX_PENDING_EVENTS
            or self._pending_bytes + size > MAX_PENDING_BYTES
        ):
            self.overflowed = True
            self._pending.clear()
            self._pending_bytes = 0
            return False
        self._pending.append(event)
        self._pending_bytes += size
        self._wakeup.set()
        return True

    def _concerns(self, client: AuthenticatedClientContext, event: Event) -> bool:
        match event:
            case PingedEvent():
                return event.author != client.device_id
            case MessageReceivedEvent():
                return event.recipient == client.user_id
            case InviteStatusChangedEvent():
                return event.greeter == client.user_id
            case RealmRolesUpdatedEvent():
                return event.user_id == client.user_id
            case (
                RealmVlobsUpdatedEvent()
                | RealmMaintenanceStartedEvent()
                | RealmMaintenanceFinishedEvent()
            ):
                return event.realm_id in self.realms and event.author != client.device_id
        return False


def _to_reply(event: Event) -> Rep:
    match event:
        case PingedEvent():
            return {"status": "ok", "event": "pinged", "ping": event.ping}
        case MessageReceivedEvent():
            return {"status": "ok", "event": "message.received", "index": event.index}
        case InviteStatusChangedEvent():
            return {
                "status": "ok",
                "event": "invite.status_changed",
                "token": ID(event.token),
                "invitation_status": event.status,
            }
        case RealmRolesUpdatedEvent():
            return {
                "status": "ok",
                "event": "realm.roles_updated",
                "realm_id": ID(event.realm_id),
                "role": event.role,
            }
        case RealmVlobsUpdatedEvent():
            return {
                "status": "ok",
                "event": "realm.vlobs_updated",
                "realm_id": ID(event.realm_id),
                "checkpoint": event.checkpoint,
                "src_id": ID(event.src_id),
                "src_version": event.src_version,
            }
        case RealmMaintenanceStartedEvent() | RealmMaintenanceFinishedEvent():
            return {
                "status": "ok",
                "event": (
                    "realm.maintenance_started"
                    if isinstance(event, RealmMaintenanceStartedEvent)
                    else "realm.maintenance_finished"
                ),
                "realm_id": ID(event.realm_id),
                "encryption_revision": event.encryption_revision,
            }
    raise AssertionError(f"not a connection event: {type(event).__name__}")


# The encoded size of each kind of reply, its variable parts at their largest (the ping
# text, the only unbounded one, counted apart): measured once on sample events.
_MAX_INT = 2**63 - 1
_NIL = uuid.UUID(int=0)
_SAMPLES: list[Event] = [
    PingedEvent(organization_id="", author="", ping=""),
    MessageReceivedEvent(organization_id="", author="", recipient="", index=_MAX_INT),
    InviteStatusChangedEvent(organization_id="", greeter="", token=_NIL, status="DELETED"),
    RealmRolesUpdatedEvent(
        organization_id="", author="", realm_id=_NIL, user_id="", role="CONTRIBUTOR"
    ),
    RealmVlobsUpdatedEvent(
        organization_id="",
        author="",
        realm_id=_NIL,
        checkpoint=_MAX_INT,
        src_id=_NIL,
        src_version=_MAX_INT,
    ),
    RealmMaintenanceStartedEvent(
        organization_id="", author="", realm_id=_NIL, encryption_revision=_MAX_INT
    ),
    RealmMaintenanceFinishedEvent(
        organization_id="", author="", realm_id=_NIL, encryption_revision=_MAX_INT
    ),
]
_SIZES: dict[type[Event], int] = {
    type(sample): len(codec.encode(_to_reply(sample))) for sample in _SAMPLES
}


def _estimated_size(event: Event) -> int:
    if type(event) is PingedEvent:
        return _SIZES[PingedEvent] + len(event.ping)
    return _SIZES[type(event)]
