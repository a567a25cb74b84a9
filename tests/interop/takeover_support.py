"""Helpers of `test_takeover`: one database and block store served in turn by the
reference Parsec 2.0.0 server and by ours (each started and stopped like an operator
would), a logical snapshot of the database's rows, and its catalog.
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from tests.fixtures import free_port
from tests.fixtures.postgresql import create_empty_database, drop_database, run_async
from tests.interop.conftest import (
    ServerProcess,
    TlsFiles,
    accepts_tls,
    clean_environment,
    describe,
    guide_environment,
    our_parsec,
    run_command,
)

Which = Literal["reference", "ours"]

MIGRATE_TIMEOUT = 120.0

# Appendix A of docs/plans/drop-in.md: the schema objects that matter, one line each.
CATALOG_SQL = """
SELECT 'col', table_name || '.' || column_name || ' ' || data_type
       || coalesce('(' || character_maximum_length || ')', '') || ' ' || udt_name
       || ' null=' || is_nullable
       || ' def=' || coalesce(regexp_replace(column_default, '_seq.*', '_seq'), '')
       || ' pos=' || ordinal_position
FROM information_schema.columns WHERE table_schema = current_schema()
UNION ALL SELECT 'con', conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = current_schema()::regnamespace
UNION ALL SELECT 'idx', indexdef FROM pg_indexes WHERE schemaname = current_schema()
UNION ALL SELECT 'seq', sequencename || ' ' || data_type FROM pg_sequences
WHERE schemaname = current_schema()
UNION ALL SELECT 'enum', t.typname || ' ' || string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY t.typname
UNION ALL SELECT 'storage', attrelid::regclass || '.' || attname || ' ' || attstorage::text
FROM pg_attribute
WHERE attrelid IN (SELECT oid FROM pg_class
                   WHERE relnamespace = current_schema()::regnamespace AND relkind = 'r')
  AND attnum > 0 AND NOT attisdropped
ORDER BY 1, 2
"""

TABLES_SQL = """
SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1
"""

# Our additions (docs/plans/drop-in.md §5.3) are all named `ext_*`, but for one column.
OUR_COLUMNS = {"device": frozenset({"verify_key"})}


# --- The database's content ---------------------------------------------------------------

Row = dict[str, str | None]
Snapshot = dict[str, list[Row]]


def _cell(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return f"sha256:{hashlib.sha256(value).hexdigest()}"
    return str(value)


async def _snapshot(url: str) -> Snapshot:
    conn = await asyncpg.connect(url)
    try:
        tables = [row[0] for row in await conn.fetch(TABLES_SQL)]
        snapshot: Snapshot = {}
        for table in tables:
            if table.startswith("ext_"):
                continue
            rows = await conn.fetch(f'SELECT * FROM "{table}" ORDER BY _id')
            snapshot[table] = [{key: _cell(value) for key, value in row.items()} for row in rows]
        return snapshot
    finally:
        await conn.close()


def logical_snapshot(url: str) -> Snapshot:
    """Every table but ours (`ext_*`): its rows ordered by `_id`, each column as text, blobs
    as their SHA-256."""
    return run_async(_snapshot(url))


def changed_rows(
    before: Snapshot,
    after: Snapshot,
    *,
    ignored: Mapping[str, frozenset[str]] = OUR_COLUMNS,
    new_rows_allowed: bool = False,
) -> list[str]:
    """What happened to the rows of `before` in `after`: rows gone or changed (columns of
    `ignored` left out, and columns `before` did not have), and, unless
    `new_rows_allowed`, rows that were added. Empty when nothing did."""
    differences = []
    for table, rows in before.items():
        if table not in after:
            differences.append(f"table {table} is gone")
            continue
        skip = ignored.get(table, frozenset())
        by_id = {row["_id"]: row for row in after[table]}
        for row in rows:
            now = by_id.pop(row["_id"], None)
            if now is None:
                differences.append(f"{table} row {row} is gone")
                continue
            changes = {
                column: (value, now.get(column))
                for column, value in row.items()
                if column not in skip and now.get(column) != value
            }
            if changes:
                differences.append(f"{table} _id={row['_id']} changed: {changes}")
        if by_id and not new_rows_allowed:
            differences.append(f"{table} has new rows: {list(by_id.values())}")
    for table in after.keys() - before.keys():
        differences.append(f"new table {table}")
    return differences


async def _fetch(url: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(query, *args)
        return rows
    finally:
        await conn.close()


def fetch(url: str, query: str, *args: object) -> list[asyncpg.Record]:
    return run_async(_fetch(url, query, *args))


def catalog(url: str) -> list[str]:
    """The schema as the lines of the plan's catalog query (columns with their position)."""
    return [f"{row[0]} {row[1]}" for row in fetch(url, CATALOG_SQL)]


