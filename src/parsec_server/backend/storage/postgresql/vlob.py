"""Vlobs: versions, change log, re-encryption.

Layout (Parsec 2.0.0's, docs/storage-postgresql.md): a realm has one
`vlob_encryption_revision` row per encryption revision; each version of a vlob is a
`vlob_atom` row under the revision that was current when it was written, and a
re-encryption adds a copy of every atom under the new revision (the old ones are kept).
Reads serve the atoms of the realm's current revision. The realm of a vlob is found
through any of its atoms (`ext_vlob_atom_vlob_idx`); the checkpoint of a realm is the
greatest index of its change log (`realm_vlob_update`).

Reads are one SELECT returning every column the checks need. Writes (create, update) are
one statement too, which fetches the checked columns, writes only if every check passes,
and returns the checked columns so that Python tells which check failed:

1. The statement reads the realm, the caller's role, the latest version and the realm's
   last change log index on its snapshot, with the realm row's version (`xmin`).
2. It bumps the realm row (a no-op update) with `UPDATE realm ... WHERE xmin = <read
   version>`: this locks the realm row (writers of a realm are serialized) and, if
   another transaction updated the row since the snapshot (a vlob write, a role change,
   a maintenance change: all of them update the realm row, see realm.py), updates
   nothing, so nothing is written. When it updates, nothing changed since the snapshot:
   the next change log index is the one read plus one.
3. Python sees the checks pass but nothing written: a concurrent change got in between.
   It runs the statement again in a transaction that first locks the realm row, so the
   second snapshot is taken after every change of the realm is committed and no other
   can come in before ours: this time the checks are final.

Vlob ids are unique per organization. Two concurrent creations of one vlob id in two
realms both register the id in `ext_vlob_id`: the second one fails on its primary key.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from parsec_server.api.codec import DateTime
from parsec_server.backend.events import EventBus
from parsec_server.backend.realm_types import READ_ROLES, WRITE_ROLES, RealmBadOutcome
from parsec_server.backend.storage.postgresql.realm import sql_current_role, sql_user
from parsec_server.backend.storage.rows import (
    access_refused,
    maintenance_refused,
    vlob_create_refused,
    vlob_update_refused,
)
from parsec_server.backend.vlob import BaseVlobComponent, ReencryptionEntry, VlobVersion

_READ_ROLES = sorted(READ_ROLES)
_WRITE_ROLES = sorted(WRITE_ROLES)
# A concurrent creation of the same vlob id (in another realm)
_CREATE_CONSTRAINT = "ext_vlob_id_pkey"
# A concurrent write of the same version
_VERSION_CONSTRAINT = "vlob_atom_vlob_encryption_revision_vlob_id_version_key"

_SQL_LOCK_REALM_ROW = "SELECT 1 FROM realm WHERE _id = $1 FOR NO KEY UPDATE"


def sql_last_index(realm: str) -> str:
    """SQL expression: the checkpoint of the realm row aliased `realm` (0: no change)."""
    return (
        f"COALESCE((SELECT max(u.index) FROM realm_vlob_update u WHERE u.realm = {realm}._id), 0)"
    )


# The realm's current revision row, joined to the realm row aliased `r`
_SQL_JOIN_CURRENT_REVISION = """
LEFT JOIN vlob_encryption_revision ver
    ON ver.realm = r._id AND ver.encryption_revision = r.encryption_revision"""


# The realm row `r` of the vlob $vlob_id of the organization row `o`: the realm of the
# vlob's latest atom (a database written by Parsec 2.0.0 may hold one vlob id in two
# realms; ours never does).
def _sql_join_vlob_realm(vlob_id: str) -> str:
    return f"""
