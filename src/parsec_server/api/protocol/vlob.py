from __future__ import annotations

from typing import Annotated

import msgspec

from parsec_server.api.codec import ID, DateTime
from parsec_server.api.protocol.base import Req

Version = Annotated[int, msgspec.Meta(ge=1)]
BatchSize = Annotated[int, msgspec.Meta(ge=0, le=1000)]


class VlobCreateReq(Req, frozen=True, tag="vlob_create"):
    realm_id: ID
    encryption_revision: int
    vlob_id: ID
    timestamp: DateTime
    blob: bytes


class VlobReadReq(Req, frozen=True, tag="vlob_read"):
    encryption_revision: int
    vlob_id: ID
    version: Version | None = None
    timestamp: DateTime | None = None


class VlobUpdateReq(Req, frozen=True, tag="vlob_update"):
    encryption_revision: int
    vlob_id: ID
    timestamp: DateTime
    version: Version
    blob: bytes


class VlobPollChangesReq(Req, frozen=True, tag="vlob_poll_changes"):
    realm_id: ID
    last_checkpoint: int


class VlobListVersionsReq(Req, frozen=True, tag="vlob_list_versions"):
    vlob_id: ID


class VlobMaintenanceGetReencryptionBatchReq(
    Req, frozen=True, tag="vlob_maintenance_get_reencryption_batch"
):
    realm_id: ID
    encryption_revision: int
    size: BatchSize


class ReencryptionBatchEntry(msgspec.Struct, frozen=True):
    vlob_id: ID
    version: Annotated[int, msgspec.Meta(ge=0)]
    blob: bytes


class VlobMaintenanceSaveReencryptionBatchReq(
    Req, frozen=True, tag="vlob_maintenance_save_reencryption_batch"
):
    realm_id: ID
    encryption_revision: int
    batch: list[ReencryptionBatchEntry]
