from __future__ import annotations

from parsec_server.api.ids import Text
from parsec_server.api.protocol.base import Req


class PingReq(Req, frozen=True, tag="ping"):
    ping: Text
