"""Server-side notifications, shared by every process serving the same database.

An event is published after the change it describes is committed. Each server process
receives every event of the cluster (in PostgreSQL mode through LISTEN/NOTIFY, see
storage/postgresql/event_bus.py) and routes it to its own connections, which decide
whether it concerns them.

When a process may have missed events (its PostgreSQL listening connection was lost), the
bus says so to its "events missed" listeners instead: whoever relies on events then
recovers (connections listening to events are closed, waits re-check the storage), see
docs/events.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from abc import abstractmethod
from collections.abc import Callable, Iterator

import msgspec
import structlog

from parsec_server.backend.metrics import NULL_METRICS, Metrics
from parsec_server.backend.readiness import CheckOutcome, ReadinessProbe

logger = structlog.get_logger("parsec.events")


class Event(msgspec.Struct, frozen=True, tag_field="event"):
    organization_id: str


class PingedEvent(Event, frozen=True, tag="pinged"):
    author: str
    ping: str


class UserRevokedEvent(Event, frozen=True, tag="user.revoked"):
    user_id: str


class UserFrozenEvent(Event, frozen=True, tag="user.frozen"):
    """Closes the user's connections, as a revocation (administration API)."""

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


class UserCreatedEvent(Event, frozen=True, tag="user.created"):
    user_id: str
    user_certificate: bytes
    first_device_certificate: bytes


class DeviceCreatedEvent(Event, frozen=True, tag="device.created"):
    device_id: str
    device_certificate: bytes
    encrypted_answer: bytes


class APIV1InvitationClaimedEvent(Event, frozen=True, tag="apiv1.invitation.claimed"):
    """`invited_id` is a user id (user invitation) or a device id (device invitation)."""

    invited_id: str
    encrypted_claim: bytes


class APIV1InvitationCancelledEvent(Event, frozen=True, tag="apiv1.invitation.cancelled"):
    invited_id: str


AnyEvent = (
    PingedEvent
    | UserRevokedEvent
    | UserFrozenEvent
    | OrganizationExpiredEvent
    | MessageReceivedEvent
    | InviteStatusChangedEvent
    | InviteConduitUpdatedEvent
    | RealmRolesUpdatedEvent
    | RealmVlobsUpdatedEvent
    | RealmMaintenanceStartedEvent
    | RealmMaintenanceFinishedEvent
    | UserCreatedEvent
    | DeviceCreatedEvent
    | APIV1InvitationClaimedEvent
    | APIV1InvitationCancelledEvent
)

_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder(AnyEvent)


def event_to_json(event: Event) -> str:
    return _json_encoder.encode(event).decode()


def event_from_json(raw: str | bytes) -> Event:
    event: Event = _json_decoder.decode(raw)
    return event


EventListener = Callable[[Event], None]
EventsMissedListener = Callable[[], None]


class EventsMissed(Exception):
    """What a wait for an event gets when this process may have missed that event."""


class EventBus(ReadinessProbe):
    """Publishes events to every server process of the cluster, this one included.

    As a readiness probe: whether events of the other processes reach this one."""

    def __init__(self, metrics: Metrics = NULL_METRICS) -> None:
        self._listeners: list[EventListener] = []
        self._missed_listeners: list[EventsMissedListener] = []
        self._metrics = metrics

    def connect(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def connect_events_missed(self, listener: EventsMissedListener) -> None:
        """`listener` is called (synchronously) whenever events may have been missed by
        this process; events received afterwards are dispatched as usual."""
        self._missed_listeners.append(listener)

    def notify_events_missed(self, reason: str) -> None:
        logger.warning("events may have been missed", reason=reason)
        for listener in self._missed_listeners:
            try:
                listener()
            except Exception:
                logger.exception("events missed listener failed")

    def _dispatch(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("event listener failed", event=type(event).__name__)

    @abstractmethod
    async def send(self, event: Event) -> None: ...

    async def check_ready(self, within: float) -> CheckOutcome:
        return CheckOutcome(True)


class EventWaiters:
    """Lets a command wait for the next event of the cluster matching a predicate.
    Connected to the event bus once; a waiter is armed before the action whose
    consequence it waits for, so that nothing can be missed."""

    def __init__(self, event_bus: EventBus) -> None:
        self._waiters: list[tuple[Callable[[Event], bool], asyncio.Future[Event]]] = []
        event_bus.connect(self._on_event)
        event_bus.connect_events_missed(self._on_events_missed)

    def _on_event(self, event: Event) -> None:
        for predicate, future in self._waiters:
            if not future.done() and predicate(event):
                future.set_result(event)

    def _on_events_missed(self) -> None:
        # The awaited event may be among the missed ones: the waits fail with EventsMissed.
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(EventsMissed())

    @contextlib.contextmanager
    def expect(self, predicate: Callable[[Event], bool]) -> Iterator[asyncio.Future[Event]]:
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._waiters.append(entry)
        try:
            yield future
        finally:
            self._waiters.remove(entry)
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: no "never retrieved" log if not awaited
            future.cancel()


class MemoryEventBus(EventBus):
    """One process only (`--db MOCKED`)."""

    async def send(self, event: Event) -> None:
        self._metrics.event_sent(event)
        self._dispatch(event)