JOIN LATERAL (
    SELECT a.vlob_encryption_revision, a.version, a.created_on FROM vlob_atom a
    WHERE a.organization = o._id AND a.vlob_id = {vlob_id}
    ORDER BY a.version DESC
    LIMIT 1
) latest ON TRUE
JOIN vlob_encryption_revision latest_ver ON latest_ver._id = latest.vlob_encryption_revision
JOIN realm r ON r._id = latest_ver.realm"""


# $1 organization_id, $2 realm_id, $3 author, $4 encryption_revision, $5 vlob_id,
# $6 timestamp, $7 blob, $8 write roles
_SQL_CREATE = f"""
WITH target AS (
    SELECT
        r._id AS realm, r.organization, r.xmin AS realm_version,
        r.encryption_revision, r.maintenance_type IS NOT NULL AS in_maintenance,
        ver._id AS ver, d._id AS author,
        {sql_current_role("r", "d.user_")} AS role,
        EXISTS (
            SELECT 1 FROM vlob_atom WHERE organization = r.organization AND vlob_id = $5
        ) AS vlob_exists,
        {sql_last_index("r")} AS last_index
    FROM realm r
    JOIN organization o ON o._id = r.organization
    JOIN device d ON d.organization = o._id AND d.device_id = $3
    {_SQL_JOIN_CURRENT_REVISION}
    WHERE o.organization_id = $1 AND r.realm_id = $2
),
bumped AS (
    UPDATE realm SET encryption_revision = realm.encryption_revision
    FROM target t
    WHERE realm._id = t.realm AND realm.xmin = t.realm_version
        AND t.role = ANY($8::text[])
        AND NOT t.in_maintenance
        AND t.encryption_revision = $4
        AND NOT t.vlob_exists
    RETURNING realm._id, t.last_index + 1 AS checkpoint
),
registered AS (
    INSERT INTO ext_vlob_id (organization, vlob_id)
    SELECT t.organization, $5 FROM bumped b, target t
),
atom AS (
    INSERT INTO vlob_atom (
        organization, vlob_encryption_revision, vlob_id, version, blob, size, author,
        created_on
    )
    SELECT t.organization, t.ver, $5, 1, $7::bytea, octet_length($7::bytea), t.author, $6
    FROM bumped b, target t
    RETURNING _id
),
logged AS (
    INSERT INTO realm_vlob_update (realm, index, vlob_atom)
    SELECT b._id, b.checkpoint, a._id FROM bumped b, atom a
)
SELECT
    t.realm, t.role, t.in_maintenance, t.encryption_revision, t.vlob_exists,
    (SELECT checkpoint FROM bumped) AS checkpoint
FROM target t
"""

# $1 organization_id, $2 author, $3 encryption_revision, $4 vlob_id, $5 version,
# $6 timestamp, $7 blob, $8 write roles.
# The latest atom is the latest version: outside a maintenance (writes are refused
# during one) the current revision holds a copy of every version.
_SQL_UPDATE = f"""
WITH target AS (
    SELECT
        r._id AS realm, r.realm_id, r.organization, r.xmin AS realm_version,
        r.encryption_revision, r.maintenance_type IS NOT NULL AS in_maintenance,
        ver._id AS ver, d._id AS author,
        {sql_current_role("r", "d.user_")} AS role,
        latest.version AS latest_version, latest.created_on AS latest_created_on,
        {sql_last_index("r")} AS last_index
    FROM organization o
    JOIN device d ON d.organization = o._id AND d.device_id = $2
    {_sql_join_vlob_realm("$4")}
    {_SQL_JOIN_CURRENT_REVISION}
    WHERE o.organization_id = $1
),
bumped AS (
    UPDATE realm SET encryption_revision = realm.encryption_revision
    FROM target t
    WHERE realm._id = t.realm AND realm.xmin = t.realm_version
        AND t.role = ANY($8::text[])
        AND NOT t.in_maintenance
        AND t.encryption_revision = $3
        AND $5 = t.latest_version + 1
        AND $6 >= t.latest_created_on
    RETURNING realm._id, t.last_index + 1 AS checkpoint
),
atom AS (
    INSERT INTO vlob_atom (
        organization, vlob_encryption_revision, vlob_id, version, blob, size, author,
        created_on
    )
    SELECT t.organization, t.ver, $4, $5, $7::bytea, octet_length($7::bytea), t.author, $6
    FROM bumped b, target t
    RETURNING _id
),
logged AS (
    INSERT INTO realm_vlob_update (realm, index, vlob_atom)
    SELECT b._id, b.checkpoint, a._id FROM bumped b, atom a
)
SELECT
    t.realm, t.realm_id, t.role, t.in_maintenance, t.encryption_revision,
    t.latest_version, t.latest_created_on,
    (SELECT checkpoint FROM bumped) AS checkpoint
FROM target t
"""

# The realm of a vlob, with the caller's role ($2: user id) and the realm's current
# revision row (`ver`); nothing if the vlob is unknown.
_SQL_VLOB_TARGET = f"""
SELECT
    r._id AS realm, r.encryption_revision, ver._id AS ver,
    r.maintenance_type IS NOT NULL AS in_maintenance,
    {sql_current_role("r", sql_user("r", "$2"))} AS role