def fresh_reference_catalog(postgresql_url: str, reference_venv: Path, folder: Path) -> list[str]:
    """The catalog of a new database migrated by the reference's `parsec backend migrate`."""
    url = run_async(create_empty_database(postgresql_url))
    try:
        migrate = run_command(
            [reference_venv / "bin" / "parsec", "backend", "migrate", "--db", url],
            clean_environment(TMPDIR=str(folder)),
            cwd=folder,
            timeout=MIGRATE_TIMEOUT,
        )
        assert migrate.returncode == 0, describe(migrate)
        return catalog(url)
    finally:
        run_async(drop_database(postgresql_url, url))


# --- One database, two servers ------------------------------------------------------------


@dataclass
class Deployment:
    """A database (and block store) served by one server at a time, the reference or
    ours, always on the same address: the clients' devices keep working across switches.
    Every command and server run is kept for the failure report."""

    postgresql_url: str
    database_url: str
    blockstore: str  # POSTGRESQL or S3
    reference_venv: Path
    tls: TlsFiles
    folder: Path
    env: dict[str, str]
    port: int
    administration_token: str
    running: tuple[Which, ServerProcess] | None = None
    history: list[tuple[str, str]] = field(default_factory=list)  # (what, output)
    _runs: int = 0

    @classmethod
    def create(
        cls,
        postgresql_url: str,
        blockstore: str,
        reference_venv: Path,
        tls: TlsFiles,
        folder: Path,
        **env_overrides: str,
    ) -> Deployment:
        """A new empty database; `env_overrides` complete the guide's variables (e.g. the
        S3 `PARSEC_BLOCKSTORE`)."""
        database_url = run_async(create_empty_database(postgresql_url))
        port = free_port()
        token = f"Takeover-{secrets.token_hex(8)}"
        env = guide_environment(database_url, port, token, tls, folder, **env_overrides)
        return cls(
            postgresql_url=postgresql_url,
            database_url=database_url,
            blockstore=blockstore,
            reference_venv=reference_venv,
            tls=tls,
            folder=folder,
            env=env,
            port=port,
            administration_token=token,
        )

    @property
    def addr(self) -> str:
        return f"parsec://localhost:{self.port}"

    def program(self, which: Which) -> Path:
        return self.reference_venv / "bin" / "parsec" if which == "reference" else our_parsec()

    def command(self, which: Which, *args: str) -> subprocess.CompletedProcess[str]:
        """`parsec backend ARGS` of `which`, with the deployment's variables."""
        result = run_command(
            [self.program(which), "backend", *args],
            self.env,
            cwd=self.folder,
            timeout=MIGRATE_TIMEOUT,
        )
        self.history.append((f"{which} backend {' '.join(args)}", describe(result)))
        return result

    def start(self, which: Which) -> None:
        assert self.running is None, f"{self.running[0]} still runs"
        self._runs += 1
        log_dir = self.folder / f"run-{self._runs}-{which}"
        log_dir.mkdir()
        process = ServerProcess(
            [self.program(which), "backend", "run"],
            self.env,
            log_dir,
            ready=accepts_tls(self.port, self.tls),
            cwd=self.folder,
        )
        self.running = (which, process)
        try:
            process.start()
        except BaseException:
            self.running = None
            self.history.append((f"{which} backend run", process.output))
            raise

    def stop(self) -> int | None:
        """Ctrl-C (then kill); the exit code, None if it had to be killed."""
        assert self.running is not None, "no server runs"
        which, process = self.running
        self.running = None
        code = process.stop()
        self.history.append((f"{which} backend run (exit code {code})", process.output))
        return code

    def close(self) -> None:
        if self.running is not None:
            self.stop()
        run_async(drop_database(self.postgresql_url, self.database_url))

    def report_sections(self) -> list[tuple[str, str]]:
        sections = list(self.history)
        if self.running is not None:
            which, process = self.running
            sections.append((f"{which} backend run (running)", process.output))
        return sections
