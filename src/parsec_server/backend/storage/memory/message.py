from __future__ import annotations

from parsec_server.backend.message import BaseMessageComponent, Message
from parsec_server.backend.storage.memory.datamodel import MemoryDatamodel


class MemoryMessageComponent(BaseMessageComponent):
    def __init__(self, data: MemoryDatamodel) -> None:
        self._data = data

    async def get(self, organization_id: str, user_id: str, offset: int) -> list[Message]:
        return self._data.organizations[organization_id].messages.get(user_id, [])[offset:]
