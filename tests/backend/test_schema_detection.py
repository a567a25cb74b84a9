"""`migrate` knows what it is given: what it refuses (one line, nothing changed) and what
it takes, with the objects it leaves alone."""

from __future__ import annotations

import pytest

from parsec_server.backend.storage.postgresql.migrations import (
    SchemaError,
    Series,
    downgrade,
    migrate,
)
from tests.backend.schema_helpers import (
    ALREADY_APPLIED,
    APPLIED,
    EXTRAS_APPLIED,
    EXTRAS_FILE_NAMES,
    build_ours,
    build_reference,
    catalog,
    connect,
    data_snapshot,
)


async def assert_refused(url: str, setup: str | None, message: str, *, level: int = 5) -> None:
    async with connect(url) as conn:
        if level:
            await build_reference(conn, level)
        if setup:
            await conn.execute(setup)
        before = (await catalog(conn), await data_snapshot(conn))
        with pytest.raises(SchemaError) as error:
            await migrate(conn)
        assert str(error.value) == message
        assert (await catalog(conn), await data_snapshot(conn)) == before
        with pytest.raises(SchemaError):
            await migrate(conn, dry_run=True)


async def test_foreign_tables_are_left_untouched_and_noted(empty_postgresql_url: str) -> None:
    async with connect(empty_postgresql_url) as conn:
        await conn.execute(
            "CREATE TABLE wiki_page (id SERIAL PRIMARY KEY, body TEXT);"
            "INSERT INTO wiki_page (body) VALUES ('hello')"
        )
        report = await migrate(conn)
        assert report.lines == [*APPLIED, *EXTRAS_APPLIED]
        assert report.notes == ["not managed by Parsec, left untouched: table wiki_page"]

        await downgrade(conn)
        assert await conn.fetchval("SELECT body FROM wiki_page") == "hello"
        again = await migrate(conn)
        assert again.notes == ["not managed by Parsec, left untouched: table wiki_page"]


async def test_an_operators_index_is_allowed_and_noted(empty_postgresql_url: str) -> None:
    async with connect(empty_postgresql_url) as conn:
        await build_reference(conn, 5)
        await conn.execute("CREATE INDEX my_block_idx ON block (size)")
        report = await migrate(conn)
        assert report.notes == ["not managed by Parsec, left untouched: index my_block_idx"]
        await downgrade(conn)
        assert await conn.fetchval("SELECT to_regclass('my_block_idx')::text") == "my_block_idx"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        pytest.param(
            "INSERT INTO migration VALUES (6, 'xyz', now())",
            "Database was migrated by a newer or unknown version (migration 0006_xyz)",
            id="newer",
        ),
        pytest.param(
            "UPDATE migration SET name = 'other' WHERE _id = 4",
            "Database was migrated by a newer or unknown version (migration 0004_other)",
            id="unknown-name",
        ),
        pytest.param(
            "DELETE FROM migration",
            "Unknown database layout: its `migration` table is empty (no migration recorded)",
            id="empty-migration-table",
        ),
        pytest.param(
            "DELETE FROM migration WHERE _id = 3",
            "Unknown database layout: `migration` records migrations 2, 4, 5, not 2 to 5 in a row",
            id="gap",
        ),
        pytest.param(
            "ALTER TABLE device ALTER COLUMN device_label TYPE TEXT",
            "Database does not match the Parsec 2.0.0 layout at level 5: column "
            "device.device_label is `text`, expected `character varying(254)`",
            id="different-column",
        ),
        pytest.param(
            "ALTER TABLE device DROP CONSTRAINT device_user__device_id_key",
            "Database does not match the Parsec 2.0.0 layout at level 5: missing constraint "
            "device.device_user__device_id_key; missing index device_user__device_id_key",
            id="missing-constraint",
        ),
        pytest.param(
            "DROP TABLE block_data",
            "Database does not match the Parsec 2.0.0 layout at level 5: missing table block_data",
            id="missing-table",
        ),
        pytest.param(
            "ALTER TABLE device ADD COLUMN verify_key TEXT",
            "Database already has objects the migration creates: column device.verify_key",
            id="collision",
        ),
        pytest.param(
            "CREATE TABLE ext_vlob_id (x INTEGER)",
            "Unknown database layout: server extras objects (ext_vlob_id) without their "
            "`ext_migration` table",
            id="ext-without-ext_migration",
        ),
        pytest.param(
            "ALTER TABLE user_ RENAME COLUMN user_certifier TO certifier",
            "Unknown database layout: its `user_`, `realm` and `vlob_atom` tables match "
            "neither Parsec 2.0.0 nor the previous parsec-server layout",
            id="no-fingerprint",
        ),
    ],
)
async def test_reference_database_that_is_not_what_it_claims_is_refused(
    empty_postgresql_url: str, setup: str, message: str
) -> None:
    await assert_refused(empty_postgresql_url, setup, message)


