from __future__ import annotations

import sqlite3

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
from parsec_server.backend.storage.sqlite.database import SQLiteDatabase
from parsec_server.backend.storage.sqlite.user import insert_user_and_device
from parsec_server.backend.storage.sqlite.utils import (
    from_db_optional_timestamp,
    now_timestamp,
    to_db_optional_timestamp,
    to_db_timestamp,
)
from parsec_server.backend.user_types import Device, User
from parsec_server.backend.webhooks import BootstrapWebhook

_SQL_GET = """
SELECT _id, organization_id, bootstrap_token, expiration_date, root_verify_key
FROM organization WHERE organization_id = ?
"""

_SQL_INSERT = """
INSERT INTO organization (organization_id, bootstrap_token, expiration_date) VALUES (?, ?, ?)
ON CONFLICT (organization_id) DO NOTHING
RETURNING _id
"""

_SQL_RESET = "UPDATE organization SET bootstrap_token = ?, expiration_date = ? WHERE _id = ?"

_SQL_UPSERT_SETTINGS = """
INSERT INTO ext_organization_settings (
    organization, active_users_limit, user_profile_outsider_allowed, created_on
)
VALUES (?, ?, ?, ?)
ON CONFLICT (organization) DO UPDATE
    SET active_users_limit = excluded.active_users_limit,
        user_profile_outsider_allowed = excluded.user_profile_outsider_allowed,
        created_on = excluded.created_on
"""

_SQL_SET_ROOT_VERIFY_KEY = "UPDATE organization SET root_verify_key = ? WHERE _id = ?"

_SQL_DETAILS = """
SELECT
    o.organization_id, o.bootstrap_token, o.expiration_date, o.root_verify_key,
    s.active_users_limit, COALESCE(s.user_profile_outsider_allowed, 1) AS outsider_allowed,
    s.created_on
FROM organization o LEFT JOIN ext_organization_settings s ON s.organization = o._id
"""
_SQL_GET_DETAILS = _SQL_DETAILS + "WHERE o.organization_id = ?"
_SQL_LIST_DETAILS = _SQL_DETAILS + "ORDER BY o.organization_id LIMIT ? OFFSET ?"
_SQL_COUNT = "SELECT count(*) FROM organization"

# The organizations of the stats ($1: one, or NULL: those existing at $2), as of $2 (NULL:
# everything), with their totals. A realm counts from its first role certificate (the
# layout has no realm creation date); every vlob_atom row counts, old encryption
# revisions included (as Parsec 2.0.0 reports it).
_SQL_STATS = """
SELECT
    o._id, o.organization_id,
    (
        SELECT count(*) FROM realm r
        WHERE r.organization = o._id AND (
            ?2 IS NULL
            OR (SELECT min(certified_on) FROM realm_user_role WHERE realm = r._id) <= ?2
        )
    ) AS realms,
    (
        SELECT COALESCE(sum(size), 0) FROM block
        WHERE organization = o._id AND (?2 IS NULL OR created_on <= ?2)
    ) AS data_size,
    (
        SELECT COALESCE(sum(size), 0) FROM vlob_atom
        WHERE organization = o._id AND (?2 IS NULL OR created_on <= ?2)
    ) AS metadata_size
FROM organization o LEFT JOIN ext_organization_settings s ON s.organization = o._id
WHERE (?1 IS NULL OR o.organization_id = ?1)
    AND (?1 IS NOT NULL OR ?2 IS NULL OR s.created_on IS NULL OR s.created_on <= ?2)
ORDER BY o.organization_id
"""

# `users` as before: every user row, revoked ones included.
_SQL_STATS_USERS = """
SELECT profile, revoked_on IS NOT NULL AND (?2 IS NULL OR revoked_on <= ?2) AS revoked
FROM user_
WHERE organization = ?1 AND (?2 IS NULL OR created_on <= ?2)
"""

_SQL_UPDATE_EXPIRATION = """
UPDATE organization SET expiration_date = ? WHERE organization_id = ? RETURNING _id
"""

