"""Server-side notifications, shared by every process serving the same database.

An event is published after the change it describes is committed. Each server process
receives every event of the cluster (in PostgreSQL mode through LISTEN/NOTIFY, see
storage/postgresql/event_bus.py) and routes it to its own connections, which decide
whether it concerns them.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable

import msgspec
import structlog

logger = structlog.get_logger("parsec.events")


class Event(msgspec.Struct, frozen=True, tag_field="event"):
    organization_id: str


class PingedEvent(Event, frozen=True, tag="pinged"):
    author: str
    ping: str


class UserRevokedEvent(Event, frozen=True, tag="user.revoked"):
    user_id: str


class OrganizationExpiredEvent(Event, frozen=True, tag="organization.expired"):
    pass


class MessageReceivedEvent(Event, frozen=True, tag="message.received"):
    author: str
    recipient: str
    index: int


class InviteStatusChangedEvent(Event, frozen=True, tag="invite.status_changed"):
    greeter: str
    token: uuid.UUID
    status: str


class InviteConduitUpdatedEvent(Event, frozen=True, tag="invite.conduit_updated"):
    token: uuid.UUID


class RealmRolesUpdatedEvent(Event, frozen=True, tag="realm.roles_updated"):
    author: str
    realm_id: uuid.UUID
    user_id: str
    role: str | None


class RealmVlobsUpdatedEvent(Event, frozen=True, tag="realm.vlobs_updated"):
    author: str
    realm_id: uuid.UUID
    checkpoint: int
    src_id: uuid.UUID
    src_version: int


class RealmMaintenanceStartedEvent(Event, frozen=True, tag="realm.maintenance_started"):
    author: str
    realm_id: uuid.UUID
    encryption_revision: int


class RealmMaintenanceFinishedEvent(Event, frozen=True, tag="realm.maintenance_finished"):
    author: str
    realm_id: uuid.UUID
    encryption_revision: int


AnyEvent = (
    PingedEvent
    | UserRevokedEvent
    | OrganizationExpiredEvent
    | MessageReceivedEvent
    | InviteStatusChangedEvent
    | InviteConduitUpdatedEvent
    | RealmRolesUpdatedEvent
    | RealmVlobsUpdatedEvent
    | RealmMaintenanceStartedEvent
    | RealmMaintenanceFinishedEvent
)

_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder(AnyEvent)


def event_to_json(event: Event) -> str:
    return _json_encoder.encode(event).decode()


def event_from_json(raw: str | bytes) -> Event:
    event: Event = _json_decoder.decode(raw)
    return event


EventListener = Callable[[Event], None]


class EventBus(ABC):
    """Publishes events to every server process of the cluster, this one included."""

    def __init__(self) -> None:
        self._listeners: list[EventListener] = []

    def connect(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def _dispatch(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("event listener failed", event=type(event).__name__)

    @abstractmethod
    async def send(self, event: Event) -> None: ...


class MemoryEventBus(EventBus):
    """One process only (`--db MOCKED`)."""

    async def send(self, event: Event) -> None:
        self._dispatch(event)
