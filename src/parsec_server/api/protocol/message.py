from __future__ import annotations

from typing import Annotated

import msgspec

from parsec_server.api.ids import INT64_MAX
from parsec_server.api.protocol.base import Req


class MessageGetReq(Req, frozen=True, tag="message_get"):
    # Compared with the message indexes as a BIGINT: nothing to store.
    offset: Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
