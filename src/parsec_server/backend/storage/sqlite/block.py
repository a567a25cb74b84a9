"""Block metadata. block_create checks the access before the upload (a read), then, once
the data is stored, records the block in the writer thread after checking it all again
(the role or the maintenance may have changed during the upload)."""

from __future__ import annotations

import sqlite3
import uuid

from parsec_server.api.codec import DateTime
from parsec_server.api.ids import user_id_of
from parsec_server.backend.block import BaseBlockComponent
from parsec_server.backend.blockstore.base import BlockStore
from parsec_server.backend.realm_types import READ_ROLES, RealmBadOutcome
from parsec_server.backend.storage.rows import block_create_refused
from parsec_server.backend.storage.sqlite.database import SQLiteDatabase
from parsec_server.backend.storage.sqlite.realm import sql_current_role, sql_user
from parsec_server.backend.storage.sqlite.utils import to_db_timestamp

# ?1 organization_id, ?2 user_id, ?3 realm_id, ?4 block_id
_SQL_CHECK_CREATE = f"""
SELECT
    r._id AS realm, r.organization,
    {sql_current_role("r", sql_user("r", "?2"))} AS role,
    r.maintenance_type IS NOT NULL AS in_maintenance,
    EXISTS (
        SELECT 1 FROM block b WHERE b.organization = r.organization AND b.block_id = ?4
    ) AS block_exists
FROM realm r JOIN organization o ON o._id = r.organization
WHERE o.organization_id = ?1 AND r.realm_id = ?3
"""

_SQL_INSERT = """
INSERT INTO block (organization, block_id, realm, author, size, created_on)
VALUES (
    ?1, ?2, ?3, (SELECT _id FROM device WHERE organization = ?1 AND device_id = ?4), ?5, ?6
)
"""

_SQL_CHECK_READ = f"""
SELECT
    {sql_current_role("r", sql_user("r", "?2"))} AS role,
    r.maintenance_type IS NOT NULL AS in_maintenance
FROM block b
JOIN organization o ON o._id = b.organization
JOIN realm r ON r._id = b.realm
WHERE o.organization_id = ?1 AND b.block_id = ?3
"""


def _check_create(
    conn: sqlite3.Connection,
    organization_id: str,
    user_id: str,
    realm_id: uuid.UUID,
    block_id: uuid.UUID,
) -> RealmBadOutcome | None:
    row = conn.execute(
        _SQL_CHECK_CREATE, (organization_id, user_id, realm_id.bytes, block_id.bytes)
    ).fetchone()
    return block_create_refused(row)


def _record(
    conn: sqlite3.Connection,
    organization_id: str,
    author: str,
    realm_id: uuid.UUID,
    block_id: uuid.UUID,
    size: int,
    created_on: DateTime,
) -> RealmBadOutcome | None:
    row = conn.execute(
        _SQL_CHECK_CREATE, (organization_id, user_id_of(author), realm_id.bytes, block_id.bytes)
    ).fetchone()
    refused = block_create_refused(row)
    if refused is not None:
        return refused
    conn.execute(
        _SQL_INSERT,
        (
            row["organization"],
            block_id.bytes,
            row["realm"],
            author,
            size,
            to_db_timestamp(created_on),
        ),
    )
    return None


def _check_read(
    conn: sqlite3.Connection, organization_id: str, user_id: str, block_id: uuid.UUID
) -> RealmBadOutcome | None:
    row = conn.execute(_SQL_CHECK_READ, (organization_id, user_id, block_id.bytes)).fetchone()
    if row is None:
        return RealmBadOutcome.BLOCK_NOT_FOUND
    if row["role"] not in READ_ROLES:
        return RealmBadOutcome.NOT_ALLOWED
    if row["in_maintenance"]:
        return RealmBadOutcome.IN_MAINTENANCE
    return None


class SQLiteBlockComponent(BaseBlockComponent):
    def __init__(self, database: SQLiteDatabase, blockstore: BlockStore) -> None:
        super().__init__(blockstore)
        self._db = database

    async def check_create(
        self, organization_id: str, user_id: str, realm_id: uuid.UUID, block_id: uuid.UUID
    ) -> RealmBadOutcome | None:
        return await self._db.read(_check_create, organization_id, user_id, realm_id, block_id)

    async def record(
        self,
        organization_id: str,
        author: str,
        realm_id: uuid.UUID,
        block_id: uuid.UUID,
        size: int,
        created_on: DateTime,
    ) -> RealmBadOutcome | None:
        return await self._db.write(
            _record, organization_id, author, realm_id, block_id, size, created_on
        )

    async def check_read(
        self, organization_id: str, user_id: str, block_id: uuid.UUID
    ) -> RealmBadOutcome | None:
        return await self._db.read(_check_read, organization_id, user_id, block_id)
