"""Realms: creation, role history, status, stats, re-encryption maintenance.

Commands that write run in the writer thread: what they check cannot change before they
write (no other write runs in between), which PostgreSQL gets from the realm row's lock.
"""

from __future__ import annotations

import sqlite3
import uuid

from parsec_server.api.codec import DateTime
from parsec_server.api.ids import RealmRole, user_id_of
from parsec_server.backend.events import EventBus
from parsec_server.backend.realm import BaseRealmComponent, RealmStats, RealmStatus
from parsec_server.backend.realm_types import (
    NewMessage,
    RealmBadOutcome,
    RoleGrant,
)
from parsec_server.backend.storage.rows import role_update_refused
from parsec_server.backend.storage.sqlite.database import SQLiteDatabase
from parsec_server.backend.storage.sqlite.message import append_messages
from parsec_server.backend.storage.sqlite.utils import (
    from_db_optional_timestamp,
    from_db_uuid,
    now_timestamp,
    to_db_optional_timestamp,
    to_db_timestamp,
)


def sql_user(realm: str, user_id: str) -> str:
    """SQL expression: `user_._id` of the user whose id is the SQL expression `user_id`,
    in the organization of the realm row aliased `realm`."""
    return (
        f"(SELECT _id FROM user_ WHERE organization = {realm}.organization AND user_id = {user_id})"
    )


def sql_current_role(realm: str, user: str) -> str:
    """SQL expression: the current role (NULL: none) in the realm row aliased `realm` of
    the user whose `user_._id` is the SQL expression `user`: the role of the row with the
    greatest (certified_on, _id)."""
    return f"""(
        SELECT rr.role FROM realm_user_role rr
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


_SQL_REALM = """
SELECT r._id, r.organization
FROM realm r JOIN organization o ON o._id = r.organization
WHERE o.organization_id = ? AND r.realm_id = ?
"""

_SQL_CREATE = """
INSERT INTO realm (organization, realm_id, encryption_revision)
SELECT _id, ?2, 1 FROM organization WHERE organization_id = ?1
ON CONFLICT (organization, realm_id) DO NOTHING
RETURNING _id, organization
"""

# Revision 1: vlobs hang off it (Parsec 2.0.0 cannot write vlobs in a realm without it).
_SQL_CREATE_FIRST_REVISION = """
INSERT INTO vlob_encryption_revision (realm, encryption_revision) VALUES (?, 1)
"""

_SQL_ADD_ROLE = """
INSERT INTO realm_user_role (realm, user_, role, certificate, certified_by, certified_on)
VALUES (
    ?1,
    (SELECT _id FROM user_ WHERE organization = ?2 AND user_id = ?3),
    ?4, ?5,
    (SELECT _id FROM device WHERE organization = ?2 AND device_id = ?6),
    ?7
)
"""

_SQL_GET_STATUS = f"""
SELECT
    r.encryption_revision, r.maintenance_started_on, d.device_id AS maintenance_started_by,
    {sql_current_role("r", sql_user("r", "?3"))} AS role
