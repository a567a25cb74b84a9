"""The migration files and `migrate` / `downgrade` against the reference Parsec 2.0.0:
its own SQL files (run from its installed virtualenv) and its own `migrate`."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from parsec_server.backend.storage.postgresql.migrations import (
    SchemaError,
    check_migrations_applied,
    downgrade,
    migrate,
)
from parsec_server.backend.storage.postgresql.schema.catalog import expected_catalog
from parsec_server.backend.storage.postgresql.schema.files import (
    Series,
    load_series,
    split_statements,
)
from tests.backend.schema_helpers import (
    ALREADY_APPLIED,
    APPLIED,
    EXTRAS_ALREADY_APPLIED,
    EXTRAS_APPLIED,
    EXTRAS_FILE_NAMES,
    EXTRAS_REMOVED,
    build_ours,
    build_reference,
    catalog,
    connect,
    data_snapshot,
    fill_reference,
    pg_dump_schema,
    reference_sql_files,
    run_reference_migrate,
    tool_connect,
)
from tests.fixtures.postgresql import (
    POSTGRESQL_URL_ENVVAR,
    create_empty_database,
    drop_database,
    start_postgresql_cluster,
)


async def full_catalog(conn: asyncpg.Connection, *, ordered: bool = True) -> list[str]:
    async with conn.transaction():
        expected = await expected_catalog(
            conn, load_series(Series.REFERENCE) + load_series(Series.EXTRAS)
        )
    return expected.rows(ordered=ordered)


# --- Files ------------------------------------------------------------------------------


def test_migration_files_are_the_installation_guide_ones() -> None:
    names = [
        "0001_initial.sql",
        "0002_add_migration_table.sql",
        "0003_human_handle.sql",
        "0004_invite.sql",
        "0005_redacted_certificates.sql",
    ]
    assert [m.file_name for m in load_series(Series.REFERENCE)] == names
    assert [m.file_name for m in load_series(Series.LEGACY)] == [f"legacy/{n}" for n in names]
    # Ours, numbered on their own (one file per feature that needs storage)
    extras = [m.file_name for m in load_series(Series.EXTRAS)]
    assert extras[0] == "extras/0001_server_extras.sql"
    assert all(name.startswith("extras/") for name in extras)
    assert [m.name for m in load_series(Series.REFERENCE)] == [
        "initial",
        "add_migration_table",
        "human_handle",
        "invite",
        "redacted_certificates",
    ]


def test_load_series_refuses_misnamed_files_duplicates_and_gaps(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "README.md").write_text("not a migration")
    assert [m.idx for m in load_series(Series.REFERENCE, tmp_path)] == [1]

    (tmp_path / "2_oops.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="Invalid migration file name"):
        load_series(Series.REFERENCE, tmp_path)
    (tmp_path / "2_oops.sql").unlink()
    (tmp_path / "0001_again.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="same number"):
        load_series(Series.REFERENCE, tmp_path)
    (tmp_path / "0001_again.sql").unlink()
    (tmp_path / "0003_gap.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="without gap"):
        load_series(Series.REFERENCE, tmp_path)


def test_split_statements_knows_comments_and_quotes() -> None:
    sql = (
        "-- a comment; with a semicolon\n"
        "CREATE TABLE t (x TEXT DEFAULT 'a;b''c'); /* block; */\n"
        'INSERT INTO "odd;name" VALUES (1);\n'
        "-- trailing comment only\n"
    )
    assert split_statements(sql) == [
        "-- a comment; with a semicolon\nCREATE TABLE t (x TEXT DEFAULT 'a;b''c')",
        '/* block; */\nINSERT INTO "odd;name" VALUES (1)',
    ]
    with pytest.raises(ValueError, match="Dollar"):
        split_statements("CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;")


# --- The Parsec 2.0.0 layout, level by level ----------------------------------------------


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
async def test_our_files_build_the_reference_catalog_at_each_level(
    empty_postgresql_url: str, level: int
) -> None:
    async with connect(empty_postgresql_url) as conn:
        await conn.execute("CREATE SCHEMA reference; CREATE SCHEMA ours")
        await conn.execute("SET search_path = reference")
        await build_reference(conn, level)
        reference = await catalog(conn)
        await conn.execute("SET search_path = ours")
        await build_ours(conn, Series.REFERENCE, level)
        ours = await catalog(conn)
        # Also what migrate expects of a database at that level
        async with conn.transaction():
            expected = await expected_catalog(conn, load_series(Series.REFERENCE)[:level])

    assert ours == reference
    assert expected.rows() == reference


@pytest.mark.parametrize("level", [0, 1, 2, 3, 4, 5])
async def test_reference_database_at_any_level_is_taken_over(
    empty_postgresql_url: str, level: int
) -> None:
    async with connect(empty_postgresql_url) as conn:
        await build_reference(conn, level)
        report = await migrate(conn)
        assert report.lines == ALREADY_APPLIED[:level] + APPLIED[level:] + EXTRAS_APPLIED
        assert report.changed
        assert await catalog(conn) == await full_catalog(conn)
        assert await check_migrations_applied(conn) is None
        rows = await conn.fetch("SELECT _id, name FROM migration ORDER BY applied")
        assert [tuple(r) for r in rows] == [
            (2, "add_migration_table"),
            (3, "human_handle"),
            (4, "invite"),
            (5, "redacted_certificates"),
        ]
        again = await migrate(conn)
        assert again.lines == [*ALREADY_APPLIED, *EXTRAS_ALREADY_APPLIED]
        assert not again.changed

    # Parsec 2.0.0 reads its level from the latest `applied`: nothing left to apply
    assert run_reference_migrate(empty_postgresql_url, "--dry-run") == ALREADY_APPLIED


@pytest.mark.parametrize("level", [1, 2, 3, 4])
async def test_our_files_up_to_any_level_then_reference_migrate_give_reference_5(
    empty_postgresql_url: str, level: int
) -> None:
    async with connect(empty_postgresql_url) as conn:
        await conn.execute("CREATE SCHEMA reference")
        await conn.execute("SET search_path = reference")
        await build_reference(conn, 5)
        reference = await catalog(conn)
        await conn.execute("SET search_path = public")
        await build_ours(conn, Series.REFERENCE, level)

    lines = run_reference_migrate(empty_postgresql_url)
    assert lines == ALREADY_APPLIED[:level] + APPLIED[level:]
    async with connect(empty_postgresql_url) as conn:
        assert await catalog(conn) == reference


# --- Hand-back ---------------------------------------------------------------------------


async def test_migrate_then_downgrade_gives_a_fresh_reference_database(
    empty_postgresql_url: str, postgresql_url: str
) -> None:
    fresh_url = await create_empty_database(postgresql_url)
    try:
        async with connect(fresh_url) as conn:
            await build_reference(conn, 5)
        async with connect(empty_postgresql_url) as conn:
            await build_reference(conn, 5)
            await fill_reference(conn)
            await migrate(conn)
            report = await downgrade(conn)
            assert report.lines == [
                *EXTRAS_REMOVED,
                "Database handed back: Parsec 2.0.0 schema, 0005_redacted_certificates",
            ]
            async with connect(fresh_url) as fresh:
                assert await catalog(conn) == await catalog(fresh)
            assert await conn.fetchval("SELECT count(*) FROM vlob_atom") == 5
            nothing = await downgrade(conn)
            assert nothing.lines == [
                "nothing to do: the database is in the Parsec 2.0.0 layout at level 5"
            ]
            assert not nothing.changed
        if shutil.which("pg_dump"):
            assert pg_dump_schema(empty_postgresql_url) == pg_dump_schema(fresh_url)
        assert run_reference_migrate(empty_postgresql_url, "--dry-run") == ALREADY_APPLIED
        assert run_reference_migrate(empty_postgresql_url) == ALREADY_APPLIED

        # And taken over again
        async with connect(empty_postgresql_url) as conn:
            report = await migrate(conn)
            assert report.lines == [*ALREADY_APPLIED, *EXTRAS_APPLIED]
            # device.verify_key comes back after the dropped one: positions differ
            assert await catalog(conn, ordered=False) == await full_catalog(conn, ordered=False)
    finally:
        await drop_database(postgresql_url, fresh_url)


async def test_downgrade_drops_every_ext_object_whichever_file_created_it(
    empty_postgresql_url: str,
) -> None:
    async with connect(empty_postgresql_url) as conn:
        await migrate(conn)
        # As a later extras file would (objects no extras file of ours creates)
        await conn.execute(
            "CREATE TABLE ext_user_note (user_ INTEGER PRIMARY KEY REFERENCES user_ (_id));"
            "CREATE INDEX ext_block_size_idx ON block (size);"
            "CREATE TYPE ext_state AS ENUM ('a');"
            "CREATE SEQUENCE ext_counter;"
            "CREATE VIEW ext_view AS SELECT 1 AS x;"
            "CREATE FUNCTION ext_f() RETURNS trigger LANGUAGE plpgsql AS "
            "'BEGIN RETURN NEW; END';"
            "CREATE TRIGGER ext_trigger BEFORE INSERT ON block "
            "FOR EACH ROW EXECUTE FUNCTION ext_f();"
            "ALTER TABLE device ADD CONSTRAINT ext_check CHECK (_id > 0);"
        )
        await downgrade(conn)
        left = await conn.fetch(
            "SELECT relname FROM pg_class WHERE relname LIKE 'ext\\_%' UNION ALL "
            "SELECT typname FROM pg_type WHERE typname LIKE 'ext\\_%' UNION ALL "
            "SELECT proname FROM pg_proc WHERE proname LIKE 'ext\\_%' UNION ALL "
            "SELECT conname FROM pg_constraint WHERE conname LIKE 'ext\\_%'"
        )
        assert left == []
        async with conn.transaction():
            reference = await expected_catalog(conn, load_series(Series.REFERENCE))
        assert await catalog(conn) == reference.rows()


async def test_downgrade_of_a_reference_database_below_level_5_has_nothing_to_do(
    empty_postgresql_url: str,
) -> None:
    async with connect(empty_postgresql_url) as conn:
        await build_reference(conn, 3)
        report = await downgrade(conn)
    assert report.lines == [
        "nothing to do: the database is in the Parsec 2.0.0 layout at level 3 "
        "(Parsec 2.0.0's `parsec backend migrate` applies the rest)"
    ]


async def test_downgrade_of_an_empty_database_is_refused(empty_postgresql_url: str) -> None:
    async with connect(empty_postgresql_url) as conn:
        with pytest.raises(SchemaError, match="no Parsec schema: nothing to hand back"):
            await downgrade(conn)


# --- Data of the takeover ----------------------------------------------------------------


async def test_takeover_keeps_the_reference_rows_and_fills_the_extras(
    empty_postgresql_url: str,
) -> None:
    async with connect(empty_postgresql_url) as conn:
        await build_reference(conn, 5)
        data = await fill_reference(conn)
        before = await data_snapshot(conn)

        report = await migrate(conn)

        assert report.notes == [
            "vlob ids used by several realms (served from the realm of their latest "
            f"version): {data.shared_vlob_id}"
        ]
        keys = await conn.fetch("SELECT device_id, verify_key FROM device ORDER BY device_id")
        assert {r["device_id"]: r["verify_key"] for r in keys} == data.verify_keys
        # Duplicated indexes (1, 2, 2, 3) become the positions in _id order
        indexes = await conn.fetch("SELECT index FROM message ORDER BY _id")
        assert [r["index"] for r in indexes] == [1, 2, 3, 4]
        after = await data_snapshot(conn)
        for table in before:
            if table not in ("device", "message", "migration"):
                assert after[table] == before[table], table
        assert len(after["device"]) == len(before["device"])


async def test_unreadable_device_certificate_is_refused_naming_the_device(
    empty_postgresql_url: str,
) -> None:
    async with connect(empty_postgresql_url) as conn:
        await build_reference(conn, 5)
        await fill_reference(conn)
        await conn.execute(
            "UPDATE device SET device_certificate = 'junk' WHERE device_id = 'bob@dev1'"
        )
        before = await catalog(conn)

        with pytest.raises(SchemaError) as error:
            await migrate(conn)

        assert str(error.value).startswith(
            "cannot read the certificate of device bob@dev1 (organization Org): "
        )
        assert await catalog(conn) == before


# --- Runs ----------------------------------------------------------------------------------


async def test_dry_run_changes_nothing(empty_postgresql_url: str) -> None:
    async with connect(empty_postgresql_url) as conn:
        await build_reference(conn, 3)
        before_catalog, before_data = await catalog(conn), await data_snapshot(conn)

        report = await migrate(conn, dry_run=True)

        assert report.lines == [*ALREADY_APPLIED[:3], *APPLIED[3:], *EXTRAS_APPLIED]
        assert not report.changed
        assert await catalog(conn) == before_catalog
        assert await data_snapshot(conn) == before_data


async def test_concurrent_migrates_apply_each_migration_once(empty_postgresql_url: str) -> None:
    async with tool_connect(empty_postgresql_url) as one, tool_connect(empty_postgresql_url) as two:
        reports = await asyncio.gather(migrate(one), migrate(two))
        assert sorted(r.changed for r in reports) == [False, True]
        lines = sorted((r.lines for r in reports), key=lambda lines: lines[0])
        assert lines == [
            [*ALREADY_APPLIED, *EXTRAS_ALREADY_APPLIED],
            [*APPLIED, *EXTRAS_APPLIED],
        ]
        assert await one.fetchval("SELECT count(*) FROM migration") == 4
        assert await one.fetchval("SELECT count(*) FROM ext_migration") == len(EXTRAS_FILE_NAMES)


async def test_other_connections_make_migrate_refuse_unless_forced(
    empty_postgresql_url: str,
) -> None:
    async with connect(empty_postgresql_url) as conn, connect(empty_postgresql_url, "x"):
        with pytest.raises(SchemaError) as error:
            await migrate(conn)
        assert str(error.value) == (
            "database in use by 1 other connection(s) (a running server?); stop it or pass --force"
        )
        assert await conn.fetchval("SELECT to_regclass('organization')") is None

        dry = await migrate(conn, dry_run=True)
        assert dry.notes == [str(error.value)]

        forced = await migrate(conn, force=True)
        assert forced.notes == ["going on (--force) with 1 other connection(s)"]
        assert await check_migrations_applied(conn) is None

        with pytest.raises(SchemaError, match="database in use by 1 other"):
            await downgrade(conn)
        await downgrade(conn, force=True)


async def test_an_up_to_date_database_in_use_is_not_refused(empty_postgresql_url: str) -> None:
    async with connect(empty_postgresql_url) as conn:
        await migrate(conn)
        async with connect(empty_postgresql_url, "parsec-server"):
            report = await migrate(conn)
    assert report.lines == [*ALREADY_APPLIED, *EXTRAS_ALREADY_APPLIED]


# --- Start-up check ------------------------------------------------------------------------


async def test_check_migrations_applied_names_the_fix(empty_postgresql_url: str) -> None:
    async with connect(empty_postgresql_url) as conn:
        assert await check_migrations_applied(conn) == (
            "Database has no Parsec schema: run `parsec backend migrate`"
        )
        await build_reference(conn, 3)
        extras = len(EXTRAS_FILE_NAMES)
        assert await check_migrations_applied(conn) == (
            "Database is not up to date (Parsec 2.0.0 layout at level 3 of 5, server extras "
            f"at level 0 of {extras}): run `parsec backend migrate`"
        )
        await migrate(conn)
        assert await check_migrations_applied(conn) is None
        future = extras + 1
        await conn.execute(f"INSERT INTO ext_migration VALUES ({future}, 'future', now())")
        assert await check_migrations_applied(conn) == (
            "Database was migrated by a newer version of parsec-server "
            f"(migration extras/{future:04d}_future): upgrade parsec-server"
        )
        await conn.execute(
            f"DELETE FROM ext_migration WHERE _id = {future};"
            "INSERT INTO migration VALUES (6, 'xyz', now())"
        )
        assert await check_migrations_applied(conn) == (
            "Database was migrated by a newer or unknown version (migration 0006_xyz): "
            "use the version of Parsec that migrated it"
        )


async def test_check_migrations_applied_refuses_the_legacy_layout(
    empty_postgresql_url: str,
) -> None:
    async with connect(empty_postgresql_url) as conn:
        await build_ours(conn, Series.LEGACY, 5)
        assert await check_migrations_applied(conn) == (
            "Database is in the previous parsec-server layout: run `parsec backend migrate` "
            "(conversion needed)"
        )


# --- Fixtures -----------------------------------------------------------------------------


async def test_postgresql_url_fixture_serves_the_configured_server(postgresql_url: str) -> None:
    configured = os.environ.get(POSTGRESQL_URL_ENVVAR)
    if configured:
        assert postgresql_url == configured
    async with connect(postgresql_url) as conn:
        assert await conn.fetchval("SELECT 1") == 1


@pytest.mark.skipif(shutil.which("runuser") is None and os.geteuid() == 0, reason="no runuser")
async def test_self_started_cluster_can_be_migrated_and_is_removed() -> None:
    # Always exercise the self-started mode, even when the session uses an external server
    with start_postgresql_cluster() as server_url:
        assert server_url.startswith("postgresql://postgres@127.0.0.1:")
        url = await create_empty_database(server_url)
        async with connect(url) as conn:
            report = await migrate(conn)
            assert report.lines == [*APPLIED, *EXTRAS_APPLIED]
        await drop_database(server_url, url)
        async with connect(server_url) as conn:
            data_dir = Path(await conn.fetchval("SHOW data_directory"))

    assert not await asyncio.to_thread(data_dir.exists)
    with pytest.raises(OSError):
        await asyncpg.connect(server_url, timeout=5)


async def test_migrated_postgresql_url_fixture_is_up_to_date(migrated_postgresql_url: str) -> None:
    async with connect(migrated_postgresql_url) as conn:
        assert await check_migrations_applied(conn) is None


def test_reference_sql_files_are_found() -> None:
    assert len(reference_sql_files()) == 5
