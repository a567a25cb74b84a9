"""Block metadata. Each method takes a connection from the pool and gives it back before
returning: block_create's blockstore write (which may use the same pool) happens with no
connection held."""

from __future__ import annotations

import uuid

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from parsec_server.api.codec import DateTime
from parsec_server.backend.block import BaseBlockComponent
from parsec_server.backend.blockstore.base import BlockStore
from parsec_server.backend.realm_types import READ_ROLES, WRITE_ROLES, RealmBadOutcome
from parsec_server.backend.storage.postgresql.realm import sql_current_role, sql_user
from parsec_server.backend.storage.rows import block_create_refused

_SQL_CHECK_CREATE = f"""
SELECT
    {sql_current_role("r", sql_user("r", "$2"))} AS role,
    r.maintenance_type IS NOT NULL AS in_maintenance,
    EXISTS (
        SELECT 1 FROM block b WHERE b.organization = r.organization AND b.block_id = $4
    ) AS block_exists
FROM realm r JOIN organization o ON o._id = r.organization
WHERE o.organization_id = $1 AND r.realm_id = $3
"""

# The checks of _SQL_CHECK_CREATE again, in the statement that inserts (the role or the
# maintenance may have changed during the upload): nothing inserted unless the author's user
# may write ($7: the write roles) and the realm is not in maintenance, nor when the block id
# is taken (by a concurrent block_create). A role change committed before this statement
# starts is seen by it; one committed later is ordered after the insert.
_SQL_RECORD = f"""
WITH target AS (
    SELECT
        o._id AS organization,
        r._id AS realm,
        d._id AS author,
        {sql_current_role("r", "d.user_")} AS role,
        r.maintenance_type IS NOT NULL AS in_maintenance
    FROM organization o
    JOIN realm r ON r.organization = o._id AND r.realm_id = $3
    JOIN device d ON d.organization = o._id AND d.device_id = $4
    WHERE o.organization_id = $1
),
inserted AS (
    INSERT INTO block (organization, block_id, realm, author, size, created_on)
    SELECT t.organization, $2, t.realm, t.author, $5, $6
    FROM target t
    WHERE t.role = ANY($7::text[]) AND NOT t.in_maintenance
    ON CONFLICT (organization, block_id) DO NOTHING
    RETURNING _id
)
SELECT t.role, t.in_maintenance, NOT EXISTS (SELECT 1 FROM inserted) AS block_exists
FROM target t
"""

_SQL_CHECK_READ = f"""
SELECT
    {sql_current_role("r", sql_user("r", "$2"))} AS role,
    r.maintenance_type IS NOT NULL AS in_maintenance
FROM block b
JOIN organization o ON o._id = b.organization
JOIN realm r ON r._id = b.realm
WHERE o.organization_id = $1 AND b.block_id = $3
"""


_WRITE_ROLES = sorted(role.value for role in WRITE_ROLES)


class PGBlockComponent(BaseBlockComponent):
    def __init__(self, pool: asyncpg.Pool, blockstore: BlockStore) -> None:
        super().__init__(blockstore)
        self._pool = pool

    async def check_create(
        self, organization_id: str, user_id: str, realm_id: uuid.UUID, block_id: uuid.UUID
    ) -> RealmBadOutcome | None:
        row = await self._pool.fetchrow(
            _SQL_CHECK_CREATE, organization_id, user_id, realm_id, block_id
        )
        return block_create_refused(row)

    async def record(
        self,
        organization_id: str,
        author: str,
        realm_id: uuid.UUID,
        block_id: uuid.UUID,
        size: int,
        created_on: DateTime,
    ) -> RealmBadOutcome | None:
        row = await self._pool.fetchrow(
            _SQL_RECORD,
            organization_id,
            block_id,
            realm_id,
            author,
            size,
            created_on.dt,
            _WRITE_ROLES,
        )
        return block_create_refused(row)

    async def check_read(
        self, organization_id: str, user_id: str, block_id: uuid.UUID
    ) -> RealmBadOutcome | None:
        row = await self._pool.fetchrow(_SQL_CHECK_READ, organization_id, user_id, block_id)
        if row is None:
            return RealmBadOutcome.BLOCK_NOT_FOUND
        if row["role"] not in READ_ROLES:
            return RealmBadOutcome.NOT_ALLOWED
        if row["in_maintenance"]:
            return RealmBadOutcome.IN_MAINTENANCE
        return None
