"""Vlobs: versions, change log, re-encryption (the PostgreSQL layout and rules,
docs/storage-postgresql.md).

A realm has one `vlob_encryption_revision` row per encryption revision; each version of
a vlob is a `vlob_atom` row under the revision current when it was written, and a
re-encryption adds a copy of every atom under the new revision (the old ones are kept).
Reads serve the atoms of the realm's current revision. The realm of a vlob is the realm
of its latest atom (`ext_vlob_atom_vlob_idx`); the checkpoint of a realm is the greatest
index of its change log (`realm_vlob_update`).

Writes run in the writer thread: their checks, the next change log index and the inserts
see no other write in between (what PostgreSQL gets from the realm row's lock), so they
are plain statements in sequence.
"""

from __future__ import annotations

import sqlite3
import uuid

from parsec_server.api.codec import DateTime
from parsec_server.backend.events import EventBus
from parsec_server.backend.realm_types import READ_ROLES, RealmBadOutcome
from parsec_server.backend.storage.rows import (
    access_refused,
    maintenance_refused,
    vlob_create_refused,
    vlob_update_refused,
)
from parsec_server.backend.storage.sqlite.database import SQLiteDatabase
from parsec_server.backend.storage.sqlite.realm import sql_current_role, sql_user
from parsec_server.backend.storage.sqlite.utils import (
    from_db_timestamp,
    from_db_uuid,
    to_db_timestamp,
)
from parsec_server.backend.vlob import BaseVlobComponent, ReencryptionEntry, VlobVersion


def sql_last_index(realm: str) -> str:
    """SQL expression: the checkpoint of the realm row aliased `realm` (0: no change)."""
    return (
        f'COALESCE((SELECT max(u."index") FROM realm_vlob_update u WHERE u.realm = {realm}._id), 0)'
    )


# The realm's current revision row, joined to the realm row aliased `r`
_SQL_JOIN_CURRENT_REVISION = """
LEFT JOIN vlob_encryption_revision ver
    ON ver.realm = r._id AND ver.encryption_revision = r.encryption_revision"""

# The latest atom of the vlob ?vlob_id in the organization ?organization_id, and its realm
# `r` (a database written by Parsec 2.0.0 may hold one vlob id in two realms: the realm of
# the latest atom wins; ours never does).
_SQL_FROM_VLOB_REALM = """
FROM (
    SELECT a.vlob_encryption_revision, a.version, a.created_on FROM vlob_atom a
    WHERE a.organization = (SELECT _id FROM organization WHERE organization_id = ?1)
        AND a.vlob_id = ?2
    ORDER BY a.version DESC
    LIMIT 1
) latest
JOIN vlob_encryption_revision latest_ver ON latest_ver._id = latest.vlob_encryption_revision
JOIN realm r ON r._id = latest_ver.realm"""

# ?1 organization_id, ?2 realm_id, ?3 author, ?4 vlob_id
_SQL_CREATE_CHECKS = f"""
SELECT
    r._id AS realm, r.organization,
    r.encryption_revision, r.maintenance_type IS NOT NULL AS in_maintenance,
    ver._id AS ver, d._id AS author,
    {sql_current_role("r", "d.user_")} AS role,
    EXISTS (
        SELECT 1 FROM vlob_atom WHERE organization = r.organization AND vlob_id = ?4
    ) AS vlob_exists,
    {sql_last_index("r")} AS last_index
FROM realm r
JOIN organization o ON o._id = r.organization
JOIN device d ON d.organization = o._id AND d.device_id = ?3
{_SQL_JOIN_CURRENT_REVISION}
WHERE o.organization_id = ?1 AND r.realm_id = ?2
"""

