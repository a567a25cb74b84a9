"""`ping`, and the events commands that serve a connection's subscription."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from parsec_server.api.protocol.base import OK, Rep, ok
from parsec_server.api.protocol.events import EventsListenReq, EventsSubscribeReq
from parsec_server.api.protocol.ping import PingReq
from parsec_server.backend.client_context import AuthenticatedClientContext, ClientContext
from parsec_server.backend.connections import ConnectionRegistry
from parsec_server.backend.events import EventBus, PingedEvent

NO_EVENTS: Rep = {"status": "no_events"}
MAX_PINGED_LENGTH = 64

RealmsOfUser = Callable[[str, str], Awaitable[set[uuid.UUID]]]


class PingComponent:
    def __init__(self, event_bus: EventBus) -> None:
        self._event_bus = event_bus

    async def api_ping(self, client: ClientContext, req: PingReq) -> Rep:
        # The 2.0.0 client's event schema caps `ping` at 64 characters: a longer one
        # would break every listening client, so it is not broadcast.
        if isinstance(client, AuthenticatedClientContext) and len(req.ping) <= MAX_PINGED_LENGTH:
            await self._event_bus.send(
                PingedEvent(
                    organization_id=client.organization_id, author=client.device_id, ping=req.ping
                )
            )
        return ok(pong=req.ping)


class EventsComponent:
    def __init__(self, realms_of_user: RealmsOfUser, registry: ConnectionRegistry) -> None:
        self._realms_of_user = realms_of_user
        self._registry = registry

    async def api_events_subscribe(
        self, client: AuthenticatedClientContext, req: EventsSubscribeReq
    ) -> Rep:
        if not client.events.subscribed:
            realms = await self._realms_of_user(client.organization_id, client.user_id)
            self._registry.subscribe(client, realms)
        return OK

    async def api_events_listen(
        self, client: AuthenticatedClientContext, req: EventsListenReq
    ) -> Rep:
        if not req.wait:
            return client.events.pop() or NO_EVENTS
        return await client.events.wait_next()
