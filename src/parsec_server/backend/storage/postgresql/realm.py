"""Realms: creation, role history, status, stats, re-encryption maintenance.

Concurrency: every transaction that changes what a vlob write checks (the roles, the
maintenance state, the encryption revision, the versions) updates the realm row, hence
holds its lock until commit and gives the row a new version (`xmin`). Vlob writes rely on
it (see vlob.py). The commands of this module lock the realm row first, then read what
they check in a later statement (whose snapshot sees every change committed by the
previous holders of the lock), then write. Lock order: realm row, then user rows (message
recipients) by `_id`.
"""

from __future__ import annotations

import uuid

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from parsec_server.api.codec import DateTime
from parsec_server.api.ids import RealmRole, user_id_of
from parsec_server.backend.events import EventBus
from parsec_server.backend.realm import BaseRealmComponent, RealmStats, RealmStatus
from parsec_server.backend.realm_types import (
    NewMessage,
    RealmBadOutcome,
    RoleGrant,
)
from parsec_server.backend.storage.postgresql.message import append_messages
from parsec_server.backend.storage.postgresql.utils import to_datetime, to_db_datetime
from parsec_server.backend.storage.rows import role_update_refused


def sql_user(realm: str, user_id: str) -> str:
    """SQL expression: `user_._id` of the user whose id is the SQL expression `user_id`,
    in the organization of the realm row aliased `realm`."""
    return (
        f"(SELECT _id FROM user_ WHERE organization = {realm}.organization AND user_id = {user_id})"
    )


def sql_current_role(realm: str, user: str) -> str:
    """SQL expression: the current role (text; NULL: none) in the realm row aliased `realm`
    of the user whose `user_._id` is the SQL expression `user`: the role of the row with
    the greatest (certified_on, _id)."""
    return f"""(
        SELECT rr.role::text FROM realm_user_role rr
        WHERE rr.realm = {realm}._id AND rr.user_ = {user}
        ORDER BY rr.certified_on DESC, rr._id DESC
        LIMIT 1
    )"""


def sql_latest_certified_on(realm: str, user: str) -> str:
    """SQL expression: the timestamp of the latest role certificate (NULL: none) in the realm
    row aliased `realm` of the user whose `user_._id` is the SQL expression `user`."""
    return f"""(
        SELECT max(rr.certified_on) FROM realm_user_role rr
        WHERE rr.realm = {realm}._id AND rr.user_ = {user}
    )"""


# Locks the realm row (see the module docstring); nothing when the realm is unknown.
_SQL_LOCK_REALM = """
SELECT r._id, r.organization
FROM realm r JOIN organization o ON o._id = r.organization
WHERE o.organization_id = $1 AND r.realm_id = $2
FOR NO KEY UPDATE OF r
"""

# The realm, its revision 1 (vlobs hang off it; Parsec 2.0.0 cannot write vlobs in a
# realm without it) and its first role.
_SQL_CREATE = """
WITH new_realm AS (
    INSERT INTO realm (organization, realm_id, encryption_revision)
    SELECT _id, $2, 1 FROM organization WHERE organization_id = $1
    ON CONFLICT (organization, realm_id) DO NOTHING
    RETURNING _id, organization
),
first_revision AS (
    INSERT INTO vlob_encryption_revision (realm, encryption_revision)
    SELECT _id, 1 FROM new_realm
),
first_role AS (
    INSERT INTO realm_user_role (realm, user_, role, certificate, certified_by, certified_on)
    SELECT
        r._id,
        (SELECT _id FROM user_ WHERE organization = r.organization AND user_id = $3),
        $4::realm_role,
        $5,
        (SELECT _id FROM device WHERE organization = r.organization AND device_id = $6),
        $7
    FROM new_realm r
)
SELECT count(*) AS created FROM new_realm
"""

_SQL_GET_STATUS = f"""
SELECT
    r.encryption_revision, r.maintenance_started_on, d.device_id AS maintenance_started_by,
    {sql_current_role("r", sql_user("r", "$3"))} AS role
FROM realm r
JOIN organization o ON o._id = r.organization
LEFT JOIN device d ON d._id = r.maintenance_started_by
WHERE o.organization_id = $1 AND r.realm_id = $2
"""

