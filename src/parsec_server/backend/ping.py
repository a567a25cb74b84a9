"""`ping` (which also announces a `pinged` event to the other devices)."""

from __future__ import annotations

from parsec_server.api.protocol.base import Rep, ok
from parsec_server.api.protocol.ping import PingReq
from parsec_server.backend.client_context import AuthenticatedClientContext, ClientContext
from parsec_server.backend.events import EventBus, PingedEvent

MAX_PINGED_LENGTH = 64


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
