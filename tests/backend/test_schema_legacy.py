"""Databases of our earlier releases (the `legacy/` layout) at every level: converted to
the Parsec 2.0.0 layout by `migrate` (then the extras) or by `downgrade` (alone), in one
transaction, every row kept."""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from parsec_server.backend.storage.postgresql.migrations import (
    SchemaError,
    Series,
    check_migrations_applied,
    downgrade,
    migrate,
)
from parsec_server.backend.storage.postgresql.schema.catalog import expected_catalog
from parsec_server.backend.storage.postgresql.schema.files import load_series
from tests.backend.schema_helpers import (
    ALREADY_APPLIED,
    EXTRAS_APPLIED,
    LegacyData,
    build_ours,
    catalog,
    connect,
    fill_legacy_level1,
    run_reference_migrate,
)

LEGACY = [m.file_name for m in load_series(Series.LEGACY)]


async def legacy_database(conn: asyncpg.Connection, level: int) -> LegacyData:
    await build_ours(conn, Series.LEGACY, 1)
    data = await fill_legacy_level1(conn)
    for migration in load_series(Series.LEGACY)[1:level]:
        async with conn.transaction():
            await conn.execute(migration.sql)
            if migration.idx >= 2:
                await conn.execute(
                    "INSERT INTO migration VALUES ($1, $2, clock_timestamp())",
                    migration.idx,
                    migration.name,
                )
    if level >= 4:
        await conn.execute(
            "INSERT INTO invitation (organization, token, type, greeter, claimer_email, "
            "created_on) SELECT organization, gen_random_uuid(), 'USER', _id, 'new@x.org', "
            "created_on FROM user_ WHERE user_id = 'alice'"
        )
    if level >= 5:
        await conn.execute("UPDATE device SET device_label = 'laptop'")
    return data


async def check_converted_data(conn: asyncpg.Connection, data: LegacyData, level: int) -> None:
    # Every row kept; the saved re-encryption work became a copy under revision 2
    assert await conn.fetchval("SELECT count(*) FROM realm_vlob_update") == 4
    revisions = await conn.fetch(
        "SELECT realm, encryption_revision FROM vlob_encryption_revision ORDER BY 1, 2"
    )
    r1, r2 = data.realms["r1"], data.realms["r2"]
    assert [tuple(r) for r in revisions] == [(r1, 1), (r2, 1), (r2, 2)]
    atoms = await conn.fetch(
        "SELECT v.realm, v.encryption_revision, a.version, a.blob, a.size "
        "FROM vlob_atom a JOIN vlob_encryption_revision v ON v._id = a.vlob_encryption_revision "
        "ORDER BY a._id"
    )
    assert [tuple(a) for a in atoms] == [
        (r1, 1, 1, b"old", 3),
        (r1, 1, 1, b"old", 3),
        (r2, 1, 1, b"old", 3),
        (r2, 1, 1, b"old", 3),
        (r2, 2, 1, b"new!", 4),
    ]
    copy = await conn.fetchrow(
        "SELECT a.author, a.created_on, a.vlob_id = o.vlob_id AS same_vlob FROM vlob_atom a, "
        "(SELECT * FROM vlob_atom ORDER BY _id OFFSET 2 LIMIT 1) o ORDER BY a._id DESC LIMIT 1"
    )
    assert copy["same_vlob"]
    realm = await conn.fetchrow("SELECT * FROM realm WHERE _id = $1", r2)
    assert (realm["encryption_revision"], realm["maintenance_type"]) == (2, "REENCRYPTION")
    messages = await conn.fetch("SELECT organization, index FROM message ORDER BY _id")
    assert [m["index"] for m in messages] == [1, 2]
    assert all(m["organization"] is not None for m in messages)
    profiles = await conn.fetch("SELECT user_id, profile::text FROM user_ ORDER BY 1")
    assert [tuple(p) for p in profiles] == [("alice", "ADMIN"), ("bob", "STANDARD")]
    if level >= 4:
        assert await conn.fetchval("SELECT claimer_email FROM invitation") == "new@x.org"
    if level >= 5:
        assert await conn.fetchval("SELECT DISTINCT device_label FROM device") == "laptop"
    assert await conn.fetchval("SELECT count(*) FROM block") == 1
    assert await conn.fetchval("SELECT count(*) FROM block_data") == 1


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
async def test_legacy_database_at_any_level_is_converted(
    empty_postgresql_url: str, level: int
) -> None:
    async with connect(empty_postgresql_url) as conn:
        data = await legacy_database(conn, level)
        assert "conversion needed" in (await check_migrations_applied(conn) or "")

        dry = await migrate(conn, dry_run=True)
        report = await migrate(conn)

        expected_lines = [
            *ALREADY_APPLIED[:level],
            *[f"{name} ✔" for name in LEGACY[level:]],
            "legacy/to_reference.sql ✔",
            *EXTRAS_APPLIED,
        ]
        assert report.lines == [*expected_lines, "converted from the previous parsec-server layout"]
        assert dry.lines == [
            *expected_lines,
            "would convert from the previous parsec-server layout",
        ]
        async with conn.transaction():
            target = await expected_catalog(
                conn, load_series(Series.REFERENCE) + load_series(Series.EXTRAS)
            )
        # Column order differs from a fresh database (cosmetic), the rest is identical
        assert await catalog(conn, ordered=False) == target.rows(ordered=False)
        await check_converted_data(conn, data, level)
        keys = await conn.fetch("SELECT device_id, verify_key FROM device ORDER BY 1")
        assert {k["device_id"]: k["verify_key"] for k in keys} == data.verify_keys
        assert await check_migrations_applied(conn) is None

    assert run_reference_migrate(empty_postgresql_url, "--dry-run") == ALREADY_APPLIED