# ?1 organization_id, ?2 vlob_id, ?3 author
_SQL_UPDATE_CHECKS = f"""
SELECT
    r._id AS realm, r.realm_id, r.organization,
    r.encryption_revision, r.maintenance_type IS NOT NULL AS in_maintenance,
    ver._id AS ver, d._id AS author,
    {sql_current_role("r", "d.user_")} AS role,
    latest.version AS latest_version, latest.created_on AS latest_created_on,
    {sql_last_index("r")} AS last_index
{_SQL_FROM_VLOB_REALM}
JOIN device d ON d.organization = r.organization AND d.device_id = ?3
{_SQL_JOIN_CURRENT_REVISION}
"""

_SQL_REGISTER_VLOB_ID = "INSERT INTO ext_vlob_id (organization, vlob_id) VALUES (?, ?)"

_SQL_INSERT_ATOM = """
INSERT INTO vlob_atom (
    organization, vlob_encryption_revision, vlob_id, version, blob, size, author, created_on
)
VALUES (?1, ?2, ?3, ?4, ?5, length(?5), ?6, ?7)
RETURNING _id
"""

_SQL_LOG_CHANGE = 'INSERT INTO realm_vlob_update (realm, "index", vlob_atom) VALUES (?, ?, ?)'

# The realm of a vlob, with the caller's role (?3: user id) and the realm's current
# revision row (`ver`); nothing if the vlob is unknown.
_SQL_VLOB_TARGET = f"""
SELECT
    r.encryption_revision, ver._id AS ver,
    r.maintenance_type IS NOT NULL AS in_maintenance,
    {sql_current_role("r", sql_user("r", "?3"))} AS role
{_SQL_FROM_VLOB_REALM}
{_SQL_JOIN_CURRENT_REVISION}
"""

_SQL_READ_COLUMNS = """
SELECT a.version, a.blob, d.device_id AS author, a.created_on
FROM vlob_atom a JOIN device d ON d._id = a.author
WHERE a.vlob_encryption_revision = ?1 AND a.vlob_id = ?2"""
# ?3: the version
_SQL_READ_VERSION = _SQL_READ_COLUMNS + " AND a.version = ?3"
# ?3: the timestamp; the latest version written at that time or before
_SQL_READ_AT = _SQL_READ_COLUMNS + " AND a.created_on <= ?3 ORDER BY a.version DESC LIMIT 1"
_SQL_READ_LATEST = _SQL_READ_COLUMNS + " ORDER BY a.version DESC LIMIT 1"

_SQL_LIST_VERSIONS = """
SELECT a.version, a.created_on, d.device_id AS author
FROM vlob_atom a JOIN device d ON d._id = a.author
WHERE a.vlob_encryption_revision = ? AND a.vlob_id = ?
ORDER BY a.version
"""

# ?1 organization_id, ?2 realm_id, ?3 user_id
_SQL_POLL_TARGET = f"""
SELECT
    r._id AS realm, {sql_last_index("r")} AS checkpoint,
    r.maintenance_type IS NOT NULL AS in_maintenance,
    {sql_current_role("r", sql_user("r", "?3"))} AS role
FROM realm r JOIN organization o ON o._id = r.organization
WHERE o.organization_id = ?1 AND r.realm_id = ?2
"""

_SQL_POLL_CHANGES = """
SELECT a.vlob_id, max(a.version)
FROM realm_vlob_update u JOIN vlob_atom a ON a._id = u.vlob_atom
WHERE u.realm = ? AND u."index" > ?
GROUP BY a.vlob_id
"""

# The realm being re-encrypted (?4: the revision being built), with the revision rows
# copied from (`old_ver`) and to (`new_ver`).
_SQL_MAINTENANCE_TARGET = f"""
SELECT
    r._id AS realm, r.encryption_revision,
    r.maintenance_type IS NOT NULL AS in_maintenance,
    {sql_current_role("r", sql_user("r", "?2"))} AS role,
    (
        SELECT _id FROM vlob_encryption_revision
        WHERE realm = r._id AND encryption_revision = ?4 - 1
    ) AS old_ver,
    (
        SELECT _id FROM vlob_encryption_revision
        WHERE realm = r._id AND encryption_revision = ?4
    ) AS new_ver
FROM realm r JOIN organization o ON o._id = r.organization
WHERE o.organization_id = ?1 AND r.realm_id = ?3
"""

