from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from parsec_server.backend.storage.postgresql.migrations import (
    Migration,
    MigrationStatus,
    apply_migrations,
    check_migrations_applied,
    default_migrations_directory,
    get_last_applied_migration,
    load_migrations,
)
from tests.fixtures.postgresql import (
    POSTGRESQL_URL_ENVVAR,
    create_empty_database,
    drop_database,
    start_postgresql_cluster,
)

FILE_NAMES = [
    "0001_initial.sql",
    "0002_add_migration_table.sql",
    "0003_human_handle.sql",
    "0004_invite.sql",
    "0005_redacted_certificates.sql",
]

ALL_APPLIED_LINES = [f"{name} ✔" for name in FILE_NAMES]
ALL_ALREADY_APPLIED_LINES = [f"{name} (already applied)" for name in FILE_NAMES]


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def table_names(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {row["tablename"] for row in rows}


def copy_migrations(destination: Path, count: int) -> None:
    source = default_migrations_directory()
    for file_name in FILE_NAMES[:count]:
        (destination / file_name).write_text((source / file_name).read_text(encoding="utf-8"))


def test_migration_files_are_the_installation_guide_ones() -> None:
    migrations = load_migrations()

    assert [m.file_name for m in migrations] == FILE_NAMES
    assert [m.idx for m in migrations] == [1, 2, 3, 4, 5]
    assert [m.name for m in migrations] == [
        "initial",
        "add_migration_table",
        "human_handle",
        "invite",
        "redacted_certificates",
    ]


def test_load_migrations_ignores_other_files_and_refuses_misnamed_ones(tmp_path: Path) -> None:
    copy_migrations(tmp_path, 2)
    (tmp_path / "README.md").write_text("not a migration")
    assert [m.idx for m in load_migrations(tmp_path)] == [1, 2]

    (tmp_path / "3_oops.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="Invalid migration file name"):
        load_migrations(tmp_path)


def test_load_migrations_refuses_duplicate_numbers_and_gaps(tmp_path: Path) -> None:
    copy_migrations(tmp_path, 2)
    (tmp_path / "0002_again.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="same number"):
        load_migrations(tmp_path)

    (tmp_path / "0002_again.sql").unlink()
    (tmp_path / "0004_after_gap.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="without gap"):
        load_migrations(tmp_path)


async def test_fresh_database_gets_every_migration(empty_postgresql_url: str) -> None:
    async with connect(empty_postgresql_url) as conn:
        reported: list[str] = []
        outcomes = await apply_migrations(conn, on_outcome=lambda o: reported.append(o.line))

        assert [o.line for o in outcomes] == ALL_APPLIED_LINES
        assert reported == ALL_APPLIED_LINES
        assert await get_last_applied_migration(conn) == 5
        assert await check_migrations_applied(conn) is None
        rows = await conn.fetch("SELECT _id, name, applied FROM migration ORDER BY _id")
        assert [(row["_id"], row["name"]) for row in rows] == [
            (2, "add_migration_table"),
            (3, "human_handle"),
            (4, "invite"),
            (5, "redacted_certificates"),
        ]
        assert all(row["applied"] is not None for row in rows)
        assert await table_names(conn) >= {
            "organization",
            "user_",
            "device",
            "human",
            "user_invitation",
            "device_invitation",
            "invitation",
            "message",
            "realm",
            "realm_user_role",
            "realm_vlob_update",
            "vlob_atom",
            "vlob_encryption_revision",
            "block",
            "block_data",
            "migration",
        }


async def test_second_run_reports_every_migration_as_already_applied(
    empty_postgresql_url: str,
) -> None:
    async with connect(empty_postgresql_url) as conn:
        await apply_migrations(conn)
        outcomes = await apply_migrations(conn)

        assert [o.line for o in outcomes] == ALL_ALREADY_APPLIED_LINES
        assert await conn.fetchval("SELECT count(*) FROM migration") == 4


async def test_dry_run_lists_pending_migrations_and_applies_nothing(
    empty_postgresql_url: str,
) -> None:
    async with connect(empty_postgresql_url) as conn:
        outcomes = await apply_migrations(conn, dry_run=True)

        assert [o.line for o in outcomes] == ALL_APPLIED_LINES
        assert {o.status for o in outcomes} == {MigrationStatus.WOULD_APPLY}
        assert await table_names(conn) == set()

        await apply_migrations(conn, load_migrations()[:3])
        outcomes = await apply_migrations(conn, dry_run=True)

        assert [o.line for o in outcomes] == [
            *ALL_ALREADY_APPLIED_LINES[:3],
            *ALL_APPLIED_LINES[3:],
        ]
        assert await get_last_applied_migration(conn) == 3


async def test_partially_migrated_database_gets_the_remaining_migrations(
    empty_postgresql_url: str,
) -> None:
    async with connect(empty_postgresql_url) as conn:
        outcomes = await apply_migrations(conn, load_migrations()[:3])
        assert [o.line for o in outcomes] == ALL_APPLIED_LINES[:3]

        outcomes = await apply_migrations(conn)

        assert [o.line for o in outcomes] == [
            *ALL_ALREADY_APPLIED_LINES[:3],
            *ALL_APPLIED_LINES[3:],
        ]
        assert await check_migrations_applied(conn) is None


async def test_database_without_migration_table_has_migration_1_applied(
    empty_postgresql_url: str,
) -> None:
    async with connect(empty_postgresql_url) as conn:
        await apply_migrations(conn, load_migrations()[:1])
        assert "migration" not in await table_names(conn)
        assert await get_last_applied_migration(conn) == 1

        outcomes = await apply_migrations(conn)

        assert [o.line for o in outcomes] == [
            ALL_ALREADY_APPLIED_LINES[0],
            *ALL_APPLIED_LINES[1:],
        ]


async def test_failing_migration_is_reported_and_stops_the_run(
    empty_postgresql_url: str, tmp_path: Path
) -> None:
    copy_migrations(tmp_path, 2)
    (tmp_path / "0003_broken.sql").write_text(
        "CREATE TABLE half_done (x INTEGER);\nSELECT * FROM no_such_table;\n"
    )
    (tmp_path / "0004_never_reached.sql").write_text("CREATE TABLE never_reached (x INTEGER);\n")
    migrations = load_migrations(tmp_path)

    async with connect(empty_postgresql_url) as conn:
        outcomes = await apply_migrations(conn, migrations)

        assert [o.line for o in outcomes] == [
            "0001_initial.sql ✔",
            "0002_add_migration_table.sql ✔",
            '0003_broken.sql ✘: relation "no_such_table" does not exist',
        ]
        assert outcomes[-1].status is MigrationStatus.FAILED
        tables = await table_names(conn)
        # The failed migration was rolled back as a whole
        assert "half_done" not in tables
        assert "never_reached" not in tables
        assert await get_last_applied_migration(conn) == 2

        # Once fixed, the next run resumes where it stopped
        (tmp_path / "0003_broken.sql").write_text("CREATE TABLE half_done (x INTEGER);\n")
        outcomes = await apply_migrations(conn, load_migrations(tmp_path))
        assert [o.status for o in outcomes] == [
            MigrationStatus.ALREADY_APPLIED,
            MigrationStatus.ALREADY_APPLIED,
            MigrationStatus.APPLIED,
            MigrationStatus.APPLIED,
        ]
        assert await conn.fetchval("SELECT name FROM migration WHERE _id = 3") == "broken"


async def test_check_migrations_applied_names_the_missing_migrations(
    empty_postgresql_url: str,
) -> None:
    migrations = load_migrations()
    async with connect(empty_postgresql_url) as conn:
        assert await check_migrations_applied(conn) == (
            "Database is not up to date: migrations 0001_initial.sql, "
            "0002_add_migration_table.sql, 0003_human_handle.sql, 0004_invite.sql, "
            "0005_redacted_certificates.sql are not applied; run `parsec backend migrate` first"
        )

        await apply_migrations(conn, migrations[:3])
        assert await check_migrations_applied(conn) == (
            "Database is not up to date: migrations 0004_invite.sql, "
            "0005_redacted_certificates.sql are not applied; "
            "run `parsec backend migrate` first"
        )

        await apply_migrations(conn, migrations[:4])
        assert await check_migrations_applied(conn) == (
            "Database is not up to date: migration 0005_redacted_certificates.sql "
            "is not applied; run `parsec backend migrate` first"
        )

        await apply_migrations(conn, migrations)
        assert await check_migrations_applied(conn) is None


async def test_check_migrations_applied_refuses_a_database_from_a_newer_server(
    empty_postgresql_url: str,
) -> None:
    newer = [*load_migrations(), Migration(6, "future", "0006_future.sql", "SELECT 1;")]
    async with connect(empty_postgresql_url) as conn:
        await apply_migrations(conn, newer)
        message = await check_migrations_applied(conn)

    assert message == (
        "Database was migrated by a newer version of the server "
        "(last applied migration: 0006, latest known: 0005)"
    )


async def test_concurrent_runs_apply_each_migration_once(empty_postgresql_url: str) -> None:
    async with AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(connect(empty_postgresql_url)) for _ in range(4)]
        runs = await asyncio.gather(*(apply_migrations(conn) for conn in conns))

        for idx in range(5):
            statuses = sorted(run[idx].status.value for run in runs)
            assert statuses == ["already_applied"] * 3 + ["applied"], statuses
        assert await conns[0].fetchval("SELECT count(*) FROM migration") == 4
        assert await check_migrations_applied(conns[0]) is None


async def test_redacted_certificates_migration_converts_existing_rows(
    empty_postgresql_url: str,
) -> None:
    migrations = load_migrations()
    async with connect(empty_postgresql_url) as conn:
        await apply_migrations(conn, migrations[:4])
        org = await conn.fetchval(
            "INSERT INTO organization (organization_id, bootstrap_token) "
            "VALUES ('Org', 'token') RETURNING _id"
        )
        now = datetime.now(UTC)
        for user_id, is_admin in (("alice", True), ("bob", False)):
            user = await conn.fetchval(
                "INSERT INTO user_ (organization, user_id, is_admin, user_certificate, "
                "created_on) VALUES ($1, $2, $3, $4, $5) RETURNING _id",
                org,
                user_id,
                is_admin,
                f"{user_id} certificate".encode(),
                now,
            )
            await conn.execute(
                "INSERT INTO device (organization, user_, device_id, device_certificate, "
                "verify_key, created_on) VALUES ($1, $2, $3, $4, $5, $6)",
                org,
                user,
                f"{user_id}@dev1",
                f"{user_id}@dev1 certificate".encode(),
                b"k" * 32,
                now,
            )

        await apply_migrations(conn, migrations)

        users = await conn.fetch(
            "SELECT user_id, profile::text, redacted_user_certificate FROM user_ ORDER BY user_id"
        )
        assert [tuple(row) for row in users] == [
            ("alice", "ADMIN", b"alice certificate"),
            ("bob", "STANDARD", b"bob certificate"),
        ]
        devices = await conn.fetch(
            "SELECT device_id, device_label, redacted_device_certificate FROM device "
            "ORDER BY device_id"
        )
        assert [tuple(row) for row in devices] == [
            ("alice@dev1", None, b"alice@dev1 certificate"),
            ("bob@dev1", None, b"bob@dev1 certificate"),
        ]


async def test_schema_scopes_identifiers_by_organization_and_keeps_microseconds(
    empty_postgresql_url: str,
) -> None:
    async with connect(empty_postgresql_url) as conn:
        await apply_migrations(conn)
        orgs = [
            await conn.fetchval(
                "INSERT INTO organization (organization_id, bootstrap_token) "
                "VALUES ($1, '') RETURNING _id",
                name,
            )
            for name in ("Org1", "Org2")
        ]
        created_on = datetime(2021, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
        insert_user = (
            "INSERT INTO user_ (organization, user_id, profile, user_certificate, "
            "redacted_user_certificate, created_on) "
            "VALUES ($1, 'alice', 'ADMIN', '', '', $2) RETURNING _id"
        )
        for org in orgs:
            await conn.fetchval(insert_user, org, created_on)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.fetchval(insert_user, orgs[0], created_on)

        stored = await conn.fetch("SELECT created_on FROM user_")
        assert [row["created_on"] for row in stored] == [created_on, created_on]


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
            outcomes = await apply_migrations(conn)
            assert [o.line for o in outcomes] == ALL_APPLIED_LINES
        await drop_database(server_url, url)
        async with connect(server_url) as conn:
            data_dir = Path(await conn.fetchval("SHOW data_directory"))

    assert not await asyncio.to_thread(data_dir.exists)
    with pytest.raises(OSError):
        await asyncpg.connect(server_url, timeout=5)


async def test_migrated_postgresql_url_fixture_is_up_to_date(migrated_postgresql_url: str) -> None:
    async with connect(migrated_postgresql_url) as conn:
        assert await check_migrations_applied(conn) is None
