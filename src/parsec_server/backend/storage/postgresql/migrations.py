"""The numbered SQL migrations of the PostgreSQL schema and their runner.

Migration files live in the `migrations/` folder next to this module and are named
`NNNN_<name>.sql`. Migration 1 is never recorded; migrations >= 2 are recorded in the
`migration` table (created by migration 2) as `(number, name, applied timestamp)`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

import asyncpg  # type: ignore[import-untyped, unused-ignore]

__all__ = [
    "Migration",
    "MigrationOutcome",
    "MigrationStatus",
    "apply_migrations",
    "check_migrations_applied",
    "default_migrations_directory",
    "get_last_applied_migration",
    "load_migrations",
]

_FILE_NAME_PATTERN = re.compile(r"^(?P<idx>\d{4})_(?P<name>\w+)\.sql$")

# Any constant would do as long as every runner uses the same one ("parsecMg" in ASCII).
MIGRATION_LOCK_KEY = 0x7061727365634D67

_SQL_TAKE_MIGRATION_LOCK = "SELECT pg_advisory_xact_lock($1)"

# A plain query on the catalog rather than `to_regclass()`: the latter reads the
# backend's catalog cache, which may not know yet about a table committed by a
# concurrent runner after our transaction began; this query sees it (fresh snapshot).
_SQL_GET_SCHEMA_TABLES = """
SELECT
    EXISTS (
        SELECT FROM pg_catalog.pg_tables
        WHERE tablename = 'migration' AND schemaname = ANY (current_schemas(false))
    ) AS has_migration_table,
    EXISTS (
        SELECT FROM pg_catalog.pg_tables
        WHERE tablename = 'organization' AND schemaname = ANY (current_schemas(false))
    ) AS has_organization_table
