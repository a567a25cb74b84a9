"""A connection's event subscription: which events concern it and its pending queue."""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from typing import TYPE_CHECKING

import structlog

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

logger = structlog.get_logger("parsec.events")

MAX_PENDING_EVENTS = 100


class ClientEvents:
    def __init__(self) -> None:
        self.subscribed = False
        self.realms: set[uuid.UUID] = set()
        self._pending: deque[Rep] = deque()
        self._wakeup = asyncio.Event()

    def subscribe(self, realms: set[uuid.UUID]) -> None:
        if not self.subscribed:
            self.subscribed = True
            self.realms = realms

    def pop(self) -> Rep | None:
        if self._pending:
            return self._pending.popleft()
        self._wakeup.clear()
        return None

    async def wait_next(self) -> Rep:
        while True:
            rep = self.pop()
            if rep is not None:
                return rep
            await self._wakeup.wait()

    def on_event(self, client: AuthenticatedClientContext, event: Event) -> None:
        if not self.subscribed:
            return
        rep = self._to_reply(client, event)
        if rep is None:
            return
        if len(self._pending) >= MAX_PENDING_EVENTS:
            logger.warning("event queue full, event dropped", device_id=client.device_id)
            return
        self._pending.append(rep)
        self._wakeup.set()

    def _to_reply(self, client: AuthenticatedClientContext, event: Event) -> Rep | None:
        match event:
            case PingedEvent(author=author, ping=ping) if author != client.device_id:
                return {"status": "ok", "event": "pinged", "ping": ping}
            case MessageReceivedEvent(recipient=recipient, index=index) if (
                recipient == client.user_id
            ):
                return {"status": "ok", "event": "message.received", "index": index}
            case InviteStatusChangedEvent(greeter=greeter, token=token, status=status) if (
                greeter == client.user_id
            ):
                return {
                    "status": "ok",
                    "event": "invite.status_changed",
                    "token": ID(token),
                    "invitation_status": status,
                }
            case RealmRolesUpdatedEvent(user_id=user_id, realm_id=realm_id, role=role) if (
                user_id == client.user_id
            ):
                return {
                    "status": "ok",
                    "event": "realm.roles_updated",
                    "realm_id": ID(realm_id),
                    "role": role,
                }
            case RealmVlobsUpdatedEvent() if (
                event.realm_id in self.realms and event.author != client.device_id
            ):
                return {
                    "status": "ok",
                    "event": "realm.vlobs_updated",
                    "realm_id": ID(event.realm_id),
                    "checkpoint": event.checkpoint,
                    "src_id": ID(event.src_id),
                    "src_version": event.src_version,
                }
            case RealmMaintenanceStartedEvent() | RealmMaintenanceFinishedEvent() if (
                event.realm_id in self.realms and event.author != client.device_id
            ):
                name = (
                    "realm.maintenance_started"
                    if isinstance(event, RealmMaintenanceStartedEvent)
                    else "realm.maintenance_finished"
                )
                return {
                    "status": "ok",
                    "event": name,
                    "realm_id": ID(event.realm_id),
                    "encryption_revision": event.encryption_revision,
                }
        return None