FROM organization o
{_sql_join_vlob_realm("$3")}
{_SQL_JOIN_CURRENT_REVISION}
WHERE o.organization_id = $1
"""

# $1 organization_id, $2 user_id, $3 vlob_id, $4 encryption_revision, $5 version,
# $6 timestamp, $7 read roles. The version is fetched only when the checks pass:
# `version` if given, else the latest one written at `timestamp` or before if given,
# else the latest one.
_SQL_READ = f"""
WITH target AS ({_SQL_VLOB_TARGET})
SELECT
    t.role, t.in_maintenance, t.encryption_revision,
    a.version, a.blob, d.device_id AS author, a.created_on
FROM target t
LEFT JOIN LATERAL (
    SELECT a.version, a.blob, a.author, a.created_on FROM vlob_atom a
    WHERE a.vlob_encryption_revision = t.ver AND a.vlob_id = $3
        AND t.role = ANY($7::text[]) AND NOT t.in_maintenance AND t.encryption_revision = $4
        AND a.version <= COALESCE($5::integer, 2147483647)
        AND ($5::integer IS NULL OR a.version = $5::integer)
        AND ($5::integer IS NOT NULL OR $6::timestamptz IS NULL OR a.created_on <= $6)
    ORDER BY a.version DESC
    LIMIT 1
) a ON TRUE
LEFT JOIN device d ON d._id = a.author
"""

# $1 organization_id, $2 user_id, $3 vlob_id, $4 read roles
_SQL_LIST_VERSIONS = f"""
WITH target AS ({_SQL_VLOB_TARGET})
SELECT
    t.role, t.in_maintenance,
    ARRAY(
        SELECT ROW(a.version, a.created_on, d.device_id)
        FROM vlob_atom a JOIN device d ON d._id = a.author
        WHERE a.vlob_encryption_revision = t.ver AND a.vlob_id = $3
            AND t.role = ANY($4::text[]) AND NOT t.in_maintenance
        ORDER BY a.version
    ) AS versions
FROM target t
"""

# $1 organization_id, $2 user_id, $3 realm_id, $4 last_checkpoint (any BIGINT: the protocol
# accepts any checkpoint), $5 read roles.
# The changes and the checkpoint come from one snapshot, hence agree.
_SQL_POLL_CHANGES = f"""
WITH target AS (
    SELECT
        r._id AS realm, {sql_last_index("r")} AS checkpoint,
        r.maintenance_type IS NOT NULL AS in_maintenance,
        {sql_current_role("r", sql_user("r", "$2"))} AS role
    FROM realm r JOIN organization o ON o._id = r.organization
    WHERE o.organization_id = $1 AND r.realm_id = $3
)
SELECT
    t.role, t.in_maintenance, t.checkpoint,
    ARRAY(
        SELECT ROW(a.vlob_id, max(a.version))
        FROM realm_vlob_update u JOIN vlob_atom a ON a._id = u.vlob_atom
        WHERE u.realm = t.realm AND u.index > $4::bigint
            AND t.role = ANY($5::text[]) AND NOT t.in_maintenance
        GROUP BY a.vlob_id
    ) AS changes
FROM target t
"""

# The realm being re-encrypted ($4: the revision being built, BIGINT so that any
# revision of the protocol has a previous one), with the revision rows copied from
# (`old_ver`) and to (`new_ver`).
_SQL_MAINTENANCE_TARGET = f"""
SELECT
    r._id AS realm, r.encryption_revision,
    r.maintenance_type IS NOT NULL AS in_maintenance,
    {sql_current_role("r", sql_user("r", "$2"))} AS role,
    (
        SELECT _id FROM vlob_encryption_revision
        WHERE realm = r._id AND encryption_revision = $4::bigint - 1
    ) AS old_ver,
    (
        SELECT _id FROM vlob_encryption_revision
        WHERE realm = r._id AND encryption_revision = $4::bigint
    ) AS new_ver
FROM realm r JOIN organization o ON o._id = r.organization
WHERE o.organization_id = $1 AND r.realm_id = $3
"""

_MAINTENANCE_ALLOWED = (
    "t.role = 'OWNER' AND t.in_maintenance AND t.encryption_revision = $4::bigint"
)

# $1 organization_id, $2 user_id, $3 realm_id, $4 encryption_revision, $5 size.
# The atoms of the previous revision without a copy in the new one.
_SQL_GET_REENCRYPTION_BATCH = f"""
WITH target AS ({_SQL_MAINTENANCE_TARGET})
SELECT
    t.role, t.in_maintenance, t.encryption_revision,
    ARRAY(
        SELECT ROW(a.vlob_id, a.version, a.blob)
        FROM vlob_atom a
        WHERE a.vlob_encryption_revision = t.old_ver AND {_MAINTENANCE_ALLOWED}
            AND NOT EXISTS (
                SELECT 1 FROM vlob_atom c
                WHERE c.vlob_encryption_revision = t.new_ver
                    AND c.vlob_id = a.vlob_id AND c.version = a.version
            )
        ORDER BY a.vlob_id, a.version
        LIMIT $5
    ) AS batch
