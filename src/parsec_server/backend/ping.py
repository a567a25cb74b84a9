"""`ping`, and the events commands that serve a connection's subscription."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from parsec_server.api.protocol.base import OK, Rep, ok
from parsec_server.api.protocol.events import EventsListenReq, EventsSubscribeReq
from parsec_server.api.protocol.ping import PingReq
from parsec_server.backend.client_context import AuthenticatedClientContext, ClientContext
from parsec_server.backend.events import EventBus, PingedEvent

NO_EVENTS: Rep = {"status": "no_events"}

RealmsOfUser = Callable[[str, str], Awaitable[set[object]]]


class PingComponent:
    def __init__(self, event_bus: EventBus) -> None:
        self._event_bus = event_bus

    async def api_ping(self, client: ClientContext, req: PingReq) -> Rep:
        if isinstance(client, AuthenticatedClientContext):
            await self._event_bus.send(
                PingedEvent(
                    organization_id=client.organization_id, author=client.device_id, ping=req.ping
                )
            )
        return ok(pong=req.ping)


class EventsComponent:
    def __init__(self, realms_of_user: Callable[[str, str], Awaitable[set[object]]]) -> None:
        self._realms_of_user = realms_of_user

    async def api_events_subscribe(
        self, client: AuthenticatedClientContext, req: EventsSubscribeReq
    ) -> Rep:
        if not client.events.subscribed:
            realms = await self._realms_of_user(client.organization_id, client.user_id)
            client.events.subscribe(realms)  # type: ignore[arg-type]
        return OK

    async def api_events_listen(
        self, client: AuthenticatedClientContext, req: EventsListenReq
    ) -> Rep:
        if not req.wait:
            return client.events.pop() or NO_EVENTS
        return await client.events.wait_next()
