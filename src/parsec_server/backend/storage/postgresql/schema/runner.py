"""`parsec backend migrate` and `parsec backend downgrade`.

Each run is one transaction under the migration advisory lock: classify the database,
check its catalog against the one expected for that state, refuse while other clients
are connected (unless forced), apply the steps statement by statement (with progress
lines for the long ones), check the resulting catalog, commit. Killed or failed at any
point, the database is left as it was; a dry run rolls back instead of committing.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from parsec_server.backend.storage.postgresql.schema.activity import (
    in_use_message,
    other_sessions,
)
from parsec_server.backend.storage.postgresql.schema.catalog import (
    Catalog,
    CatalogDiff,
    expected_catalog,
    read_catalog,
)
from parsec_server.backend.storage.postgresql.schema.classify import (
    EXT_PREFIX,
    DatabaseState,
    Layout,
    SchemaError,
    classify,
)
from parsec_server.backend.storage.postgresql.schema.extras_steps import (
    PYTHON_STEPS,
    PythonStep,
    shared_vlob_ids,
)
from parsec_server.backend.storage.postgresql.schema.files import (
    Migration,
    Series,
    conversion,
    describe_statement,
    load_series,
    split_statements,
)
from parsec_server.backend.storage.postgresql.schema.legacy import check_convertible
from parsec_server.backend.storage.postgresql.schema.progress import Progress

__all__ = ["MIGRATION_LOCK_KEY", "Report", "downgrade", "migrate"]

# Any constant would do as long as every runner uses the same one ("parsecMg" in ASCII).
MIGRATION_LOCK_KEY = 0x7061727365634D67

CONVERTED = "converted from the previous parsec-server layout"
WOULD_CONVERT = "would convert from the previous parsec-server layout"

# `applied` decides the level for Parsec 2.0.0 (its latest row, not the greatest
# number): strictly increasing, even within one transaction or against rows written
# with a client clock ahead of ours.
_SQL_RECORD = """
INSERT INTO {table} (_id, name, applied)
SELECT $1, $2, GREATEST(clock_timestamp(), max(applied) + interval '1 microsecond')
FROM {table}
"""

_SQL_EXTRAS_OBJECTS = r"""
WITH ns AS (SELECT current_schema()::regnamespace::oid AS oid),
rel AS (SELECT c.oid, c.relname, c.relkind FROM pg_class c, ns WHERE c.relnamespace = ns.oid)
SELECT 1 AS step, format('DROP TRIGGER %I ON %I', t.tgname, r.relname) AS sql
FROM pg_trigger t JOIN rel r ON r.oid = t.tgrelid
WHERE NOT t.tgisinternal AND t.tgname LIKE 'ext\_%' AND r.relname NOT LIKE 'ext\_%'
UNION ALL
SELECT 2, format('ALTER TABLE %I DROP CONSTRAINT %I', r.relname, con.conname)
FROM pg_constraint con JOIN rel r ON r.oid = con.conrelid
WHERE con.conname LIKE 'ext\_%' AND r.relname NOT LIKE 'ext\_%'
UNION ALL
SELECT 3, 'DROP ' || CASE relkind WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'VIEW' END
    || ' ' || string_agg(quote_ident(relname), ', ' ORDER BY relname)
FROM rel WHERE relkind IN ('v', 'm') AND relname LIKE 'ext\_%' GROUP BY relkind
UNION ALL
SELECT 4, 'DROP TABLE ' || string_agg(quote_ident(relname), ', ' ORDER BY relname)
FROM rel WHERE relkind IN ('r', 'p') AND relname LIKE 'ext\_%' HAVING count(*) > 0
UNION ALL
SELECT 5, 'DROP INDEX ' || string_agg(quote_ident(i.relname), ', ' ORDER BY i.relname)
FROM pg_index x JOIN rel i ON i.oid = x.indexrelid JOIN rel r ON r.oid = x.indrelid
WHERE i.relname LIKE 'ext\_%' AND r.relname NOT LIKE 'ext\_%'
    AND NOT EXISTS (SELECT FROM pg_constraint con WHERE con.conindid = i.oid)