"""

_SQL_GET_LAST_RECORDED_MIGRATION = """
SELECT _id FROM migration ORDER BY applied DESC, _id DESC LIMIT 1
"""

_SQL_RECORD_MIGRATION = """
INSERT INTO migration (_id, name, applied) VALUES ($1, $2, now())
"""

_SQL_HAS_EXTRAS_TABLE = """
SELECT EXISTS (
    SELECT FROM pg_catalog.pg_tables
    WHERE tablename = 'ext_migration' AND schemaname = ANY (current_schemas(false))
)
"""

_SQL_GET_EXTRAS_LEVEL = "SELECT COALESCE(max(_id), 0) FROM ext_migration"

_SQL_RECORD_EXTRAS = """
INSERT INTO ext_migration (_id, name, applied) VALUES ($1, $2, now())
"""


@dataclass(frozen=True, slots=True)
class Migration:
    idx: int
    name: str  # e.g. "human_handle"
    file_name: str  # e.g. "0003_human_handle.sql", "extras/0001_server_extras.sql"
    sql: str
    # Our additions to the Parsec 2.0.0 layout, recorded in ext_migration
    extras: bool = False


class MigrationStatus(enum.Enum):
    ALREADY_APPLIED = "already_applied"
    APPLIED = "applied"
    WOULD_APPLY = "would_apply"  # dry run
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class MigrationOutcome:
    migration: Migration
    status: MigrationStatus
    error: str | None = None  # the PostgreSQL message when FAILED

    @property
    def line(self) -> str:
        """The line `parsec backend migrate` prints for this migration."""
        match self.status:
            case MigrationStatus.ALREADY_APPLIED:
                return f"{self.migration.file_name} (already applied)"
            case MigrationStatus.APPLIED | MigrationStatus.WOULD_APPLY:
                return f"{self.migration.file_name} ✔"
            case MigrationStatus.FAILED:
                return f"{self.migration.file_name} ✘: {self.error}"


def default_migrations_directory() -> Traversable:
    # The `migrations` folder shares its name with this module: resolve it from the
    # parent package (works from a source tree, a wheel or a zip).
    return files(__package__ or "parsec_server.backend.storage.postgresql") / "migrations"


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """Read the migrations of `directory`, sorted by number.

    By default: the package's numbered migrations, then its extras.
    Raises `ValueError` on a misnamed `.sql` file, a duplicate number or a gap.
    """
    if directory is None:
        default = default_migrations_directory()
        return _load_series(default) + _load_series(default / "extras", extras=True)
    return _load_series(directory)


def _load_series(directory: Traversable, *, extras: bool = False) -> list[Migration]:
    migrations: dict[int, Migration] = {}
    for entry in directory.iterdir():
        if not entry.is_file() or not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME_PATTERN.match(entry.name)
        if match is None:
            raise ValueError(f"Invalid migration file name `{entry.name}` (expected NNNN_name.sql)")
        idx = int(match.group("idx"))
        if idx in migrations:
            raise ValueError(
                f"Migrations `{migrations[idx].file_name}` and `{entry.name}` have the same number"
            )
        migrations[idx] = Migration(
            idx=idx,
            name=match.group("name"),
            file_name=f"extras/{entry.name}" if extras else entry.name,
            sql=entry.read_text(encoding="utf-8"),
            extras=extras,
        )
    expected = list(range(1, len(migrations) + 1))
    if sorted(migrations) != expected:
        raise ValueError(f"Migration numbers must be 1..n without gap, got {sorted(migrations)}")
    return [migrations[idx] for idx in expected]


async def get_last_applied_migration(conn: asyncpg.Connection) -> int:
    """Number of the last applied migration, 0 if none."""
    tables = await conn.fetchrow(_SQL_GET_SCHEMA_TABLES)
    if tables["has_migration_table"]:
        last: int | None = await conn.fetchval(_SQL_GET_LAST_RECORDED_MIGRATION)
        if last is not None:
            return last
    # Databases created before the `migration` table existed
    if tables["has_organization_table"]:
        return 1
    return 0


async def get_extras_level(conn: asyncpg.Connection) -> int:
    """Number of the last applied extras migration, 0 if none."""
    if not await conn.fetchval(_SQL_HAS_EXTRAS_TABLE):
        return 0
    level: int = await conn.fetchval(_SQL_GET_EXTRAS_LEVEL)
    return level


async def _applied_level(conn: asyncpg.Connection, migration: Migration) -> int:
    if migration.extras:
        return await get_extras_level(conn)
    return await get_last_applied_migration(conn)


async def _apply_migration(conn: asyncpg.Connection, migration: Migration) -> MigrationOutcome:
    try:
        async with conn.transaction():
            # 1. Serialize concurrent runners: the lock is held until this transaction ends.
            # 2. Only then look at what is applied, so that a migration committed by
            #    another runner while we waited is seen and not applied twice.
            await conn.execute(_SQL_TAKE_MIGRATION_LOCK, MIGRATION_LOCK_KEY)
            if await _applied_level(conn, migration) >= migration.idx:
                return MigrationOutcome(migration, MigrationStatus.ALREADY_APPLIED)
            await conn.execute(migration.sql)
            if migration.extras:
                await conn.execute(_SQL_RECORD_EXTRAS, migration.idx, migration.name)
            elif migration.idx >= 2:
                await conn.execute(_SQL_RECORD_MIGRATION, migration.idx, migration.name)
    except asyncpg.PostgresError as exc:
        return MigrationOutcome(migration, MigrationStatus.FAILED, error=str(exc))
    return MigrationOutcome(migration, MigrationStatus.APPLIED)


async def apply_migrations(
    conn: asyncpg.Connection,
    migrations: Sequence[Migration] | None = None,
    *,
    dry_run: bool = False,
    on_outcome: Callable[[MigrationOutcome], None] | None = None,
) -> list[MigrationOutcome]:
    """Apply the pending migrations in order, each in its own transaction.

    Stops after the first migration that fails (its outcome is the last one returned).
    With `dry_run`, pending migrations are reported as `WOULD_APPLY` and nothing is
    changed. `on_outcome` is called as soon as each outcome is known.

    A PostgreSQL error raised by a migration is reported as a `FAILED` outcome; other
    errors (e.g. lost connection) propagate.
    """
    if migrations is None:
        migrations = load_migrations()
    last_applied = await get_last_applied_migration(conn) if dry_run else 0
    extras_level = await get_extras_level(conn) if dry_run else 0
    outcomes: list[MigrationOutcome] = []
    for migration in migrations:
        if dry_run:
            level = extras_level if migration.extras else last_applied
            status = (
                MigrationStatus.ALREADY_APPLIED
                if migration.idx <= level
                else MigrationStatus.WOULD_APPLY
            )
            outcome = MigrationOutcome(migration, status)
        else:
            outcome = await _apply_migration(conn, migration)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
        if outcome.status is MigrationStatus.FAILED:
            break
    return outcomes


async def check_migrations_applied(
    conn: asyncpg.Connection, migrations: Sequence[Migration] | None = None
) -> str | None:
    """Return why the server must not start on this database, or None if it is current."""
    if migrations is None:
        migrations = load_migrations()
    last_applied = await get_last_applied_migration(conn)
    extras_level = await get_extras_level(conn)
    pending = [
        m.file_name for m in migrations if m.idx > (extras_level if m.extras else last_applied)
    ]
    if pending:
        if len(pending) == 1:
            what = f"migration {pending[0]} is not applied"
        else:
            what = f"migrations {', '.join(pending)} are not applied"
        return f"Database is not up to date: {what}; run `parsec backend migrate` first"
    known = max((m.idx for m in migrations if not m.extras), default=0)
    if last_applied > known:
        return (
            f"Database was migrated by a newer version of the server "
            f"(last applied migration: {last_applied:04d}, latest known: {known:04d})"
        )
    return None