# The atoms of the previous revision without a copy in the new one.
_SQL_GET_REENCRYPTION_BATCH = """
SELECT a.vlob_id, a.version, a.blob
FROM vlob_atom a
WHERE a.vlob_encryption_revision = ?1
    AND NOT EXISTS (
        SELECT 1 FROM vlob_atom c
        WHERE c.vlob_encryption_revision = ?2 AND c.vlob_id = a.vlob_id AND c.version = a.version
    )
ORDER BY a.vlob_id, a.version
LIMIT ?3
"""

_SQL_FIND_SOURCE = """
SELECT _id FROM vlob_atom WHERE vlob_encryption_revision = ? AND vlob_id = ? AND version = ?
"""

# A copy of the source atom (same author and timestamps) with the new blob; an entry
# already saved keeps its first blob.
_SQL_SAVE_COPY = """
INSERT INTO vlob_atom (
    organization, vlob_encryption_revision, vlob_id, version, blob, size, author,
    created_on, deleted_on
)
SELECT organization, ?2, vlob_id, version, ?3, length(?3), author, created_on, deleted_on
FROM vlob_atom WHERE _id = ?1
ON CONFLICT (vlob_encryption_revision, vlob_id, version) DO NOTHING
"""

_SQL_COUNT_ATOMS = "SELECT count(*) FROM vlob_atom WHERE vlob_encryption_revision = ?"


def _create(
    conn: sqlite3.Connection,
    organization_id: str,
    author: str,
    realm_id: uuid.UUID,
    encryption_revision: int,
    vlob_id: uuid.UUID,
    timestamp: DateTime,
    blob: bytes,
) -> int | RealmBadOutcome:
    row = conn.execute(
        _SQL_CREATE_CHECKS, (organization_id, realm_id.bytes, author, vlob_id.bytes)
    ).fetchone()
    refused = vlob_create_refused(row, encryption_revision)
    if refused is not None:
        return refused
    conn.execute(_SQL_REGISTER_VLOB_ID, (row["organization"], vlob_id.bytes))
    atom = conn.execute(
        _SQL_INSERT_ATOM,
        (
            row["organization"],
            row["ver"],
            vlob_id.bytes,
            1,
            blob,
            row["author"],
            to_db_timestamp(timestamp),
        ),
    ).fetchone()[0]
    checkpoint: int = row["last_index"] + 1
    conn.execute(_SQL_LOG_CHANGE, (row["realm"], checkpoint, atom))
    return checkpoint


def _update(
    conn: sqlite3.Connection,
    organization_id: str,
    author: str,
    encryption_revision: int,
    vlob_id: uuid.UUID,
    version: int,
    timestamp: DateTime,
    blob: bytes,
) -> tuple[uuid.UUID, int] | RealmBadOutcome:
    row = conn.execute(_SQL_UPDATE_CHECKS, (organization_id, vlob_id.bytes, author)).fetchone()
    refused = vlob_update_refused(row, encryption_revision, version, timestamp, from_db_timestamp)
    if refused is not None:
        return refused
    # The latest atom is the latest version: outside a maintenance (writes are refused
    # during one) the current revision holds a copy of every version.
    atom = conn.execute(
        _SQL_INSERT_ATOM,
        (
            row["organization"],
            row["ver"],
            vlob_id.bytes,
            version,
            blob,
            row["author"],
            to_db_timestamp(timestamp),
        ),
    ).fetchone()[0]
    checkpoint: int = row["last_index"] + 1
    conn.execute(_SQL_LOG_CHANGE, (row["realm"], checkpoint, atom))
    return from_db_uuid(row["realm_id"]), checkpoint