async def test_newer_extras_are_refused(empty_postgresql_url: str) -> None:
    async with connect(empty_postgresql_url) as conn:
        await migrate(conn)
        future = len(EXTRAS_FILE_NAMES) + 1
        await conn.execute(f"INSERT INTO ext_migration VALUES ({future}, 'future', now())")
        with pytest.raises(SchemaError) as error:
            await migrate(conn)
        assert str(error.value) == (
            "Database was migrated by a newer or unknown version "
            f"(migration extras/{future:04d}_future)"
        )
        with pytest.raises(SchemaError):
            await downgrade(conn)


async def test_parsec_tables_without_organization_are_refused(empty_postgresql_url: str) -> None:
    await assert_refused(
        empty_postgresql_url,
        "CREATE TABLE human (x INTEGER); CREATE TYPE realm_role AS ENUM ('OWNER')",
        "Unknown database layout: Parsec objects without an `organization` table "
        "(found human, realm_role)",
        level=0,
    )


async def test_extras_below_level_5_are_refused(empty_postgresql_url: str) -> None:
    await assert_refused(
        empty_postgresql_url,
        "CREATE TABLE ext_migration (_id INTEGER PRIMARY KEY, name TEXT, applied TIMESTAMPTZ)",
        "Unknown database layout: server extras (`ext_migration`) on the Parsec 2.0.0 "
        "layout at level 4",
        level=4,
    )


async def test_missing_extras_object_is_refused_naming_it(empty_postgresql_url: str) -> None:
    async with connect(empty_postgresql_url) as conn:
        await migrate(conn)
        await conn.execute("DROP INDEX ext_vlob_atom_vlob_idx")
        with pytest.raises(SchemaError) as error:
            await migrate(conn)
        assert str(error.value) == (
            "Database does not match the Parsec 2.0.0 layout at level 5 with the server "
            f"extras at level {len(EXTRAS_FILE_NAMES)}: missing index ext_vlob_atom_vlob_idx"
        )
        with pytest.raises(SchemaError, match="missing index ext_vlob_atom_vlob_idx"):
            await downgrade(conn)


async def test_legacy_layout_claiming_a_lower_level_is_refused(empty_postgresql_url: str) -> None:
    async with connect(empty_postgresql_url) as conn:
        await build_ours(conn, Series.LEGACY, 5)
        await conn.execute("DELETE FROM migration WHERE _id = 5")
        with pytest.raises(SchemaError) as error:
            await migrate(conn)
    assert str(error.value).startswith(
        "Database does not match the previous parsec-server layout at level 4: "
    )


async def test_reference_at_level_1_without_migration_table(empty_postgresql_url: str) -> None:
    async with connect(empty_postgresql_url) as conn:
        await build_reference(conn, 1)
        report = await migrate(conn, dry_run=True)
    assert report.lines == [ALREADY_APPLIED[0], *APPLIED[1:], *EXTRAS_APPLIED]


async def test_a_bigint_sequence_of_an_upgraded_cluster_is_accepted(
    empty_postgresql_url: str,
) -> None:
    # Clusters created before PostgreSQL 10 have untyped (bigint) SERIAL sequences
    async with connect(empty_postgresql_url) as conn:
        await build_reference(conn, 5)
        await conn.execute("ALTER SEQUENCE vlob_atom__id_seq AS bigint")
        report = await migrate(conn)
    assert report.lines == [*ALREADY_APPLIED, *EXTRAS_APPLIED]
