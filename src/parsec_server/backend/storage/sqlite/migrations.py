"""The numbered SQL migrations of the SQLite schema and their runner.

Migration files live in the `migrations/` folder next to this module and are named
`NNNN_<name>.sql`; each applied one is recorded in the `migration` table (created by the
first) as `(number, name, applied)`, `applied` in microseconds since the epoch. Each
migration runs in its own `BEGIN IMMEDIATE` transaction (SQLite's DDL is
transactional): concurrent runs queue on the write lock, and the one that comes second
finds the migration recorded and skips it.
"""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from parsec_server.backend.storage.migration_files import load_numbered_files
from parsec_server.backend.storage.sqlite.utils import now_timestamp

__all__ = [
    "Migration",
    "MigrationOutcome",
    "MigrationStatus",
    "apply_migrations",
    "check_migrations_applied",
    "get_last_applied_migration",
    "load_migrations",
    "migrate_command",
    "migrate_file",
]

_SQL_HAS_MIGRATION_TABLE = "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'migration'"
_SQL_LAST_APPLIED = "SELECT COALESCE(max(_id), 0) FROM migration"
_SQL_RECORD = "INSERT INTO migration (_id, name, applied) VALUES (?, ?, ?)"


@dataclass(frozen=True, slots=True)
class Migration:
    idx: int
    name: str  # e.g. "initial"
    file_name: str  # e.g. "0001_initial.sql"
    sql: str

    def statements(self) -> Iterator[str]:
        """The file's statements, one at a time (`executescript` would commit first)."""
        pending = ""
        for line in self.sql.splitlines(keepends=True):
            pending += line
            if sqlite3.complete_statement(pending):
                yield pending
                pending = ""
        if pending.strip() and not all(
            not part.strip() or part.strip().startswith("--") for part in pending.splitlines()
        ):
            raise ValueError(f"{self.file_name} ends with an incomplete statement")


class MigrationStatus(enum.Enum):
    ALREADY_APPLIED = "already_applied"
    APPLIED = "applied"
    WOULD_APPLY = "would_apply"  # dry run
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class MigrationOutcome:
    migration: Migration
    status: MigrationStatus
    error: str | None = None  # SQLite's message when FAILED

    @property
    def line(self) -> str:
        """The line `parsec backend migrate` prints for this migration (as with
        PostgreSQL)."""
        match self.status:
            case MigrationStatus.ALREADY_APPLIED:
                return f"{self.migration.file_name} (already applied)"
            case MigrationStatus.APPLIED | MigrationStatus.WOULD_APPLY:
                return f"{self.migration.file_name} ✔"
            case MigrationStatus.FAILED:
                return f"{self.migration.file_name} ✘: {self.error}"


def load_migrations() -> list[Migration]:
    """The package's migrations, sorted by number; ValueError on a misnamed file, a
    duplicate number or a gap."""
    directory = files(__package__ or "parsec_server.backend.storage.sqlite") / "migrations"
    return [
        Migration(file.idx, file.name, file.file_name, file.sql)
        for file in load_numbered_files(directory)
    ]


def get_last_applied_migration(conn: sqlite3.Connection) -> int:
    """Number of the last applied migration, 0 if none (empty file)."""
    if conn.execute(_SQL_HAS_MIGRATION_TABLE).fetchone() is None:
        return 0
    last: int = conn.execute(_SQL_LAST_APPLIED).fetchone()[0]
    return last


def _apply(conn: sqlite3.Connection, migration: Migration) -> MigrationOutcome:
    conn.execute("BEGIN IMMEDIATE")
    try:
        if get_last_applied_migration(conn) >= migration.idx:
            conn.execute("COMMIT")
            return MigrationOutcome(migration, MigrationStatus.ALREADY_APPLIED)
        for statement in migration.statements():
            conn.execute(statement)
        conn.execute(_SQL_RECORD, (migration.idx, migration.name, now_timestamp()))
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.OperationalError | sqlite3.IntegrityError):
            return MigrationOutcome(migration, MigrationStatus.FAILED, error=str(exc))
        raise
    return MigrationOutcome(migration, MigrationStatus.APPLIED)


def apply_migrations(
    conn: sqlite3.Connection,
    *,
    dry_run: bool = False,
    on_outcome: Callable[[MigrationOutcome], None] | None = None,
) -> list[MigrationOutcome]:
    """Apply the pending migrations in order, each in its own transaction; stop after the
    first that fails (its outcome is the last one). With `dry_run`, report the pending
    ones as WOULD_APPLY and change nothing."""
    last_applied = get_last_applied_migration(conn)
    outcomes: list[MigrationOutcome] = []
    for migration in load_migrations():
        if dry_run:
            status = (
                MigrationStatus.ALREADY_APPLIED
                if migration.idx <= last_applied
                else MigrationStatus.WOULD_APPLY
            )
            outcome = MigrationOutcome(migration, status)
        else:
            outcome = _apply(conn, migration)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
        if outcome.status is MigrationStatus.FAILED:
            break
    return outcomes


def migrate_file(path: Path, *, dry_run: bool = False) -> list[MigrationOutcome]:
    """`parsec backend migrate --db sqlite:PATH`: create the file (and its directory) if
    missing, then apply the pending migrations. A dry run creates nothing."""
    from parsec_server.backend.storage.sqlite.database import connect, set_synchronous

    if dry_run and not path.exists():
        return [
            MigrationOutcome(migration, MigrationStatus.WOULD_APPLY)
            for migration in load_migrations()
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path, create=True)
    try:
        set_synchronous(conn, "FULL")
        return apply_migrations(conn, dry_run=dry_run)
    finally:
        conn.close()


def migrate_command(path: Path) -> str:
    """How the operator migrates the file at `path`."""
    return f"parsec backend migrate --db sqlite:{path}"


def check_migrations_applied(conn: sqlite3.Connection, path: Path) -> str | None:
    """Why the server must not start on this database (naming the fix), or None."""
    migrations = load_migrations()
    last_applied = get_last_applied_migration(conn)
    known = max((m.idx for m in migrations), default=0)
    pending = [m.file_name for m in migrations if m.idx > last_applied]
    if pending:
        if len(pending) == 1:
            what = f"migration {pending[0]} is not applied"
        else:
            what = f"migrations {', '.join(pending)} are not applied"
        return f"SQLite database {path} is not up to date: {what}; run `{migrate_command(path)}`"
    if last_applied > known:
        return (
            f"SQLite database {path} was migrated by a newer version of the server "
            f"(last applied migration: {last_applied:04d}, latest known: {known:04d})"
        )
    return None