async def test_downgrade_hands_a_legacy_database_straight_back(empty_postgresql_url: str) -> None:
    async with connect(empty_postgresql_url) as conn:
        data = await legacy_database(conn, 3)

        report = await downgrade(conn)

        assert report.lines == [
            "legacy/0004_invite.sql ✔",
            "legacy/0005_redacted_certificates.sql ✔",
            "legacy/to_reference.sql ✔",
            "converted from the previous parsec-server layout",
            "Database handed back: Parsec 2.0.0 schema, 0005_redacted_certificates",
        ]
        async with conn.transaction():
            target = await expected_catalog(conn, load_series(Series.REFERENCE))
        assert await catalog(conn, ordered=False) == target.rows(ordered=False)
        await check_converted_data(conn, data, 3)
    assert run_reference_migrate(empty_postgresql_url, "--dry-run") == ALREADY_APPLIED


async def test_data_too_long_for_parsec_2_columns_is_refused_listing_the_rows(
    empty_postgresql_url: str,
) -> None:
    async with connect(empty_postgresql_url) as conn:
        await legacy_database(conn, 5)
        await conn.execute("UPDATE device SET device_label = repeat('x', 255)")
        before = await catalog(conn)

        with pytest.raises(SchemaError) as error:
            await migrate(conn)
        assert str(error.value) == (
            "cannot convert: device labels longer than 254 characters "
            "(devices Org/alice@dev1, Org/bob@dev1); shorten them first"
        )
        with pytest.raises(SchemaError, match="device labels longer than 254"):
            await migrate(conn, dry_run=True)
        assert await catalog(conn) == before

        await conn.execute(
            "UPDATE device SET device_label = 'ok';"
            "UPDATE invitation SET claimer_email = repeat('x', 256)"
        )
        with pytest.raises(SchemaError, match=r"invitation emails longer than 255 characters"):
            await downgrade(conn)

        await conn.execute(
            "UPDATE invitation SET claimer_email = 'ok@x.org';"
            "SELECT setval('vlob_atom__id_seq', 2147483648)"
        )
        with pytest.raises(SchemaError) as error:
            await migrate(conn)
        assert str(error.value) == (
            "cannot convert: table vlob_atom has ids up to 2147483648, beyond the 32-bit ids "
            "of the Parsec 2.0.0 layout"
        )
        assert await catalog(conn) == before