FROM realm r
JOIN organization o ON o._id = r.organization
LEFT JOIN device d ON d._id = r.maintenance_started_by
WHERE o.organization_id = ?1 AND r.realm_id = ?2
"""

# vlobs_size: the blobs served, i.e. the atoms of the current revision, or of the
# previous one while a re-encryption builds the current one.
_SQL_GET_STATS = f"""
WITH target AS (
    SELECT
        r._id, {sql_current_role("r", sql_user("r", "?3"))} AS role,
        (
            SELECT ver._id FROM vlob_encryption_revision ver
            WHERE ver.realm = r._id AND ver.encryption_revision = r.encryption_revision
                - CASE WHEN r.maintenance_type = 'REENCRYPTION' THEN 1 ELSE 0 END
        ) AS served_ver
    FROM realm r JOIN organization o ON o._id = r.organization
    WHERE o.organization_id = ?1 AND r.realm_id = ?2
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

_SQL_GET_ROLE = f"""
SELECT r._id, {sql_current_role("r", sql_user("r", "?3"))} AS role
FROM realm r JOIN organization o ON o._id = r.organization
WHERE o.organization_id = ?1 AND r.realm_id = ?2
"""

_SQL_GET_ROLE_CERTIFICATES = """
SELECT certificate FROM realm_user_role
WHERE realm = ?1 AND (?2 IS NULL OR certified_on > ?2)
ORDER BY certified_on, _id
"""

# Everything realm_update_roles checks; the realm columns are NULL when it is unknown.
_SQL_GET_ROLE_UPDATE_CHECKS = f"""
SELECT
    o._id AS organization,
    s._id AS subject,
    s.profile AS subject_profile,
    r._id AS realm,
    r.maintenance_type IS NOT NULL AS in_maintenance,
    {sql_current_role("r", "s._id")} AS existing_role,
    {sql_latest_certified_on("r", "s._id")} AS subject_latest,
    {sql_current_role("r", "a._id")} AS author_role,
    {sql_latest_certified_on("r", "a._id")} AS author_latest
FROM organization o
LEFT JOIN user_ a ON a.organization = o._id AND a.user_id = ?4
LEFT JOIN user_ s ON s.organization = o._id AND s.user_id = ?3
LEFT JOIN realm r ON r.organization = o._id AND r.realm_id = ?2
WHERE o.organization_id = ?1
"""

# Participants: users with a current role who are not revoked at ?3.
_SQL_GET_START_CHECKS = f"""
SELECT
    r.encryption_revision,
    r.maintenance_type IS NOT NULL AS in_maintenance,
    {sql_current_role("r", sql_user("r", "?2"))} AS author_role
FROM realm r
WHERE r._id = ?1
"""

_SQL_GET_PARTICIPANTS = f"""
SELECT u.user_id
FROM realm r
JOIN user_ u ON u._id IN (SELECT user_ FROM realm_user_role WHERE realm = r._id)
WHERE r._id = ?1
    AND {sql_current_role("r", "u._id")} IS NOT NULL
    AND (u.revoked_on IS NULL OR u.revoked_on > ?2)
"""

# Registers the new revision, empty: vlob_maintenance_save_reencryption_batch fills it
# with a copy of each atom of the previous one.
_SQL_START = """
UPDATE realm SET
    encryption_revision = ?2,
    maintenance_type = 'REENCRYPTION',
    maintenance_started_on = ?3,
    maintenance_started_by = (
        SELECT _id FROM device WHERE organization = realm.organization AND device_id = ?4
    )
WHERE _id = ?1
"""
_SQL_ADD_REVISION = """
INSERT INTO vlob_encryption_revision (realm, encryption_revision) VALUES (?, ?)
"""

_SQL_GET_FINISH_CHECKS = f"""
SELECT
    r.encryption_revision,
    r.maintenance_type IS NOT NULL AS in_maintenance,
    {sql_current_role("r", sql_user("r", "?2"))} AS author_role,
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
WHERE r._id = ?1
"""

# The atoms of the new revision are complete: reads serve them as soon as the maintenance
# is left. Those of the previous revisions are kept (as Parsec 2.0.0 does).
_SQL_FINISH = """
UPDATE realm SET
    maintenance_type = NULL, maintenance_started_on = NULL, maintenance_started_by = NULL
WHERE _id = ?
"""

_SQL_REALMS_OF_USER = f"""
SELECT r.realm_id
FROM user_ u
JOIN organization o ON o._id = u.organization
JOIN realm r ON r._id IN (SELECT realm FROM realm_user_role WHERE user_ = u._id)
WHERE o.organization_id = ?1 AND u.user_id = ?2
    AND {sql_current_role("r", "u._id")} IS NOT NULL
"""


def _create(
    conn: sqlite3.Connection, organization_id: str, grant: RoleGrant
) -> RealmBadOutcome | None:
    created = conn.execute(_SQL_CREATE, (organization_id, grant.realm_id.bytes)).fetchone()
    if created is None:
        return RealmBadOutcome.REALM_ALREADY_EXISTS
    realm, organization = created
    conn.execute(_SQL_CREATE_FIRST_REVISION, (realm,))
    _add_role(conn, realm, organization, grant)
    return None


def _add_role(conn: sqlite3.Connection, realm: int, organization: int, grant: RoleGrant) -> None:
    conn.execute(
        _SQL_ADD_ROLE,
        (
            realm,
            organization,
            grant.user_id,
            None if grant.role is None else grant.role.value,
            grant.certificate,
            grant.granted_by,
            to_db_timestamp(grant.granted_on),
        ),
    )


def _get_status(
    conn: sqlite3.Connection, organization_id: str, user_id: str, realm_id: uuid.UUID
) -> RealmStatus | RealmBadOutcome:
    row = conn.execute(_SQL_GET_STATUS, (organization_id, realm_id.bytes, user_id)).fetchone()
    if row is None:
        return RealmBadOutcome.REALM_NOT_FOUND
    if row["role"] is None:
        return RealmBadOutcome.NOT_ALLOWED
    return RealmStatus(
        encryption_revision=row["encryption_revision"],
        maintenance_started_on=from_db_optional_timestamp(row["maintenance_started_on"]),
        maintenance_started_by=row["maintenance_started_by"],
    )


def _get_stats(
    conn: sqlite3.Connection, organization_id: str, user_id: str, realm_id: uuid.UUID
) -> RealmStats | RealmBadOutcome:
    row = conn.execute(_SQL_GET_STATS, (organization_id, realm_id.bytes, user_id)).fetchone()
    if row is None:
        return RealmBadOutcome.REALM_NOT_FOUND
    if row["role"] is None:
        return RealmBadOutcome.NOT_ALLOWED
    return RealmStats(blocks_size=row["blocks_size"], vlobs_size=row["vlobs_size"])


def _get_role_certificates(
    conn: sqlite3.Connection,
    organization_id: str,
    user_id: str,
    realm_id: uuid.UUID,
    since: DateTime | None,
) -> list[bytes] | RealmBadOutcome:
    row = conn.execute(_SQL_GET_ROLE, (organization_id, realm_id.bytes, user_id)).fetchone()
    if row is None:
        return RealmBadOutcome.REALM_NOT_FOUND
    if row["role"] is None:
        return RealmBadOutcome.NOT_ALLOWED
    rows = conn.execute(_SQL_GET_ROLE_CERTIFICATES, (row["_id"], to_db_optional_timestamp(since)))
    return [certificate for (certificate,) in rows]


def _update_roles(
    conn: sqlite3.Connection,
    organization_id: str,
    grant: RoleGrant,
    recipient_message: bytes | None,
) -> NewMessage | RealmBadOutcome | None:
    row = conn.execute(
        _SQL_GET_ROLE_UPDATE_CHECKS,
        (organization_id, grant.realm_id.bytes, grant.user_id, user_id_of(grant.granted_by)),
    ).fetchone()
    assert row is not None  # the caller's organization exists
    refused = role_update_refused(
        row,
        grant,
        from_db_optional_timestamp(row["subject_latest"]),
        from_db_optional_timestamp(row["author_latest"]),
    )
    if refused is not None:
        return refused
    _add_role(conn, row["realm"], row["organization"], grant)
    if recipient_message is None:
        return None
    messages = append_messages(
        conn,
        row["organization"],
        grant.granted_by,
        grant.granted_on,
        {grant.user_id: recipient_message},
    )
    return messages[0]


def _start_reencryption(
    conn: sqlite3.Connection,
    organization_id: str,
    author: str,
    realm_id: uuid.UUID,
    encryption_revision: int,
    timestamp: DateTime,
    per_participant_message: dict[str, bytes],
) -> list[NewMessage] | RealmBadOutcome:
    realm = conn.execute(_SQL_REALM, (organization_id, realm_id.bytes)).fetchone()
    if realm is None:
        return RealmBadOutcome.REALM_NOT_FOUND
    row = conn.execute(_SQL_GET_START_CHECKS, (realm["_id"], user_id_of(author))).fetchone()
    if row["author_role"] != RealmRole.OWNER:
        return RealmBadOutcome.NOT_ALLOWED
    if row["in_maintenance"]:
        return RealmBadOutcome.IN_MAINTENANCE
    if encryption_revision != row["encryption_revision"] + 1:
        return RealmBadOutcome.BAD_ENCRYPTION_REVISION
    participants = conn.execute(_SQL_GET_PARTICIPANTS, (realm["_id"], now_timestamp()))
    if {user_id for (user_id,) in participants} != set(per_participant_message):
        return RealmBadOutcome.PARTICIPANTS_MISMATCH
    conn.execute(
        _SQL_START, (realm["_id"], encryption_revision, to_db_timestamp(timestamp), author)
    )
    conn.execute(_SQL_ADD_REVISION, (realm["_id"], encryption_revision))
    return append_messages(conn, realm["organization"], author, timestamp, per_participant_message)


def _finish_reencryption(
    conn: sqlite3.Connection,
    organization_id: str,
    author: str,
    realm_id: uuid.UUID,
    encryption_revision: int,
) -> RealmBadOutcome | None:
    realm = conn.execute(_SQL_REALM, (organization_id, realm_id.bytes)).fetchone()
    if realm is None:
        return RealmBadOutcome.REALM_NOT_FOUND
    row = conn.execute(_SQL_GET_FINISH_CHECKS, (realm["_id"], user_id_of(author))).fetchone()
    if row["author_role"] != RealmRole.OWNER:
        return RealmBadOutcome.NOT_ALLOWED
    if not row["in_maintenance"]:
        return RealmBadOutcome.NOT_IN_MAINTENANCE
    if encryption_revision != row["encryption_revision"]:
        return RealmBadOutcome.BAD_ENCRYPTION_REVISION
    if row["work_left"]:
        return RealmBadOutcome.MAINTENANCE_ERROR
    conn.execute(_SQL_FINISH, (realm["_id"],))
    return None


def _realms_of_user(conn: sqlite3.Connection, organization_id: str, user_id: str) -> set[uuid.UUID]:
    rows = conn.execute(_SQL_REALMS_OF_USER, (organization_id, user_id))
    return {from_db_uuid(realm_id) for (realm_id,) in rows}


class SQLiteRealmComponent(BaseRealmComponent):
    def __init__(self, database: SQLiteDatabase, event_bus: EventBus) -> None:
        super().__init__(event_bus)
        self._db = database

    async def create(self, organization_id: str, grant: RoleGrant) -> RealmBadOutcome | None:
        return await self._db.write(_create, organization_id, grant)

    async def get_status(
        self, organization_id: str, user_id: str, realm_id: uuid.UUID
    ) -> RealmStatus | RealmBadOutcome:
        return await self._db.read(_get_status, organization_id, user_id, realm_id)

    async def get_stats(
        self, organization_id: str, user_id: str, realm_id: uuid.UUID
    ) -> RealmStats | RealmBadOutcome:
        return await self._db.read(_get_stats, organization_id, user_id, realm_id)

    async def get_role_certificates(
        self, organization_id: str, user_id: str, realm_id: uuid.UUID, since: DateTime | None
    ) -> list[bytes] | RealmBadOutcome:
        return await self._db.read(
            _get_role_certificates, organization_id, user_id, realm_id, since
        )

    async def update_roles(
        self, organization_id: str, grant: RoleGrant, recipient_message: bytes | None
    ) -> NewMessage | RealmBadOutcome | None:
        return await self._db.write(_update_roles, organization_id, grant, recipient_message)

    async def start_reencryption_maintenance(
        self,
        organization_id: str,
        author: str,
        realm_id: uuid.UUID,
        encryption_revision: int,
        timestamp: DateTime,
        per_participant_message: dict[str, bytes],
    ) -> list[NewMessage] | RealmBadOutcome:
        return await self._db.write(
            _start_reencryption,
            organization_id,
            author,
            realm_id,
            encryption_revision,
            timestamp,
            per_participant_message,
        )

    async def finish_reencryption_maintenance(
        self, organization_id: str, author: str, realm_id: uuid.UUID, encryption_revision: int
    ) -> RealmBadOutcome | None:
        return await self._db.write(
            _finish_reencryption, organization_id, author, realm_id, encryption_revision
        )

    async def realms_of_user(self, organization_id: str, user_id: str) -> set[uuid.UUID]:
        return await self._db.read(_realms_of_user, organization_id, user_id)