# The settings row with its defaults for the columns not changed (NULL limit, OUTSIDER
# allowed), or the changed columns of the existing one.
_SQL_UPDATE_SETTINGS = """
INSERT INTO ext_organization_settings (
    organization, active_users_limit, user_profile_outsider_allowed
)
VALUES (?1, CASE WHEN ?2 THEN ?3 END, CASE WHEN ?4 THEN ?5 ELSE 1 END)
ON CONFLICT (organization) DO UPDATE SET
    active_users_limit = CASE WHEN ?2 THEN ?3 ELSE active_users_limit END,
    user_profile_outsider_allowed = CASE
        WHEN ?4 THEN ?5 ELSE user_profile_outsider_allowed
    END
"""


def organization_from_row(row: sqlite3.Row) -> Organization:
    return Organization(
        organization_id=row["organization_id"],
        bootstrap_token=row["bootstrap_token"],
        expiration_date=from_db_optional_timestamp(row["expiration_date"]),
        root_verify_key=row["root_verify_key"],
    )


def _create(
    conn: sqlite3.Connection,
    organization_id: str,
    bootstrap_token: str,
    expiration_date: DateTime | None,
    settings: OrganizationSettings,
    created_on: DateTime,
    replace_unbootstrapped: bool,
) -> OrganizationCreateBadOutcome | None:
    expiration = to_db_optional_timestamp(expiration_date)
    inserted = conn.execute(_SQL_INSERT, (organization_id, bootstrap_token, expiration)).fetchone()
    if inserted is not None:
        organization: int = inserted[0]
    else:
        row = conn.execute(_SQL_GET, (organization_id,)).fetchone()
        if not replace_unbootstrapped:
            return OrganizationCreateBadOutcome.ALREADY_EXISTS
        if row["root_verify_key"] is not None:
            return OrganizationCreateBadOutcome.ALREADY_BOOTSTRAPPED
        organization = row["_id"]
        conn.execute(_SQL_RESET, (bootstrap_token, expiration, organization))
    conn.execute(
        _SQL_UPSERT_SETTINGS,
        (
            organization,
            settings.active_users_limit,
            settings.user_profile_outsider_allowed,
            to_db_timestamp(created_on),
        ),
    )
    return None


def _create_if_missing(conn: sqlite3.Connection, organization_id: str, token: str) -> None:
    inserted = conn.execute(_SQL_INSERT, (organization_id, token, None)).fetchone()
    if inserted is not None:
        conn.execute(_SQL_UPSERT_SETTINGS, (inserted[0], None, True, now_timestamp()))


def _get(conn: sqlite3.Connection, organization_id: str) -> Organization | None:
    row = conn.execute(_SQL_GET, (organization_id,)).fetchone()
    return None if row is None else organization_from_row(row)


def _get_details(conn: sqlite3.Connection, organization_id: str) -> OrganizationDetails | None:
    row = conn.execute(_SQL_GET_DETAILS, (organization_id,)).fetchone()
    return None if row is None else _details_from_row(row)


def _list_details(
    conn: sqlite3.Connection, offset: int, limit: int
) -> tuple[list[OrganizationDetails], int]:
    rows = conn.execute(_SQL_LIST_DETAILS, (limit, offset)).fetchall()
    total: int = conn.execute(_SQL_COUNT).fetchone()[0]
    return [_details_from_row(row) for row in rows], total


def _bootstrap(
    conn: sqlite3.Connection,
    organization_id: str,
    bootstrap_token: str,
    root_verify_key: bytes,
    first_user: User,
    first_device: Device,
) -> OrganizationBootstrapBadOutcome | None:
    row = conn.execute(_SQL_GET, (organization_id,)).fetchone()
    if row is None:
        return OrganizationBootstrapBadOutcome.NOT_FOUND
    organization = organization_from_row(row)
    if organization.is_bootstrapped:
        return OrganizationBootstrapBadOutcome.ALREADY_BOOTSTRAPPED
    if not bootstrap_token_matches(organization, bootstrap_token):
        return OrganizationBootstrapBadOutcome.BAD_TOKEN
    insert_user_and_device(conn, row["_id"], first_user, first_device)
    conn.execute(_SQL_SET_ROOT_VERIFY_KEY, (root_verify_key, row["_id"]))
    return None