FROM target t
"""

# $1 organization_id, $2 user_id, $3 realm_id, $4 encryption_revision, $5 vlob ids,
# $6 versions, $7 blobs.
# Saves the entries before the first one that is not an atom of the previous revision
# (like the memory storage, which stops there), each as a copy of its source atom (same
# author and timestamps) with the new blob; an entry already saved keeps its first blob,
# as does an entry given twice. `done` counts on the snapshot plus this statement's saves
# (a concurrent save of the same realm may not be counted yet).
_SQL_SAVE_REENCRYPTION_BATCH = f"""
WITH target AS ({_SQL_MAINTENANCE_TARGET}),
entries AS (
    SELECT e.ord, e.blob, a._id AS source
    FROM target t
    CROSS JOIN unnest($5::uuid[], $6::integer[], $7::bytea[])
        WITH ORDINALITY AS e(vlob_id, version, blob, ord)
    LEFT JOIN vlob_atom a
        ON a.vlob_encryption_revision = t.old_ver
        AND a.vlob_id = e.vlob_id AND a.version = e.version
    WHERE {_MAINTENANCE_ALLOWED}
),
first_unknown AS (
    SELECT min(ord) AS ord FROM entries WHERE source IS NULL
),
to_save AS (
    SELECT DISTINCT ON (source) source, blob
    FROM entries
    WHERE source IS NOT NULL AND ord < COALESCE((SELECT ord FROM first_unknown), ord + 1)
    ORDER BY source, ord
),
saved AS (
    INSERT INTO vlob_atom (
        organization, vlob_encryption_revision, vlob_id, version, blob, size, author,
        created_on, deleted_on
    )
    SELECT
        a.organization, t.new_ver, a.vlob_id, a.version, s.blob, octet_length(s.blob),
        a.author, a.created_on, a.deleted_on
    FROM to_save s JOIN vlob_atom a ON a._id = s.source CROSS JOIN target t
    ORDER BY a._id
    ON CONFLICT (vlob_encryption_revision, vlob_id, version) DO NOTHING
    RETURNING 1
)
SELECT
    t.role, t.in_maintenance, t.encryption_revision,
    (SELECT ord FROM first_unknown) AS first_unknown,
    (SELECT count(*) FROM vlob_atom WHERE vlob_encryption_revision = t.old_ver) AS total,
    (SELECT count(*) FROM vlob_atom WHERE vlob_encryption_revision = t.new_ver)
        + (SELECT count(*) FROM saved) AS done
