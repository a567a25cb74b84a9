"""Query plans of the hot PostgreSQL statements on a synthetic database.

    .venv/bin/python bench/explain_hot_queries.py [--postgresql-url URL] [--realms N]

Builds a throwaway database with our migrations, fills it (1 organization, 100 users,
`--realms` realms x 1 000 vlobs x 2 versions, a tenth of the realms re-encrypted to
revision 2 with copies as Parsec 2.0.0 makes them, one owner role per user and realm),
then runs `EXPLAIN ANALYZE` of each hot statement of the storage, in a transaction rolled
back, with the planner's custom plan and with its generic plan (asyncpg prepares
statements, so the server may use either). Prints each plan and exits 1 if one of them
scans `vlob_atom` sequentially. A program that prints plans, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from parsec_server.backend.realm_types import READ_ROLES, WRITE_ROLES
from parsec_server.backend.storage.postgresql import block, message, user, vlob
from parsec_server.backend.storage.postgresql.migrations import migrate

_FILL = """
INSERT INTO organization (organization_id, bootstrap_token, root_verify_key)
VALUES ('Org', 'token', '\\x00');
INSERT INTO user_ (organization, user_id, user_certificate, created_on,
    redacted_user_certificate, profile)
SELECT 1, 'u' || i, '\\x00', now(), '\\x00', 'ADMIN' FROM generate_series(1, 100) i;
INSERT INTO device (organization, user_, device_id, device_certificate, created_on,
    redacted_device_certificate, verify_key)
SELECT 1, i, 'u' || i || '@d', '\\x00', now(), '\\x00', '\\x00' FROM generate_series(1, 100) i;
INSERT INTO realm (organization, realm_id, encryption_revision)
SELECT 1, gen_random_uuid(), CASE WHEN i % 10 = 0 THEN 2 ELSE 1 END
FROM generate_series(1, {realms}) i;
INSERT INTO vlob_encryption_revision (realm, encryption_revision)
SELECT r._id, rev FROM realm r, generate_series(1, r.encryption_revision) rev;
INSERT INTO realm_user_role (realm, user_, role, certificate, certified_by, certified_on)
SELECT r._id, u, 'OWNER', '\\x00', 1, now() FROM realm r, generate_series(1, 100) u;
INSERT INTO vlob_atom (organization, vlob_encryption_revision, vlob_id, version, blob, size,
    author, created_on)
SELECT 1, ver._id, v.vlob_id, n, '\\x0102', 2, 1, now()
FROM (SELECT r._id AS realm, gen_random_uuid() AS vlob_id
      FROM realm r, generate_series(1, 1000)) v
JOIN vlob_encryption_revision ver ON ver.realm = v.realm AND ver.encryption_revision = 1,
generate_series(1, 2) n;
INSERT INTO vlob_atom (organization, vlob_encryption_revision, vlob_id, version, blob, size,
    author, created_on)
SELECT 1, new_ver._id, a.vlob_id, a.version, a.blob, a.size, a.author, a.created_on
FROM vlob_atom a
JOIN vlob_encryption_revision old_ver ON old_ver._id = a.vlob_encryption_revision
JOIN vlob_encryption_revision new_ver
    ON new_ver.realm = old_ver.realm AND new_ver.encryption_revision = 2;
INSERT INTO realm_vlob_update (realm, index, vlob_atom)
SELECT ver.realm, row_number() OVER (PARTITION BY ver.realm ORDER BY a._id), a._id
FROM vlob_atom a
JOIN vlob_encryption_revision ver
    ON ver._id = a.vlob_encryption_revision AND ver.encryption_revision = 1;
INSERT INTO message (organization, recipient, timestamp, index, sender, body)
SELECT 1, 1, now(), i, 2, '\\x00' FROM generate_series(1, 1000) i;
ANALYZE;
"""

_SAMPLES = """
SELECT r.realm_id, a.vlob_id, r.encryption_revision
FROM vlob_atom a
JOIN vlob_encryption_revision ver ON ver._id = a.vlob_encryption_revision
JOIN realm r ON r._id = ver.realm
WHERE r.encryption_revision = $1 AND a.version = 2
LIMIT 1
"""


def _statements(
    realm_id: uuid.UUID, vlob_id: uuid.UUID, revision: int
) -> dict[str, tuple[str, tuple[Any, ...]]]:
    now = datetime.now(UTC)
    read, write = sorted(READ_ROLES), sorted(WRITE_ROLES)
    new_id = uuid.uuid4()
    return {
        "handshake": (user._SQL_GET_IDENTITY, ("Org", "u1@d")),
        "vlob_create": (
            vlob._SQL_CREATE,
            ("Org", realm_id, "u1@d", revision, new_id, now, b"x", write),
        ),
        "vlob_update": (
            vlob._SQL_UPDATE,
            ("Org", "u1@d", revision, vlob_id, 3, now, b"x", write),
        ),
        "vlob_read": (vlob._SQL_READ, ("Org", "u1", vlob_id, revision, None, None, read)),
        "vlob_read version": (vlob._SQL_READ, ("Org", "u1", vlob_id, revision, 1, None, read)),
        "vlob_list_versions": (vlob._SQL_LIST_VERSIONS, ("Org", "u1", vlob_id, read)),
        "vlob_poll_changes": (vlob._SQL_POLL_CHANGES, ("Org", "u1", realm_id, 1990, read)),
        "block_create check": (block._SQL_CHECK_CREATE, ("Org", "u1", realm_id, new_id)),
        "message_get": (message._SQL_GET, ("Org", "u1", 990)),
    }


async def _explain(conn: asyncpg.Connection, sql: str, args: tuple[Any, ...]) -> str:
    tr = conn.transaction()
    await tr.start()
    try:
        rows = await conn.fetch(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {sql}", *args)
    finally:
        await tr.rollback()
    return "\n".join(row[0] for row in rows)


async def _run(url: str, realms: int) -> int:
    name = f"explain_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conn = await asyncpg.connect(url.rsplit("/", 1)[0] + f"/{name}")
        try:
            await migrate(conn)
            await conn.execute(_FILL.format(realms=realms))
            return await _explain_all(conn)
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def _explain_all(conn: asyncpg.Connection) -> int:
    seq_scans = 0
    for revision in (1, 2):
        realm_id, vlob_id, _ = await conn.fetchrow(_SAMPLES, revision)
        for label, (sql, args) in _statements(realm_id, vlob_id, revision).items():
            for mode in ("force_custom_plan", "force_generic_plan"):
                await conn.execute(f"SET plan_cache_mode = {mode}")
                plan = await _explain(conn, sql, args)
                bad = "Seq Scan on vlob_atom" in plan
                seq_scans += bad
                print(f"--- {label}, realm at revision {revision}, {mode}" + (" SEQ SCAN" * bad))
                print(plan)
    return 1 if seq_scans else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgresql-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--realms", type=int, default=50)
    args = parser.parse_args()
    sys.exit(asyncio.run(_run(args.postgresql_url, args.realms)))


if __name__ == "__main__":
    main()