HAVING count(*) > 0
UNION ALL
SELECT 6, 'DROP SEQUENCE ' || string_agg(quote_ident(s.relname), ', ' ORDER BY s.relname)
FROM rel s
WHERE s.relkind = 'S' AND s.relname LIKE 'ext\_%'
    AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.objid = s.oid AND d.deptype IN ('a', 'i')
                    AND d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass)
HAVING count(*) > 0
UNION ALL
SELECT 7, format('DROP ROUTINE %s', p.oid::regprocedure)
FROM pg_proc p, ns WHERE p.pronamespace = ns.oid AND p.proname LIKE 'ext\_%'
UNION ALL
SELECT 8, 'DROP TYPE ' || string_agg(quote_ident(t.typname), ', ' ORDER BY t.typname)
FROM pg_type t, ns
WHERE t.typnamespace = ns.oid AND t.typname LIKE 'ext\_%'
    AND (t.typtype IN ('e', 'd', 'r') OR (t.typtype = 'c' AND t.typrelid IN
         (SELECT oid FROM pg_class WHERE relkind = 'c')))
HAVING count(*) > 0
ORDER BY 1, 2
"""

_SQL_STORAGE_RESETS = """
SELECT format('ALTER TABLE %I ALTER COLUMN %I SET STORAGE %s', c.relname, a.attname,
    CASE t.typstorage WHEN 'p' THEN 'PLAIN' WHEN 'e' THEN 'EXTERNAL' WHEN 'm' THEN 'MAIN'
         ELSE 'EXTENDED' END)
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_type t ON t.oid = a.atttypid
WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY($1::text[])
    AND a.attnum > 0 AND NOT a.attisdropped AND a.attstorage <> t.typstorage
