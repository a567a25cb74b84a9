from __future__ import annotations

from typing import Annotated

import msgspec

from parsec_server.api.protocol.base import Req


class MessageGetReq(Req, frozen=True, tag="message_get"):
    offset: Annotated[int, msgspec.Meta(ge=0)]