def _read(
    conn: sqlite3.Connection,
    organization_id: str,
    user_id: str,
    encryption_revision: int,
    vlob_id: uuid.UUID,
    version: int | None,
    timestamp: DateTime | None,
) -> VlobVersion | RealmBadOutcome:
    target = conn.execute(_SQL_VLOB_TARGET, (organization_id, vlob_id.bytes, user_id)).fetchone()
    if target is None:
        return RealmBadOutcome.VLOB_NOT_FOUND
    refused = access_refused(target, READ_ROLES, encryption_revision)
    if refused is not None:
        return refused
    if version is not None:
        found = conn.execute(_SQL_READ_VERSION, (target["ver"], vlob_id.bytes, version))
    elif timestamp is not None:
        found = conn.execute(
            _SQL_READ_AT, (target["ver"], vlob_id.bytes, to_db_timestamp(timestamp))
        )
    else:
        found = conn.execute(_SQL_READ_LATEST, (target["ver"], vlob_id.bytes))
    row = found.fetchone()
    if row is None:
        return RealmBadOutcome.BAD_VERSION
    return VlobVersion(
        version=row["version"],
        blob=row["blob"],
        author=row["author"],
        created_on=from_db_timestamp(row["created_on"]),
    )


def _poll_changes(
    conn: sqlite3.Connection,
    organization_id: str,
    user_id: str,
    realm_id: uuid.UUID,
    last_checkpoint: int,
) -> tuple[dict[uuid.UUID, int], int] | RealmBadOutcome:
    target = conn.execute(_SQL_POLL_TARGET, (organization_id, realm_id.bytes, user_id)).fetchone()
    if target is None:
        return RealmBadOutcome.REALM_NOT_FOUND
    refused = access_refused(target, READ_ROLES, None)
    if refused is not None:
        return refused
    rows = conn.execute(_SQL_POLL_CHANGES, (target["realm"], last_checkpoint))
    changes = {from_db_uuid(vlob_id): version for vlob_id, version in rows}
    checkpoint: int = target["checkpoint"]
    return changes, checkpoint


def _list_versions(
    conn: sqlite3.Connection, organization_id: str, user_id: str, vlob_id: uuid.UUID
) -> list[tuple[int, DateTime, str]] | RealmBadOutcome:
    target = conn.execute(_SQL_VLOB_TARGET, (organization_id, vlob_id.bytes, user_id)).fetchone()
    if target is None:
        return RealmBadOutcome.VLOB_NOT_FOUND
    refused = access_refused(target, READ_ROLES, None)
    if refused is not None:
        return refused
    rows = conn.execute(_SQL_LIST_VERSIONS, (target["ver"], vlob_id.bytes))
    return [
        (version, from_db_timestamp(created_on), author) for version, created_on, author in rows
    ]


def _get_reencryption_batch(
    conn: sqlite3.Connection,
    organization_id: str,
    user_id: str,
    realm_id: uuid.UUID,
    encryption_revision: int,
    size: int,
) -> list[ReencryptionEntry] | RealmBadOutcome:
    target = conn.execute(
        _SQL_MAINTENANCE_TARGET, (organization_id, user_id, realm_id.bytes, encryption_revision)
    ).fetchone()
    if target is None:
        return RealmBadOutcome.REALM_NOT_FOUND
    refused = maintenance_refused(target, encryption_revision)
    if refused is not None:
        return refused
    rows = conn.execute(_SQL_GET_REENCRYPTION_BATCH, (target["old_ver"], target["new_ver"], size))
    return [
        ReencryptionEntry(from_db_uuid(vlob_id), version, blob) for vlob_id, version, blob in rows
    ]


