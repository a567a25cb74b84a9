from __future__ import annotations

from parsec_server.api.codec import ID
from parsec_server.api.protocol.base import Req


class BlockCreateReq(Req, frozen=True, tag="block_create"):
    block_id: ID
    realm_id: ID
    block: bytes


class BlockReadReq(Req, frozen=True, tag="block_read"):
    block_id: ID
