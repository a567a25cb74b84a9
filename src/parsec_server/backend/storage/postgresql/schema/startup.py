"""Whether the server can run on a database: one cheap query at start-up (and for the
readiness probe), never a catalog comparison (that is `migrate`'s job)."""

from __future__ import annotations

import html
from dataclasses import dataclass

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from parsec_server.backend.storage.postgresql.schema.classify import PARSEC_TABLES
from parsec_server.backend.storage.postgresql.schema.files import Migration, Series, load_series

__all__ = ["SchemaLevels", "read_schema_levels"]

# The rows of `migration` and `ext_migration` read through query_to_xml(), which runs
# its query only when the table exists: one round trip whatever the database holds.
_SQL_LEVELS = r"""
WITH ns AS (SELECT current_schema()::regnamespace::oid AS oid),
t AS (SELECT c.oid, c.relname FROM pg_class c, ns
      WHERE c.relnamespace = ns.oid AND c.relkind IN ('r', 'p'))
SELECT
    EXISTS (SELECT FROM t WHERE relname = ANY($1::text[])) AS has_parsec_tables,
    EXISTS (SELECT FROM t JOIN pg_attribute a ON a.attrelid = t.oid
            WHERE t.relname = 'user_' AND a.attname = 'user_certifier'
                AND NOT a.attisdropped) AS reference_layout,
    EXISTS (SELECT FROM t JOIN pg_attribute a ON a.attrelid = t.oid
            WHERE t.relname = 'realm' AND a.attname = 'checkpoint'
                AND NOT a.attisdropped) AS legacy_layout,
    CASE WHEN EXISTS (SELECT FROM t WHERE relname = 'migration') THEN
        COALESCE((xpath('/row/v/text()', query_to_xml(
            'SELECT string_agg(_id || '':'' || name, '','' ORDER BY _id) AS v FROM migration',
            false, true, '')))[1]::text, '')
    END AS migrations,
    CASE WHEN EXISTS (SELECT FROM t WHERE relname = 'ext_migration') THEN
        COALESCE((xpath('/row/v/text()', query_to_xml(
            'SELECT string_agg(_id || '':'' || name, '','' ORDER BY _id) AS v FROM ext_migration',
            false, true, '')))[1]::text, '')
    END AS extras
"""

_MIGRATE = "run `parsec backend migrate`"


@dataclass(frozen=True, slots=True)
class SchemaLevels:
    has_parsec_tables: bool
    reference_layout: bool
    legacy_layout: bool
    migrations: tuple[tuple[int, str], ...] | None  # None: no `migration` table
    extras: tuple[tuple[int, str], ...] | None  # None: no `ext_migration` table

    @property
    def level(self) -> int:
        if self.migrations is None:
            return 1 if self.has_parsec_tables else 0
        return max((idx for idx, _ in self.migrations), default=0)

    @property
    def extras_level(self) -> int:
        return max((idx for idx, _ in self.extras or ()), default=0)

    def newer_extras(self) -> bool:
        """Migrated further by a newer parsec-server (rolling upgrade in progress)."""
        return self.extras_level > len(load_series(Series.EXTRAS))

    def problem(self) -> str | None:
        """Why the server cannot run on this database (naming the fix), None if it can."""
        if not self.has_parsec_tables:
            return f"Database has no Parsec schema: {_MIGRATE}"
        if self.legacy_layout and not self.reference_layout:
            return (
                f"Database is in the previous parsec-server layout: {_MIGRATE} (conversion needed)"
            )
        if not self.reference_layout or self.legacy_layout:
            return f"Database layout is unknown: {_MIGRATE}, which says what is wrong"
        unknown = _unknown(self.migrations or (), load_series(Series.REFERENCE), "")
        if unknown is not None or self.migrations == ():
            return (
                f"Database was migrated by a newer or unknown version ({unknown or 'empty'}):"
                " use the version of Parsec that migrated it"
            )
        unknown = _unknown(self.extras or (), load_series(Series.EXTRAS), "extras/")
        if unknown is not None:
            return (
                f"Database was migrated by a newer version of parsec-server ({unknown}): "
                "upgrade parsec-server"
            )
        reference, extras = len(load_series(Series.REFERENCE)), len(load_series(Series.EXTRAS))
        if self.level < reference or self.extras_level < extras:
            return (
                f"Database is not up to date (Parsec 2.0.0 layout at level {self.level} of "
                f"{reference}, server extras at level {self.extras_level} of {extras}): "
                f"{_MIGRATE}"
            )
        return None


def _unknown(rows: tuple[tuple[int, str], ...], known: list[Migration], prefix: str) -> str | None:
    names = {m.idx: m.name for m in known}
    for idx, name in rows:
        if names.get(idx) != name:
            return f"migration {prefix}{idx:04d}_{name}"
    return None


def _rows(raw: str | None) -> tuple[tuple[int, str], ...] | None:
    if raw is None:
        return None
    rows = []
    for item in html.unescape(raw).split(","):
        if item:
            idx, _, name = item.partition(":")
            rows.append((int(idx), name))
    return tuple(rows)


async def read_schema_levels(conn: asyncpg.Connection) -> SchemaLevels:
    row = await conn.fetchrow(_SQL_LEVELS, sorted(PARSEC_TABLES))
    return SchemaLevels(
        has_parsec_tables=row["has_parsec_tables"],
        reference_layout=row["reference_layout"],
        legacy_layout=row["legacy_layout"],
        migrations=_rows(row["migrations"]),
        extras=_rows(row["extras"]),
    )