FROM target t
"""


class WriteChecksMismatch(RuntimeError):
    """A write found its checks passed but wrote nothing while holding the realm's lock:
    the SQL and the Python checks disagree (a bug)."""


class PGVlobComponent(BaseVlobComponent):
    def __init__(self, pool: asyncpg.Pool, event_bus: EventBus) -> None:
        super().__init__(event_bus)
        self._pool = pool

    async def _write(
        self,
        sql: str,
        args: tuple[object, ...],
        refused: Callable[[asyncpg.Record | None], RealmBadOutcome | None],
    ) -> asyncpg.Record | RealmBadOutcome:
        """Steps 1-3 of the module docstring: the statement's row once it wrote, or the
        outcome of the failed check."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(sql, *args)
            outcome = refused(row)
            if outcome is not None:
                return outcome
            assert row is not None
            if row["checkpoint"] is not None:
                return row
            async with conn.transaction():
                await conn.execute(_SQL_LOCK_REALM_ROW, row["realm"])
                row = await conn.fetchrow(sql, *args)
            outcome = refused(row)
            if outcome is not None:
                return outcome
            assert row is not None
            if row["checkpoint"] is None:
                raise WriteChecksMismatch("a vlob write wrote nothing under the realm's lock")
            return row

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
        args = (
            organization_id,
            realm_id,
            author,
            encryption_revision,
            vlob_id,
            timestamp.dt,
            blob,
            _WRITE_ROLES,
        )
        try:
            row = await self._write(
                _SQL_CREATE, args, lambda row: vlob_create_refused(row, encryption_revision)
            )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name != _CREATE_CONSTRAINT:
                raise
            # Created at the same time in another realm of the organization.
            return RealmBadOutcome.VLOB_ALREADY_EXISTS
        if isinstance(row, RealmBadOutcome):
            return row
        checkpoint: int = row["checkpoint"]
        return checkpoint

    async def read(
        self,
        organization_id: str,
        user_id: str,
        encryption_revision: int,
        vlob_id: uuid.UUID,
        version: int | None,
        timestamp: DateTime | None,
    ) -> VlobVersion | RealmBadOutcome:
        row = await self._pool.fetchrow(
            _SQL_READ,
            organization_id,
            user_id,
            vlob_id,
            encryption_revision,
            version,
            None if timestamp is None else timestamp.dt,
            _READ_ROLES,
        )
        if row is None:
            return RealmBadOutcome.VLOB_NOT_FOUND
        refused = access_refused(row, READ_ROLES, encryption_revision)
        if refused is not None:
            return refused
        if row["version"] is None:
            return RealmBadOutcome.BAD_VERSION
        return VlobVersion(
            version=row["version"],
            blob=row["blob"],
            author=row["author"],
            created_on=DateTime(row["created_on"]),
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
        args = (
            organization_id,
            author,
            encryption_revision,
            vlob_id,
            version,
            timestamp.dt,
            blob,
            _WRITE_ROLES,
        )
        try:
            row = await self._write(
                _SQL_UPDATE,
                args,
                lambda row: vlob_update_refused(
                    row, encryption_revision, version, timestamp, DateTime
                ),
            )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name != _VERSION_CONSTRAINT:
                raise
            # Last line of defence: the realm's lock already serializes writers of a vlob.
            return RealmBadOutcome.BAD_VERSION
        if isinstance(row, RealmBadOutcome):
            return row
        return row["realm_id"], row["checkpoint"]

    async def poll_changes(
        self, organization_id: str, user_id: str, realm_id: uuid.UUID, last_checkpoint: int
    ) -> tuple[dict[uuid.UUID, int], int] | RealmBadOutcome:
        row = await self._pool.fetchrow(
            _SQL_POLL_CHANGES, organization_id, user_id, realm_id, last_checkpoint, _READ_ROLES
        )
        if row is None:
            return RealmBadOutcome.REALM_NOT_FOUND
        refused = access_refused(row, READ_ROLES, None)
        if refused is not None:
            return refused
        changes = {vlob_id: version for vlob_id, version in row["changes"]}
        checkpoint: int = row["checkpoint"]
        return changes, checkpoint

    async def list_versions(
        self, organization_id: str, user_id: str, vlob_id: uuid.UUID
    ) -> list[tuple[int, DateTime, str]] | RealmBadOutcome:
        row = await self._pool.fetchrow(
            _SQL_LIST_VERSIONS, organization_id, user_id, vlob_id, _READ_ROLES
        )
        if row is None:
            return RealmBadOutcome.VLOB_NOT_FOUND
        refused = access_refused(row, READ_ROLES, None)
        if refused is not None:
            return refused
        return [
            (version, DateTime(created_on), author)
            for version, created_on, author in row["versions"]
        ]

    async def get_reencryption_batch(
        self,
        organization_id: str,
        user_id: str,
        realm_id: uuid.UUID,
        encryption_revision: int,
        size: int,
    ) -> list[ReencryptionEntry] | RealmBadOutcome:
        row = await self._pool.fetchrow(
            _SQL_GET_REENCRYPTION_BATCH,
            organization_id,
            user_id,
            realm_id,
            encryption_revision,
            size,
        )
        if row is None:
            return RealmBadOutcome.REALM_NOT_FOUND
        refused = maintenance_refused(row, encryption_revision)
        if refused is not None:
            return refused
        return [
            ReencryptionEntry(vlob_id, version, blob) for vlob_id, version, blob in row["batch"]
        ]

    async def save_reencryption_batch(
        self,
        organization_id: str,
        user_id: str,
        realm_id: uuid.UUID,
        encryption_revision: int,
        batch: list[ReencryptionEntry],
    ) -> tuple[int, int] | RealmBadOutcome:
        row = await self._pool.fetchrow(
            _SQL_SAVE_REENCRYPTION_BATCH,
            organization_id,
            user_id,
            realm_id,
            encryption_revision,
            [e.vlob_id for e in batch],
            [e.version for e in batch],
            [e.blob for e in batch],
        )
        if row is None:
            return RealmBadOutcome.REALM_NOT_FOUND
        refused = maintenance_refused(row, encryption_revision)
        if refused is not None:
            return refused
        if row["first_unknown"] is not None:
            return RealmBadOutcome.REENCRYPTION_ENTRY_NOT_FOUND
        return row["total"], row["done"]
