from __future__ import annotations

import asyncpg  # type: ignore[import-untyped, unused-ignore]
from msgspec import UnsetType

from parsec_server.api.codec import DateTime
from parsec_server.api.ids import UserProfile
from parsec_server.backend.audit import STREAM_ONLY, AuditLog
from parsec_server.backend.events import EventBus
from parsec_server.backend.organization import (
    BaseOrganizationComponent,
    Organization,
    OrganizationBootstrapBadOutcome,
    OrganizationCreateBadOutcome,
    OrganizationDetails,
    OrganizationSettings,
    OrganizationStats,
    bootstrap_token_matches,
    count_users,
)
from parsec_server.backend.storage.postgresql.user import insert_user_and_device
from parsec_server.backend.storage.postgresql.utils import to_datetime, to_db_datetime
from parsec_server.backend.user_types import Device, User
from parsec_server.backend.webhooks import BootstrapWebhook

# Creates, or resets a not yet bootstrapped organization ($7: else nothing), with its
# settings; no row back means it exists (bootstrapped, or not replaced).
_SQL_CREATE = """
WITH created AS (
    INSERT INTO organization (organization_id, bootstrap_token, expiration_date)
    VALUES ($1, $2, $3)
    ON CONFLICT (organization_id) DO UPDATE
        SET bootstrap_token = EXCLUDED.bootstrap_token,
            expiration_date = EXCLUDED.expiration_date
        WHERE organization.root_verify_key IS NULL AND $7::boolean
    RETURNING _id
)
INSERT INTO ext_organization_settings (
    organization, active_users_limit, user_profile_outsider_allowed, created_on
)
SELECT _id, $4::integer, $5::boolean, $6::timestamptz FROM created
ON CONFLICT (organization) DO UPDATE
    SET active_users_limit = EXCLUDED.active_users_limit,
        user_profile_outsider_allowed = EXCLUDED.user_profile_outsider_allowed,
        created_on = EXCLUDED.created_on
RETURNING organization
"""

_SQL_CREATE_IF_MISSING = """
WITH created AS (
    INSERT INTO organization (organization_id, bootstrap_token, expiration_date)
    VALUES ($1, $2, NULL)
    ON CONFLICT (organization_id) DO NOTHING
    RETURNING _id
)
INSERT INTO ext_organization_settings (organization, created_on)
SELECT _id, now() FROM created
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
_SQL_DETAILS = """
SELECT
    o.organization_id, o.bootstrap_token, o.expiration_date, o.root_verify_key,
    s.active_users_limit, COALESCE(s.user_profile_outsider_allowed, TRUE) AS outsider_allowed,
    s.created_on
FROM organization o LEFT JOIN ext_organization_settings s ON s.organization = o._id
"""
_SQL_GET_DETAILS = _SQL_DETAILS + "WHERE o.organization_id = $1"
_SQL_LIST_DETAILS = _SQL_DETAILS + "ORDER BY o.organization_id OFFSET $1 LIMIT $2"
_SQL_COUNT = "SELECT count(*) FROM organization"

# The stats of the organizations ($1: one, or NULL: those existing at $2) as of $2 (NULL:
# everything). `users` as before: every user row, revoked ones included. A realm counts
# from its first role certificate (the layout has no realm creation date).
_SQL_STATS = """
SELECT
    o.organization_id,
    (
        SELECT count(*) FROM realm r
        WHERE r.organization = o._id AND (
            $2::timestamptz IS NULL
            OR (SELECT min(certified_on) FROM realm_user_role WHERE realm = r._id) <= $2
        )
    ) AS realms,
    (
        SELECT COALESCE(sum(size), 0) FROM block
        WHERE organization = o._id AND ($2::timestamptz IS NULL OR created_on <= $2)
    ) AS data_size,
    (
        SELECT COALESCE(sum(size), 0) FROM vlob_atom
        WHERE organization = o._id AND ($2::timestamptz IS NULL OR created_on <= $2)
    ) AS metadata_size,
    ARRAY(
        SELECT ROW(
            u.profile::text,
            u.revoked_on IS NOT NULL AND ($2::timestamptz IS NULL OR u.revoked_on <= $2)
        )
        FROM user_ u
        WHERE u.organization = o._id AND ($2::timestamptz IS NULL OR u.created_on <= $2)
    ) AS users
FROM organization o LEFT JOIN ext_organization_settings s ON s.organization = o._id
WHERE ($1::text IS NULL OR o.organization_id = $1)
    AND ($1::text IS NOT NULL OR $2::timestamptz IS NULL OR s.created_on IS NULL
         OR s.created_on <= $2)
