"""The connections of this process, by organization, so that events reach them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from parsec_server.backend.events import Event

if TYPE_CHECKING:
    from parsec_server.backend.connection import ClientConnection


class ConnectionRegistry:
    def __init__(self) -> None:
        self._by_organization: dict[str | None, set[ClientConnection]] = {}

    def register(self, connection: ClientConnection, organization_id: str | None) -> None:
        self._by_organization.setdefault(organization_id, set()).add(connection)

    def unregister(self, connection: ClientConnection) -> None:
        for organization_id, connections in list(self._by_organization.items()):
            connections.discard(connection)
            if not connections:
                del self._by_organization[organization_id]

    def dispatch(self, event: Event) -> None:
        for connection in list(self._by_organization.get(event.organization_id, ())):
            connection.on_event(event)

    def __len__(self) -> int:
        return sum(len(c) for c in self._by_organization.values())