def _save_reencryption_batch(
    conn: sqlite3.Connection,
    organization_id: str,
    user_id: str,
    realm_id: uuid.UUID,
    encryption_revision: int,
    batch: list[ReencryptionEntry],
) -> tuple[int, int] | RealmBadOutcome:
    target = conn.execute(
        _SQL_MAINTENANCE_TARGET, (organization_id, user_id, realm_id.bytes, encryption_revision)
    ).fetchone()
    if target is None:
        return RealmBadOutcome.REALM_NOT_FOUND
    refused = maintenance_refused(target, encryption_revision)
    if refused is not None:
        return refused
    # The entries before the first one that is not an atom of the previous revision are
    # saved (and committed), as the other storages do.
    for entry in batch:
        source = conn.execute(
            _SQL_FIND_SOURCE, (target["old_ver"], entry.vlob_id.bytes, entry.version)
        ).fetchone()
        if source is None:
            return RealmBadOutcome.REENCRYPTION_ENTRY_NOT_FOUND
        conn.execute(_SQL_SAVE_COPY, (source[0], target["new_ver"], entry.blob))
    total: int = conn.execute(_SQL_COUNT_ATOMS, (target["old_ver"],)).fetchone()[0]
    done: int = conn.execute(_SQL_COUNT_ATOMS, (target["new_ver"],)).fetchone()[0]
    return total, done


class SQLiteVlobComponent(BaseVlobComponent):
    def __init__(self, database: SQLiteDatabase, event_bus: EventBus) -> None:
        super().__init__(event_bus)
        self._db = database

    async def create(
        self,
        organization_id: str,
        author: str,
        realm_id: uuid.UUID,
        encryption_revision: int,
        vlob_id: uuid.UUID,
        timestamp: DateTime,
        blob: bytes,
    ) -> int | RealmBadOutcome:
        return await self._db.write(
            _create,
            organization_id,
            author,
            realm_id,
            encryption_revision,
            vlob_id,
            timestamp,
            blob,
        )

    async def read(
        self,
        organization_id: str,
        user_id: str,
        encryption_revision: int,
        vlob_id: uuid.UUID,
        version: int | None,
        timestamp: DateTime | None,
    ) -> VlobVersion | RealmBadOutcome:
        return await self._db.read(
            _read, organization_id, user_id, encryption_revision, vlob_id, version, timestamp
        )

    async def update(
        self,
        organization_id: str,
        author: str,
        encryption_revision: int,
        vlob_id: uuid.UUID,
        version: int,
        timestamp: DateTime,
        blob: bytes,
    ) -> tuple[uuid.UUID, int] | RealmBadOutcome:
        return await self._db.write(
            _update,
            organization_id,
            author,
            encryption_revision,
            vlob_id,
            version,
            timestamp,
            blob,
        )

    async def poll_changes(
        self, organization_id: str, user_id: str, realm_id: uuid.UUID, last_checkpoint: int
    ) -> tuple[dict[uuid.UUID, int], int] | RealmBadOutcome:
        return await self._db.read(
            _poll_changes, organization_id, user_id, realm_id, last_checkpoint
        )

    async def list_versions(
        self, organization_id: str, user_id: str, vlob_id: uuid.UUID
    ) -> list[tuple[int, DateTime, str]] | RealmBadOutcome:
        return await self._db.read(_list_versions, organization_id, user_id, vlob_id)

    async def get_reencryption_batch(
        self,
        organization_id: str,
        user_id: str,
        realm_id: uuid.UUID,
        encryption_revision: int,
        size: int,
    ) -> list[ReencryptionEntry] | RealmBadOutcome:
        return await self._db.read(
            _get_reencryption_batch, organization_id, user_id, realm_id, encryption_revision, size
        )

    async def save_reencryption_batch(
        self,
        organization_id: str,
        user_id: str,
        realm_id: uuid.UUID,
        encryption_revision: int,
        batch: list[ReencryptionEntry],
    ) -> tuple[int, int] | RealmBadOutcome:
        return await self._db.write(
            _save_reencryption_batch,
            organization_id,
            user_id,
            realm_id,
            encryption_revision,
            batch,
        )
