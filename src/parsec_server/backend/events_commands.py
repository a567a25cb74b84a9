"""`events_subscribe` and `events_listen`: a connection's subscription to the events that
concern it (the routing is in connections.py, the queue in client_events.py)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from functools import partial

from parsec_server.api.protocol.base import OK, Rep
from parsec_server.api.protocol.events import EventsListenReq, EventsSubscribeReq
from parsec_server.backend.client_context import AuthenticatedClientContext
from parsec_server.backend.connections import ConnectionRegistry
from parsec_server.backend.metrics import NULL_METRICS, Metrics

NO_EVENTS: Rep = {"status": "no_events"}

RealmsOfUser = Callable[[str, str], Awaitable[set[uuid.UUID]]]


class EventsComponent:
    def __init__(
        self,
        realms_of_user: RealmsOfUser,
        registry: ConnectionRegistry,
        metrics: Metrics = NULL_METRICS,
    ) -> None:
        self._realms_of_user = realms_of_user
        self._registry = registry
        self._metrics = metrics

    async def api_events_subscribe(
        self, client: AuthenticatedClientContext, req: EventsSubscribeReq
    ) -> Rep:
        if not client.events.subscribed:
            await self._registry.subscribe(
                client, partial(self._realms_of_user, client.organization_id, client.user_id)
            )
        return OK

    async def api_events_listen(
        self, client: AuthenticatedClientContext, req: EventsListenReq
    ) -> Rep:
        rep = client.events.pop() if not req.wait else await client.events.wait_next()
        if rep is None:
            return NO_EVENTS
        self._metrics.event_delivered(rep["event"])
        return rep
