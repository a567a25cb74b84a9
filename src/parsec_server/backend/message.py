"""Per-user messages (appended by realm commands, read with message_get)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from parsec_server.api.codec import DateTime
from parsec_server.api.protocol.base import Rep, ok
from parsec_server.api.protocol.message import MessageGetReq
from parsec_server.backend.client_context import AuthenticatedClientContext


@dataclass(frozen=True, slots=True)
class Message:
    index: int  # 1-based position in the recipient's list
    sender: str
    timestamp: DateTime
    body: bytes


class BaseMessageComponent(ABC):
    @abstractmethod
    async def get(self, organization_id: str, user_id: str, offset: int) -> list[Message]:
        """The user's messages after the first `offset` ones, in order."""

    async def api_message_get(self, client: AuthenticatedClientContext, req: MessageGetReq) -> Rep:
        messages = await self.get(client.organization_id, client.user_id, req.offset)
        return ok(
            messages=[
                {"count": m.index, "sender": m.sender, "timestamp": m.timestamp, "body": m.body}
                for m in messages
            ]
        )
