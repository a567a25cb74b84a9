from __future__ import annotations

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from parsec_server.api.codec import DateTime
from parsec_server.backend.events import EventBus
from parsec_server.backend.organization import (
    BaseOrganizationComponent,
    Organization,
    OrganizationBootstrapBadOutcome,
    OrganizationCreateBadOutcome,
    OrganizationStats,
    bootstrap_token_matches,
)
from parsec_server.backend.storage.postgresql.user import insert_user_and_device
from parsec_server.backend.storage.postgresql.utils import to_datetime, to_db_datetime
from parsec_server.backend.user_types import Device, User
from parsec_server.backend.webhooks import BootstrapWebhook

# Creates, or resets a not yet bootstrapped organization; no row back means bootstrapped.
_SQL_CREATE = """
INSERT INTO organization (organization_id, bootstrap_token, expiration_date)
VALUES ($1, $2, $3)
ON CONFLICT (organization_id) DO UPDATE
    SET bootstrap_token = EXCLUDED.bootstrap_token, expiration_date = EXCLUDED.expiration_date
    WHERE organization.root_verify_key IS NULL
RETURNING _id
"""

_SQL_CREATE_IF_MISSING = """
INSERT INTO organization (organization_id, bootstrap_token, expiration_date)
VALUES ($1, $2, NULL)
ON CONFLICT (organization_id) DO NOTHING
"""

_SQL_GET = """
SELECT organization_id, bootstrap_token, expiration_date, root_verify_key
FROM organization WHERE organization_id = $1
"""

_SQL_GET_FOR_UPDATE = """
SELECT _id, organization_id, bootstrap_token, expiration_date, root_verify_key
FROM organization WHERE organization_id = $1
FOR UPDATE
"""

_SQL_SET_ROOT_VERIFY_KEY = "UPDATE organization SET root_verify_key = $2 WHERE _id = $1"

# metadata_size counts every vlob_atom row, old encryption revisions included (they are
# kept after a re-encryption), as Parsec 2.0.0 does.
_SQL_STATS = """
SELECT
    (SELECT COUNT(*) FROM user_ WHERE organization = o._id) AS users,
    (SELECT COALESCE(SUM(size), 0) FROM block WHERE organization = o._id) AS data_size,
    (SELECT COALESCE(SUM(size), 0) FROM vlob_atom WHERE organization = o._id) AS metadata_size
FROM organization o WHERE o.organization_id = $1
"""

_SQL_UPDATE_EXPIRATION = """
UPDATE organization SET expiration_date = $2 WHERE organization_id = $1 RETURNING _id
"""


def organization_from_row(row: asyncpg.Record) -> Organization:
    return Organization(
        organization_id=row["organization_id"],
        bootstrap_token=row["bootstrap_token"],
        expiration_date=to_datetime(row["expiration_date"]),
        root_verify_key=row["root_verify_key"],
    )


class PGOrganizationComponent(BaseOrganizationComponent):
    def __init__(self, pool: asyncpg.Pool, event_bus: EventBus, webhook: BootstrapWebhook) -> None:
        super().__init__(event_bus, webhook)
        self._pool = pool

    async def create(
        self, organization_id: str, bootstrap_token: str, expiration_date: DateTime | None
    ) -> OrganizationCreateBadOutcome | None:
        row = await self._pool.fetchrow(
            _SQL_CREATE, organization_id, bootstrap_token, to_db_datetime(expiration_date)
        )
        return OrganizationCreateBadOutcome.ALREADY_BOOTSTRAPPED if row is None else None

    async def create_if_missing(self, organization_id: str, bootstrap_token: str) -> None:
        await self._pool.execute(_SQL_CREATE_IF_MISSING, organization_id, bootstrap_token)

    async def get(self, organization_id: str) -> Organization | None:
        row = await self._pool.fetchrow(_SQL_GET, organization_id)
        return None if row is None else organization_from_row(row)

    async def bootstrap(
        self,
        organization_id: str,
        bootstrap_token: str,
        root_verify_key: bytes,
        first_user: User,
        first_device: Device,
    ) -> OrganizationBootstrapBadOutcome | None:
        async with self._pool.acquire() as conn, conn.transaction():
            # The row lock serializes concurrent bootstraps of one organization.
            row = await conn.fetchrow(_SQL_GET_FOR_UPDATE, organization_id)
            if row is None:
                return OrganizationBootstrapBadOutcome.NOT_FOUND
            organization = organization_from_row(row)
            if organization.is_bootstrapped:
                return OrganizationBootstrapBadOutcome.ALREADY_BOOTSTRAPPED
            if not bootstrap_token_matches(organization, bootstrap_token):
                return OrganizationBootstrapBadOutcome.BAD_TOKEN
            await insert_user_and_device(conn, row["_id"], first_user, first_device)
            await conn.execute(_SQL_SET_ROOT_VERIFY_KEY, row["_id"], root_verify_key)
        return None

    async def stats(self, organization_id: str) -> OrganizationStats | None:
        row = await self._pool.fetchrow(_SQL_STATS, organization_id)
        if row is None:
            return None
        return OrganizationStats(
            users=row["users"], data_size=row["data_size"], metadata_size=row["metadata_size"]
        )

    async def update_expiration_date(
        self, organization_id: str, expiration_date: DateTime | None
    ) -> bool:
        row = await self._pool.fetchrow(
            _SQL_UPDATE_EXPIRATION, organization_id, to_db_datetime(expiration_date)
        )
        return row is not None