# vlobs_size: the blobs served, i.e. the atoms of the current revision, or of the
# previous one while a re-encryption builds the current one.
_SQL_GET_STATS = f"""
WITH target AS (
    SELECT
        r._id, {sql_current_role("r", sql_user("r", "$3"))} AS role,
        (
            SELECT ver._id FROM vlob_encryption_revision ver
            WHERE ver.realm = r._id AND ver.encryption_revision = r.encryption_revision
                - CASE WHEN r.maintenance_type = 'REENCRYPTION' THEN 1 ELSE 0 END
        ) AS served_ver
    FROM realm r JOIN organization o ON o._id = r.organization
    WHERE o.organization_id = $1 AND r.realm_id = $2
)
SELECT
    t.role,
    (SELECT COALESCE(sum(size), 0) FROM block WHERE realm = t._id AND t.role IS NOT NULL)
        AS blocks_size,
    (
        SELECT COALESCE(sum(size), 0) FROM vlob_atom
        WHERE vlob_encryption_revision = t.served_ver AND t.role IS NOT NULL
    ) AS vlobs_size
FROM target t
"""

_SQL_GET_ROLE_CERTIFICATES = f"""
WITH target AS (
    SELECT r._id, {sql_current_role("r", sql_user("r", "$3"))} AS role
    FROM realm r JOIN organization o ON o._id = r.organization
    WHERE o.organization_id = $1 AND r.realm_id = $2
)
SELECT
    t.role,
    ARRAY(
        SELECT rr.certificate FROM realm_user_role rr
        WHERE rr.realm = t._id AND t.role IS NOT NULL
            AND ($4::timestamptz IS NULL OR rr.certified_on > $4)
        ORDER BY rr.certified_on, rr._id
    ) AS certificates
FROM target t
"""

# Everything realm_update_roles checks; the realm columns are NULL when it is unknown.
_SQL_GET_ROLE_UPDATE_CHECKS = f"""
SELECT
    o._id AS organization,
    s._id AS subject,
    s.profile::text AS subject_profile,
    r._id AS realm,
    r.maintenance_type IS NOT NULL AS in_maintenance,
    {sql_current_role("r", "s._id")} AS existing_role,
    {sql_latest_certified_on("r", "s._id")} AS subject_latest,
    {sql_current_role("r", "a._id")} AS author_role,
    {sql_latest_certified_on("r", "a._id")} AS author_latest
FROM organization o
LEFT JOIN user_ a ON a.organization = o._id AND a.user_id = $4
LEFT JOIN user_ s ON s.organization = o._id AND s.user_id = $3
LEFT JOIN realm r ON r.organization = o._id AND r.realm_id = $2
WHERE o.organization_id = $1
"""

# The update of the realm row changes nothing but gives it a new version: a vlob write
# that checked the roles on an older snapshot sees it and checks again (see vlob.py).
_SQL_ADD_ROLE = """
WITH new_role AS (
    INSERT INTO realm_user_role (realm, user_, role, certificate, certified_by, certified_on)
    VALUES (
        $1, $2, $3::realm_role, $4,
        (SELECT _id FROM device WHERE organization = $5 AND device_id = $6),
        $7
    )
)
UPDATE realm SET encryption_revision = encryption_revision WHERE _id = $1
"""

# Participants: users with a current role who are not revoked at $3.
_SQL_GET_START_CHECKS = f"""
SELECT
    r.encryption_revision,
    r.maintenance_type IS NOT NULL AS in_maintenance,
    {sql_current_role("r", sql_user("r", "$2"))} AS author_role,
    ARRAY(
        SELECT u.user_id
        FROM (
            SELECT DISTINCT ON (rr.user_) rr.user_, rr.role
            FROM realm_user_role rr
            WHERE rr.realm = r._id
            ORDER BY rr.user_, rr.certified_on DESC, rr._id DESC
        ) latest_grant
        JOIN user_ u ON u._id = latest_grant.user_
        WHERE latest_grant.role IS NOT NULL AND (u.revoked_on IS NULL OR u.revoked_on > $3)
    ) AS participants
FROM realm r
WHERE r._id = $1
"""

# Registers the new revision, empty: vlob_maintenance_save_reencryption_batch fills it
# with a copy of each atom of the previous one.
_SQL_START = """
WITH started AS (
    UPDATE realm SET
        encryption_revision = $2,
        maintenance_type = 'REENCRYPTION',
        maintenance_started_on = $3,
        maintenance_started_by = (
            SELECT _id FROM device WHERE organization = realm.organization AND device_id = $4
        )
    WHERE _id = $1
)
INSERT INTO vlob_encryption_revision (realm, encryption_revision) VALUES ($1, $2)
"""

