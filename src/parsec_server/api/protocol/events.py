from __future__ import annotations

from parsec_server.api.protocol.base import Req


class EventsSubscribeReq(Req, frozen=True, tag="events_subscribe"):
    pass


class EventsListenReq(Req, frozen=True, tag="events_listen"):
    wait: bool = True