ORDER BY c.relname, a.attnum
"""

_PYTHON_STEP_DESCRIPTIONS = {
    "extras/0001_server_extras.sql": "device.verify_key from the device certificates",
}


@dataclass(frozen=True, slots=True)
class Step:
    label: str  # the file name the output shows
    statements: tuple[str, ...]
    record: tuple[str, int, str] | None = None  # (table, number, name)
    python: PythonStep | None = None


@dataclass(slots=True)
class Report:
    lines: list[str] = field(default_factory=list)  # what was (or would be) done
    notes: list[str] = field(default_factory=list)  # what the operator should know
    changed: bool = False


def _file_step(migration: Migration) -> Step:
    record = None
    if migration.series is Series.EXTRAS:
        record = ("ext_migration", migration.idx, migration.name)
    elif migration.idx >= 2:
        record = ("migration", migration.idx, migration.name)
    return Step(
        migration.file_name,
        tuple(split_statements(migration.sql)),
        record,
        PYTHON_STEPS.get(migration.file_name),
    )


class _Run:
    def __init__(self, conn: asyncpg.Connection, progress: Progress, dry_run: bool) -> None:
        self.conn = conn
        self.progress = progress
        self.dry_run = dry_run
        self.report = Report()

    async def check_catalog(self, state: DatabaseState) -> CatalogDiff:
        """The catalog must hold every object `state` has, as it has it; additional
        objects are listed in a note and left alone."""
        expected = await expected_catalog(self.conn, state.built_by())
        diff = (await read_catalog(self.conn)).diff(expected)
        if not diff.matches:
            raise SchemaError(
                f"Database does not match {state.describe()}: {_join(diff.problems())}"
            )
        additional = diff.additional_objects()
        if additional:
            self.report.notes.append(f"not managed by Parsec, left untouched: {_names(additional)}")
        return diff

    async def check_no_collision(self, before: CatalogDiff, target: Catalog) -> None:
        taken = [e.label for e in before.additional if (e.kind, e.key) in target]
        if taken:
            raise SchemaError(
                f"Database already has objects the migration creates: {_names(taken)}"
            )

    async def check_not_in_use(self, force: bool) -> None:
        count = await other_sessions(self.conn)
        if not count:
            return
        if not force and not self.dry_run:
            raise SchemaError(in_use_message(count))
        if force:
            self.report.notes.append(f"going on (--force) with {count} other connection(s)")
        else:
            self.report.notes.append(in_use_message(count))

    async def execute(self, step: Step) -> None:
        for statement in step.statements:
            async with self.progress.step(f"{step.label}: {describe_statement(statement)}"):
                try:
                    await self.conn.execute(statement)
                except asyncpg.PostgresError as exc:
                    raise SchemaError(
                        f"{step.label} failed at `{describe_statement(statement, 60)}`: "
                        f"{_one_line(exc)}"
                    ) from exc
        if step.python is not None:
            what = _PYTHON_STEP_DESCRIPTIONS.get(step.label, "Python step")
            async with self.progress.step(f"{step.label}: {what}") as progress_step:
                await step.python(self.conn, progress_step)
        if step.record is not None:
            table, idx, name = step.record
            await self.conn.execute(_SQL_RECORD.format(table=table), idx, name)
        self.report.changed = True

    async def check_result(self, before: CatalogDiff, target: Catalog, what: str) -> None:
        after = (await read_catalog(self.conn)).diff(target)
        previous = {(e.kind, e.key) for e in before.additional}
        left_over = [
            f"left over {e.label}" for e in after.additional if (e.kind, e.key) not in previous
        ]
        problems = after.problems() + left_over
        if problems:
            raise SchemaError(
                f"after {what}, the schema is not the expected one: {_join(problems)}"
            )


@contextlib.asynccontextmanager
async def _locked_transaction(
    conn: asyncpg.Connection, dry_run: bool, progress: Progress
) -> AsyncIterator[None]:
    transaction = conn.transaction()
    await transaction.start()
    try:
        async with progress.step("waiting for another migrate or downgrade to finish"):
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        yield
    except BaseException:
        # On a lost connection the server rolls back by itself: keep the first error
        with contextlib.suppress(asyncpg.InterfaceError, asyncpg.PostgresError, OSError):
            await transaction.rollback()
        raise
    if dry_run:
        await transaction.rollback()
    else:
        await transaction.commit()


async def migrate(
    conn: asyncpg.Connection,
    *,
    dry_run: bool = False,
    force: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> Report:
    """Bring the database to the Parsec 2.0.0 layout at level 5 plus our extras.

    Raises `SchemaError` when refusing or on failure (nothing changed then).
    """
    progress = Progress(on_progress)
    run = _Run(conn, progress, dry_run)
    async with _locked_transaction(conn, dry_run, progress):
        await _migrate(run, force)
    return run.report


async def _migrate(run: _Run, force: bool) -> None:
    state = await classify(run.conn)
    before = await run.check_catalog(state)
    reference = load_series(Series.REFERENCE)
    extras = load_series(Series.EXTRAS)
    lines = run.report.lines
    steps: list[Step] = []
    applied_extras = 0
    match state.layout:
        case Layout.EMPTY:
            steps += map(_file_step, reference)
        case Layout.REFERENCE:
            lines += [f"{m.file_name} (already applied)" for m in reference[: state.level]]
            steps += map(_file_step, reference[state.level :])
            applied_extras = state.extras_level
        case Layout.LEGACY:
            lines += [f"{m.file_name} (already applied)" for m in reference[: state.level]]
            steps += map(_file_step, load_series(Series.LEGACY)[state.level :])
            steps.append(_file_step(conversion()))
    lines += [f"{m.file_name} (already applied)" for m in extras[:applied_extras]]
    steps += map(_file_step, extras[applied_extras:])
    if not steps:
        return

    target = await expected_catalog(run.conn, reference + extras)
    await run.check_no_collision(before, target)
    await run.check_not_in_use(force)
    if state.layout is Layout.LEGACY:
        await check_convertible(run.conn, state.level)
    if state.layout is Layout.REFERENCE and applied_extras == 0:
        async with run.progress.step("looking for vlob ids used by several realms"):
            shared = await shared_vlob_ids(run.conn)
        if shared:
            run.report.notes.append(
                "vlob ids used by several realms (served from the realm of their latest "
                f"version): {_names(shared, limit=20)}"
            )

    for step in steps:
        if not run.dry_run:
            await run.execute(step)
        lines.append(f"{step.label} ✔")
    if not run.dry_run:
        await run.check_result(before, target, "migrating")
    if state.layout is Layout.LEGACY:
        lines.append(WOULD_CONVERT if run.dry_run else CONVERTED)


async def downgrade(
    conn: asyncpg.Connection,
    *,
    dry_run: bool = False,
    force: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> Report:
    """Hand the database back in the Parsec 2.0.0 layout: drop our extras (every `ext_*`
    object, whichever extras file created it, and the columns they add to Parsec 2.0.0's
    tables), or convert our legacy layout.

    Raises `SchemaError` when refusing or on failure (nothing changed then).
    """
    progress = Progress(on_progress)
    run = _Run(conn, progress, dry_run)
    async with _locked_transaction(conn, dry_run, progress):
        await _downgrade(run, force)
    return run.report


async def _downgrade(run: _Run, force: bool) -> None:
    state = await classify(run.conn)
    reference = load_series(Series.REFERENCE)
    lines = run.report.lines
    if state.layout is Layout.EMPTY:
        raise SchemaError("Database has no Parsec schema: nothing to hand back")
    if state.layout is Layout.REFERENCE and state.extras_level == 0:
        text = f"nothing to do: the database is in the Parsec 2.0.0 layout at level {state.level}"
        if state.level < len(reference):
            text += " (Parsec 2.0.0's `parsec backend migrate` applies the rest)"
        lines.append(text)
        return

    before = await run.check_catalog(state)
    target = await expected_catalog(run.conn, reference)
    if state.layout is Layout.LEGACY:
        steps = [_file_step(m) for m in load_series(Series.LEGACY)[state.level :]]
        steps.append(_file_step(conversion()))
        step_lines = [f"{step.label} ✔" for step in steps]
    else:
        steps = [await _extras_removal(run.conn, reference)]
        step_lines = [f"{name} removed ✔" for name in reversed(state.extras_names)]
    await run.check_not_in_use(force)
    if state.layout is Layout.LEGACY:
        await check_convertible(run.conn, state.level)

    if run.dry_run:
        lines += step_lines
        if state.layout is Layout.REFERENCE:
            lines += [f"  {statement}" for statement in steps[0].statements]
    else:
        for step in steps:
            await run.execute(step)
        lines += step_lines
        await run.check_result(before, target, "downgrading")
    if state.layout is Layout.LEGACY:
        lines.append(WOULD_CONVERT if run.dry_run else CONVERTED)
    last = reference[-1]
    handed_back = f"Parsec 2.0.0 schema, {last.file_name.removesuffix('.sql')}"
    if run.dry_run:
        lines.append(f"Database would be handed back: {handed_back}")
    else:
        lines.append(f"Database handed back: {handed_back}")


async def _extras_removal(conn: asyncpg.Connection, reference: list[Migration]) -> Step:
    """The statements dropping our extras, found in the catalog: objects by their `ext_`
    prefix; columns and storage modes by comparison with Parsec 2.0.0's catalog."""
    statements = [row["sql"] for row in await conn.fetch(_SQL_EXTRAS_OBJECTS)]
    expected = await expected_catalog(conn, reference)
    with_extras = await expected_catalog(conn, reference + load_series(Series.EXTRAS))
    current = await read_catalog(conn)
    for kind, key in with_extras:
        entry = with_extras[kind, key]
        if (
            kind == "column"
            and (kind, key) not in expected
            and entry.table in expected.tables()
            and (kind, key) in current
        ):
            column = key.split(".", 1)[1]
            statements.append(f"ALTER TABLE {entry.table} DROP COLUMN {column}")
    tables = sorted(t for t in expected.tables() if not t.startswith(EXT_PREFIX))
    statements += [row[0] for row in await conn.fetch(_SQL_STORAGE_RESETS, tables)]
    return Step("extras", tuple(statements))


def _names(items: list[str], limit: int = 10) -> str:
    return _join(items, limit, ", ")


def _join(items: list[str], limit: int = 10, sep: str = "; ") -> str:
    text = sep.join(items[:limit])
    if len(items) > limit:
        text += f" (and {len(items) - limit} more)"
    return text


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