_SQL_GET_FINISH_CHECKS = f"""
SELECT
    r.encryption_revision,
    r.maintenance_type IS NOT NULL AS in_maintenance,
    {sql_current_role("r", sql_user("r", "$2"))} AS author_role,
    EXISTS (
        SELECT 1
        FROM vlob_encryption_revision old_ver
        JOIN vlob_atom a ON a.vlob_encryption_revision = old_ver._id
        WHERE old_ver.realm = r._id AND old_ver.encryption_revision = r.encryption_revision - 1
            AND NOT EXISTS (
                SELECT 1
                FROM vlob_encryption_revision new_ver
                JOIN vlob_atom c ON c.vlob_encryption_revision = new_ver._id
                WHERE new_ver.realm = r._id
                    AND new_ver.encryption_revision = r.encryption_revision
                    AND c.vlob_id = a.vlob_id AND c.version = a.version
            )
    ) AS work_left
FROM realm r
WHERE r._id = $1
"""

# The atoms of the new revision are complete: reads serve them as soon as the maintenance
# is left. Those of the previous revisions are kept (as Parsec 2.0.0 does).
_SQL_FINISH = """
UPDATE realm SET
    maintenance_type = NULL, maintenance_started_on = NULL, maintenance_started_by = NULL
WHERE _id = $1
"""

_SQL_REALMS_OF_USER = """
SELECT r.realm_id
FROM (
    SELECT DISTINCT ON (rr.realm) rr.realm, rr.role
    FROM realm_user_role rr
    WHERE rr.user_ = (
        SELECT u._id FROM user_ u JOIN organization o ON o._id = u.organization
        WHERE o.organization_id = $1 AND u.user_id = $2
    )
    ORDER BY rr.realm, rr.certified_on DESC, rr._id DESC
) latest_grant
JOIN realm r ON r._id = latest_grant.realm
WHERE latest_grant.role IS NOT NULL
"""