ORDER BY o.organization_id
"""

# $2/$4/$6: whether to change the expiration, the limit, the OUTSIDER permission.
_SQL_UPDATE = """
WITH updated AS (
    UPDATE organization
    SET expiration_date = CASE WHEN $2 THEN $3::timestamptz ELSE expiration_date END
    WHERE organization_id = $1
    RETURNING _id
)
INSERT INTO ext_organization_settings (
    organization, active_users_limit, user_profile_outsider_allowed
)
SELECT _id, CASE WHEN $4 THEN $5::integer END, CASE WHEN $6 THEN $7::boolean ELSE TRUE END
FROM updated
ON CONFLICT (organization) DO UPDATE SET
    active_users_limit = CASE
        WHEN $4 THEN EXCLUDED.active_users_limit ELSE ext_organization_settings.active_users_limit
    END,
    user_profile_outsider_allowed = CASE
        WHEN $6 THEN EXCLUDED.user_profile_outsider_allowed
        ELSE ext_organization_settings.user_profile_outsider_allowed
    END
RETURNING organization
"""


def organization_from_row(row: asyncpg.Record) -> Organization:
    return Organization(
        organization_id=row["organization_id"],
        bootstrap_token=row["bootstrap_token"],
        expiration_date=to_datetime(row["expiration_date"]),
        root_verify_key=row["root_verify_key"],
    )


class PGOrganizationComponent(BaseOrganizationComponent):
    def __init__(
        self,
        pool: asyncpg.Pool,
        event_bus: EventBus,
        webhook: BootstrapWebhook,
        audit: AuditLog = STREAM_ONLY,
    ) -> None:
        super().__init__(event_bus, webhook, audit)
        self._pool = pool

    async def create(
        self,
        organization_id: str,
        bootstrap_token: str,
        expiration_date: DateTime | None,
        settings: OrganizationSettings,
        created_on: DateTime,
        replace_unbootstrapped: bool,
    ) -> OrganizationCreateBadOutcome | None:
        row = await self._pool.fetchrow(
            _SQL_CREATE,
            organization_id,
            bootstrap_token,
            to_db_datetime(expiration_date),
            settings.active_users_limit,
            settings.user_profile_outsider_allowed,
            created_on.dt,
            replace_unbootstrapped,
        )
        if row is not None:
            return None
        if replace_unbootstrapped:
            return OrganizationCreateBadOutcome.ALREADY_BOOTSTRAPPED
        return OrganizationCreateBadOutcome.ALREADY_EXISTS

    async def create_if_missing(self, organization_id: str, bootstrap_token: str) -> None:
        await self._pool.execute(_SQL_CREATE_IF_MISSING, organization_id, bootstrap_token)

    async def get(self, organization_id: str) -> Organization | None:
        row = await self._pool.fetchrow(_SQL_GET, organization_id)
        return None if row is None else organization_from_row(row)

    async def get_details(self, organization_id: str) -> OrganizationDetails | None:
        row = await self._pool.fetchrow(_SQL_GET_DETAILS, organization_id)
        return None if row is None else _details_from_row(row)

    async def list_details(self, offset: int, limit: int) -> tuple[list[OrganizationDetails], int]:
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            rows = await conn.fetch(_SQL_LIST_DETAILS, offset, limit)
            total: int = await conn.fetchval(_SQL_COUNT)
        return [_details_from_row(row) for row in rows], total

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

    async def stats(self, organization_id: str, at: DateTime | None) -> OrganizationStats | None:
        rows = await self._pool.fetch(_SQL_STATS, organization_id, to_db_datetime(at))
        return _stats_from_row(rows[0]) if rows else None

    async def all_stats(self, at: DateTime | None) -> list[tuple[str, OrganizationStats]]:
        rows = await self._pool.fetch(_SQL_STATS, None, to_db_datetime(at))
        return [(row["organization_id"], _stats_from_row(row)) for row in rows]

    async def update(
        self,
        organization_id: str,
        expiration_date: DateTime | UnsetType | None,
        active_users_limit: int | UnsetType | None,
        user_profile_outsider_allowed: bool | UnsetType,
    ) -> bool:
        row = await self._pool.fetchrow(
            _SQL_UPDATE,
            organization_id,
            not isinstance(expiration_date, UnsetType),
            None if isinstance(expiration_date, UnsetType) else to_db_datetime(expiration_date),
            not isinstance(active_users_limit, UnsetType),
            None if isinstance(active_users_limit, UnsetType) else active_users_limit,
            not isinstance(user_profile_outsider_allowed, UnsetType),
            (
                None
                if isinstance(user_profile_outsider_allowed, UnsetType)
                else user_profile_outsider_allowed
            ),
        )
        return row is not None


def _details_from_row(row: asyncpg.Record) -> OrganizationDetails:
    return OrganizationDetails(
        organization=organization_from_row(row),
        settings=OrganizationSettings(
            active_users_limit=row["active_users_limit"],
            user_profile_outsider_allowed=row["outsider_allowed"],
        ),
        created_on=to_datetime(row["created_on"]),
    )


def _stats_from_row(row: asyncpg.Record) -> OrganizationStats:
    users, active, per_profile = count_users(
        (UserProfile(profile), revoked) for profile, revoked in row["users"]
    )
    return OrganizationStats(
        users=users,
        active_users=active,
        users_per_profile=per_profile,
        realms=row["realms"],
        data_size=row["data_size"],
        metadata_size=row["metadata_size"],
    )