def _stats(
    conn: sqlite3.Connection, organization_id: str | None, at: DateTime | None
) -> list[tuple[str, OrganizationStats]]:
    at_value = to_db_optional_timestamp(at)
    found = []
    for row in conn.execute(_SQL_STATS, (organization_id, at_value)).fetchall():
        users, active, per_profile = count_users(
            (UserProfile(profile), bool(revoked))
            for profile, revoked in conn.execute(_SQL_STATS_USERS, (row["_id"], at_value))
        )
        stats = OrganizationStats(
            users=users,
            active_users=active,
            users_per_profile=per_profile,
            realms=row["realms"],
            data_size=row["data_size"],
            metadata_size=row["metadata_size"],
        )
        found.append((row["organization_id"], stats))
    return found


def _update(
    conn: sqlite3.Connection,
    organization_id: str,
    expiration_date: DateTime | UnsetType | None,
    active_users_limit: int | UnsetType | None,
    user_profile_outsider_allowed: bool | UnsetType,
) -> bool:
    if isinstance(expiration_date, UnsetType):
        row = conn.execute(_SQL_GET, (organization_id,)).fetchone()
    else:
        expiration = to_db_optional_timestamp(expiration_date)
        row = conn.execute(_SQL_UPDATE_EXPIRATION, (expiration, organization_id)).fetchone()
    if row is None:
        return False
    set_limit = not isinstance(active_users_limit, UnsetType)
    set_outsider = not isinstance(user_profile_outsider_allowed, UnsetType)
    if set_limit or set_outsider:
        conn.execute(
            _SQL_UPDATE_SETTINGS,
            (
                row["_id"],
                set_limit,
                active_users_limit if set_limit else None,
                set_outsider,
                user_profile_outsider_allowed if set_outsider else None,
            ),
        )
    return True


def _details_from_row(row: sqlite3.Row) -> OrganizationDetails:
    return OrganizationDetails(
        organization=organization_from_row(row),
        settings=OrganizationSettings(
            active_users_limit=row["active_users_limit"],
            user_profile_outsider_allowed=bool(row["outsider_allowed"]),
        ),
        created_on=from_db_optional_timestamp(row["created_on"]),
    )


class SQLiteOrganizationComponent(BaseOrganizationComponent):
    def __init__(
        self,
        database: SQLiteDatabase,
        event_bus: EventBus,
        webhook: BootstrapWebhook,
        audit: AuditLog = STREAM_ONLY,
    ) -> None:
        super().__init__(event_bus, webhook, audit)
        self._db = database

    async def create(
        self,
        organization_id: str,
        bootstrap_token: str,
        expiration_date: DateTime | None,
        settings: OrganizationSettings,
        created_on: DateTime,
        replace_unbootstrapped: bool,
    ) -> OrganizationCreateBadOutcome | None:
        return await self._db.write(
            _create,
            organization_id,
            bootstrap_token,
            expiration_date,
            settings,
            created_on,
            replace_unbootstrapped,
        )

    async def create_if_missing(self, organization_id: str, bootstrap_token: str) -> None:
        await self._db.write(_create_if_missing, organization_id, bootstrap_token)

    async def get(self, organization_id: str) -> Organization | None:
        return await self._db.read(_get, organization_id)

    async def get_details(self, organization_id: str) -> OrganizationDetails | None:
        return await self._db.read(_get_details, organization_id)

    async def list_details(self, offset: int, limit: int) -> tuple[list[OrganizationDetails], int]:
        return await self._db.read(_list_details, offset, limit)

    async def bootstrap(
        self,
        organization_id: str,
        bootstrap_token: str,
        root_verify_key: bytes,
        first_user: User,
        first_device: Device,
    ) -> OrganizationBootstrapBadOutcome | None:
        return await self._db.write(
            _bootstrap, organization_id, bootstrap_token, root_verify_key, first_user, first_device
        )

    async def stats(self, organization_id: str, at: DateTime | None) -> OrganizationStats | None:
        found = await self._db.read(_stats, organization_id, at)
        return found[0][1] if found else None

    async def all_stats(self, at: DateTime | None) -> list[tuple[str, OrganizationStats]]:
        return await self._db.read(_stats, None, at)

    async def update(
        self,
        organization_id: str,
        expiration_date: DateTime | UnsetType | None,
        active_users_limit: int | UnsetType | None,
        user_profile_outsider_allowed: bool | UnsetType,
    ) -> bool:
        return await self._db.write(
            _update,
            organization_id,
            expiration_date,
            active_users_limit,
            user_profile_outsider_allowed,
        )