class PGRealmComponent(BaseRealmComponent):
    def __init__(self, pool: asyncpg.Pool, event_bus: EventBus) -> None:
        super().__init__(event_bus)
        self._pool = pool

    async def create(self, organization_id: str, grant: RoleGrant) -> RealmBadOutcome | None:
        # One statement: ON CONFLICT makes a concurrent creation of the same realm wait
        # for the first one, then insert nothing.
        created = await self._pool.fetchval(
            _SQL_CREATE,
            organization_id,
            grant.realm_id,
            grant.user_id,
            None if grant.role is None else grant.role.value,
            grant.certificate,
            grant.granted_by,
            grant.granted_on.dt,
        )
        return None if created else RealmBadOutcome.REALM_ALREADY_EXISTS

    async def get_status(
        self, organization_id: str, user_id: str, realm_id: uuid.UUID
    ) -> RealmStatus | RealmBadOutcome:
        row = await self._pool.fetchrow(_SQL_GET_STATUS, organization_id, realm_id, user_id)
        if row is None:
            return RealmBadOutcome.REALM_NOT_FOUND
        if row["role"] is None:
            return RealmBadOutcome.NOT_ALLOWED
        return RealmStatus(
            encryption_revision=row["encryption_revision"],
            maintenance_started_on=to_datetime(row["maintenance_started_on"]),
            maintenance_started_by=row["maintenance_started_by"],
        )

    async def get_stats(
        self, organization_id: str, user_id: str, realm_id: uuid.UUID
    ) -> RealmStats | RealmBadOutcome:
        row = await self._pool.fetchrow(_SQL_GET_STATS, organization_id, realm_id, user_id)
        if row is None:
            return RealmBadOutcome.REALM_NOT_FOUND
        if row["role"] is None:
            return RealmBadOutcome.NOT_ALLOWED
        return RealmStats(blocks_size=row["blocks_size"], vlobs_size=row["vlobs_size"])

    async def get_role_certificates(
        self, organization_id: str, user_id: str, realm_id: uuid.UUID, since: DateTime | None
    ) -> list[bytes] | RealmBadOutcome:
        row = await self._pool.fetchrow(
            _SQL_GET_ROLE_CERTIFICATES, organization_id, realm_id, user_id, to_db_datetime(since)
        )
        if row is None:
            return RealmBadOutcome.REALM_NOT_FOUND
        if row["role"] is None:
            return RealmBadOutcome.NOT_ALLOWED
        return list(row["certificates"])

    async def update_roles(
        self, organization_id: str, grant: RoleGrant, recipient_message: bytes | None
    ) -> NewMessage | RealmBadOutcome | None:
        async with self._pool.acquire() as conn, conn.transaction():
            # 1. Lock the realm row: role changes of a realm are serialized.
            await conn.fetchrow(_SQL_LOCK_REALM, organization_id, grant.realm_id)
            # 2. Read the checks on a snapshot taken after the lock.
            row = await conn.fetchrow(
                _SQL_GET_ROLE_UPDATE_CHECKS,
                organization_id,
                grant.realm_id,
                grant.user_id,
                user_id_of(grant.granted_by),
            )
            assert row is not None  # the caller's organization exists
            refused = role_update_refused(
                row, grant, to_datetime(row["subject_latest"]), to_datetime(row["author_latest"])
            )
            if refused is not None:
                return refused
            # 3. Write the grant (and the message, under the recipient's lock).
            await conn.execute(
                _SQL_ADD_ROLE,
                row["realm"],
                row["subject"],
                None if grant.role is None else grant.role.value,
                grant.certificate,
                row["organization"],
                grant.granted_by,
                grant.granted_on.dt,
            )
            if recipient_message is None:
                return None
            messages = await append_messages(
                conn,
                row["organization"],
                grant.granted_by,
                grant.granted_on,
                {grant.user_id: recipient_message},
            )
            return messages[0]

    async def start_reencryption_maintenance(
        self,
        organization_id: str,
        author: str,
        realm_id: uuid.UUID,
        encryption_revision: int,
        timestamp: DateTime,
        per_participant_message: dict[str, bytes],
    ) -> list[NewMessage] | RealmBadOutcome:
        async with self._pool.acquire() as conn, conn.transaction():
            # 1. Lock the realm row: no vlob write, role change or other maintenance
            #    change of the realm until commit.
            realm = await conn.fetchrow(_SQL_LOCK_REALM, organization_id, realm_id)
            if realm is None:
                return RealmBadOutcome.REALM_NOT_FOUND
            # 2. Read the checks on a snapshot taken after the lock.
            row = await conn.fetchrow(
                _SQL_GET_START_CHECKS, realm["_id"], user_id_of(author), DateTime.now().dt
            )
            if row["author_role"] != RealmRole.OWNER:
                return RealmBadOutcome.NOT_ALLOWED
            if row["in_maintenance"]:
                return RealmBadOutcome.IN_MAINTENANCE
            if encryption_revision != row["encryption_revision"] + 1:
                return RealmBadOutcome.BAD_ENCRYPTION_REVISION
            if set(row["participants"]) != set(per_participant_message):
                return RealmBadOutcome.PARTICIPANTS_MISMATCH
            # 3. Enter the maintenance with its new revision, then the messages.
            await conn.execute(_SQL_START, realm["_id"], encryption_revision, timestamp.dt, author)
            return await append_messages(
                conn, realm["organization"], author, timestamp, per_participant_message
            )

    async def finish_reencryption_maintenance(
        self, organization_id: str, author: str, realm_id: uuid.UUID, encryption_revision: int
    ) -> RealmBadOutcome | None:
        async with self._pool.acquire() as conn, conn.transaction():
            # 1. Lock the realm row: two finishes of a realm are serialized.
            realm = await conn.fetchrow(_SQL_LOCK_REALM, organization_id, realm_id)
            if realm is None:
                return RealmBadOutcome.REALM_NOT_FOUND
            # 2. Read the checks on a snapshot taken after the lock.
            row = await conn.fetchrow(_SQL_GET_FINISH_CHECKS, realm["_id"], user_id_of(author))
            if row["author_role"] != RealmRole.OWNER:
                return RealmBadOutcome.NOT_ALLOWED
            if not row["in_maintenance"]:
                return RealmBadOutcome.NOT_IN_MAINTENANCE
            if encryption_revision != row["encryption_revision"]:
                return RealmBadOutcome.BAD_ENCRYPTION_REVISION
            if row["work_left"]:
                return RealmBadOutcome.MAINTENANCE_ERROR
            # 3. Leave the maintenance: the new revision's atoms are served from now on.
            await conn.execute(_SQL_FINISH, realm["_id"])
        return None

    async def realms_of_user(self, organization_id: str, user_id: str) -> set[uuid.UUID]:
        rows = await self._pool.fetch(_SQL_REALMS_OF_USER, organization_id, user_id)
        return {row["realm_id"] for row in rows}
