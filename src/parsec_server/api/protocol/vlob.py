from __future__ import annotations

from typing import Annotated

import msgspec

from parsec_server.api.codec import ID, DateTime
from parsec_server.api.ids import INT32_MAX, INT64_MAX, INT64_MIN, EncryptionRevision
from parsec_server.api.protocol.base import Req

# Versions are stored as PostgreSQL INTEGERs.
Version = Annotated[int, msgspec.Meta(ge=1, le=INT32_MAX)]
BatchSize = Annotated[int, msgspec.Meta(ge=0, le=1000)]
# Any integer is a checkpoint (the protocol accepts negative ones); compared as a BIGINT.
Checkpoint = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]


class VlobCreateReq(Req, frozen=True, tag="vlob_create"):
    realm_id: ID
    encryption_revision: EncryptionRevision
    vlob_id: ID
    timestamp: DateTime
    blob: bytes


class VlobReadReq(Req, frozen=True, tag="vlob_read"):
    encryption_revision: EncryptionRevision
    vlob_id: ID
    version: Version | None = None
    timestamp: DateTime | None = None


class VlobUpdateReq(Req, frozen=True, tag="vlob_update"):
    encryption_revision: EncryptionRevision
    vlob_id: ID
    timestamp: DateTime
    version: Version
    blob: bytes


class VlobPollChangesReq(Req, frozen=True, tag="vlob_poll_changes"):
    realm_id: ID
    last_checkpoint: Checkpoint


class VlobListVersionsReq(Req, frozen=True, tag="vlob_list_versions"):
    vlob_id: ID


class VlobMaintenanceGetReencryptionBatchReq(
    Req, frozen=True, tag="vlob_maintenance_get_reencryption_batch"
):
    realm_id: ID
    encryption_revision: EncryptionRevision
    size: BatchSize


class ReencryptionBatchEntry(msgspec.Struct, frozen=True):
    vlob_id: ID
    version: Annotated[int, msgspec.Meta(ge=0, le=INT32_MAX)]
    blob: bytes


class VlobMaintenanceSaveReencryptionBatchReq(
    Req, frozen=True, tag="vlob_maintenance_save_reencryption_batch"
):
    realm_id: ID
    encryption_revision: EncryptionRevision
    batch: list[ReencryptionBatchEntry]
