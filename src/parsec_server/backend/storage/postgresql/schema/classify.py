"""What a database is: empty, Parsec 2.0.0's layout at some level (with our extras at
some level), the layout of our earlier releases at some level, or something we refuse
to touch."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from parsec_server.backend.storage.postgresql.schema.files import Migration, Series, load_series

__all__ = [
    "EXT_PREFIX",
    "PARSEC_ENUMS",
    "PARSEC_TABLES",
    "DatabaseState",
    "Layout",
    "SchemaError",
    "classify",
]

# The tables and enum types of the Parsec 2.0.0 layout (ours has the same names)
PARSEC_TABLES = frozenset(
    {
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
        "vlob_encryption_revision",
        "vlob_atom",
        "realm_vlob_update",
        "block",
        "block_data",
        "migration",
    }
)
PARSEC_ENUMS = frozenset(
    {
        "maintenance_type",
        "realm_role",
        "invitation_type",
        "invitation_deleted_reason",
        "invitation_conduit_state",
        "user_profile",
    }
)
# Every object our extras create is named so
EXT_PREFIX = "ext_"

# Columns present at every level of one layout and at no level of the other
_REFERENCE_FINGERPRINT = frozenset({"user_.user_certifier", "vlob_atom.vlob_encryption_revision"})
_LEGACY_FINGERPRINT = frozenset({"user_.certifier", "realm.checkpoint", "vlob_atom.realm"})

# A fresh snapshot of the catalog (pg_class, not to_regclass(): the latter may not see a
# table a concurrent runner committed while we waited for the lock).
_SQL_INSPECT = r"""
WITH ns AS (SELECT current_schema()::regnamespace::oid AS oid)
SELECT
    ARRAY(SELECT c.relname::text FROM pg_class c, ns
          WHERE c.relnamespace = ns.oid AND c.relkind IN ('r', 'p') ORDER BY 1) AS tables,
    ARRAY(SELECT t.typname::text FROM pg_type t, ns
          WHERE t.typnamespace = ns.oid AND t.typtype = 'e' ORDER BY 1) AS enums,
    ARRAY(SELECT c.relname::text FROM pg_class c, ns
          WHERE c.relnamespace = ns.oid AND c.relname LIKE 'ext\_%' ORDER BY 1) AS ext_relations,
    ARRAY(SELECT c.relname || '.' || a.attname FROM pg_class c
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped, ns
          WHERE c.relnamespace = ns.oid AND c.relkind = 'r'
            AND c.relname IN ('user_', 'device', 'realm', 'vlob_atom')) AS columns
"""


class SchemaError(Exception):
    """Migrate or downgrade refuses the database, or failed and rolled back: `str(exc)` is
    the one-line message for the operator."""


class Layout(enum.Enum):
    EMPTY = "empty"  # no Parsec object (maybe other applications' tables)
    REFERENCE = "reference"  # Parsec 2.0.0's, maybe with our extras
    LEGACY = "legacy"  # our earlier releases'


@dataclass(frozen=True, slots=True)
class DatabaseState:
    layout: Layout
    level: int = 0  # of the numbered migrations (`migration` table)
    extras_level: int = 0  # of our extras (`ext_migration` table)
    extras_names: tuple[str, ...] = ()  # file names of the applied extras, by number
    foreign_tables: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        match self.layout:
            case Layout.EMPTY:
                return "an empty database"
            case Layout.LEGACY:
                return f"the previous parsec-server layout at level {self.level}"
            case Layout.REFERENCE:
                text = f"the Parsec 2.0.0 layout at level {self.level}"
                if self.extras_level:
                    text += f" with the server extras at level {self.extras_level}"
                return text

    def built_by(self) -> list[Migration]:
        """The migration files that build this state's schema from an empty one."""
        match self.layout:
            case Layout.EMPTY:
                return []
            case Layout.LEGACY:
                return load_series(Series.LEGACY)[: self.level]
            case Layout.REFERENCE:
                return (
                    load_series(Series.REFERENCE)[: self.level]
                    + load_series(Series.EXTRAS)[: self.extras_level]
                )


async def classify(conn: asyncpg.Connection) -> DatabaseState:
    """Raises `SchemaError` for a database that is none of the known states."""
    found = await conn.fetchrow(_SQL_INSPECT)
    tables: list[str] = list(found["tables"])
    enums: list[str] = list(found["enums"])
    ext_relations: list[str] = list(found["ext_relations"])
    ext_enums = [name for name in enums if name.startswith(EXT_PREFIX)]
    ours = (
        [t for t in tables if t in PARSEC_TABLES]
        + [e for e in enums if e in PARSEC_ENUMS]
        + ext_relations
        + ext_enums
    )
    foreign = tuple(t for t in tables if t not in PARSEC_TABLES and not t.startswith(EXT_PREFIX))
    if not ours:
        return DatabaseState(Layout.EMPTY, foreign_tables=foreign)
    if "organization" not in tables:
        raise SchemaError(
            "Unknown database layout: Parsec objects without an `organization` table "
            f"(found {_list(ours)})"
        )

    columns = set(found["columns"])
    if columns >= _REFERENCE_FINGERPRINT and not columns & _LEGACY_FINGERPRINT:
        layout = Layout.REFERENCE
    elif columns >= _LEGACY_FINGERPRINT and not columns & _REFERENCE_FINGERPRINT:
        layout = Layout.LEGACY
    else:
        raise SchemaError(
            "Unknown database layout: its `user_`, `realm` and `vlob_atom` tables match "
            "neither Parsec 2.0.0 nor the previous parsec-server layout"
        )

    level = 1
    if "migration" in tables:
        level = await _read_level(conn, "migration", load_series(Series.REFERENCE), first=2)

    has_extras_table = "ext_migration" in tables
    if not has_extras_table and (ext_relations or ext_enums):
        raise SchemaError(
            f"Unknown database layout: server extras objects ({_list(ext_relations + ext_enums)}) "
            "without their `ext_migration` table"
        )
    extras_level = 0
    extras_names: tuple[str, ...] = ()
    if has_extras_table:
        if layout is not Layout.REFERENCE or level < len(load_series(Series.REFERENCE)):
            raise SchemaError(
                "Unknown database layout: server extras (`ext_migration`) on "
                f"{DatabaseState(layout, level).describe()}"
            )
        extras = load_series(Series.EXTRAS)
        extras_level = await _read_level(conn, "ext_migration", extras, first=1)
        extras_names = tuple(m.file_name for m in extras[:extras_level])
    return DatabaseState(layout, level, extras_level, extras_names, foreign)


async def _read_level(
    conn: asyncpg.Connection, table: str, known: list[Migration], *, first: int
) -> int:
    """The level recorded in `table` (`migration` or `ext_migration`): its greatest
    number, once every row is checked to be one of `known`, from `first` on, no gap."""
    rows = await conn.fetch(f"SELECT _id, name FROM {table} ORDER BY _id")
    if not rows:
        raise SchemaError(
            f"Unknown database layout: its `{table}` table is empty (no migration recorded)"
        )
    names = {m.idx: m.name for m in known}
    prefix = known[0].series.prefix if known else ""
    for row in rows:
        if names.get(row["_id"]) != row["name"]:
            raise SchemaError(
                "Database was migrated by a newer or unknown version "
                f"(migration {prefix}{row['_id']:04d}_{row['name']})"
            )
    ids = [row["_id"] for row in rows]
    if ids != list(range(first, ids[-1] + 1)):
        raise SchemaError(
            f"Unknown database layout: `{table}` records migrations "
            f"{', '.join(str(i) for i in ids)}, not {first} to {ids[-1]} in a row"
        )
    level: int = ids[-1]
    return level


def _list(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    if len(names) > limit:
        shown += f" and {len(names) - limit} more"
    return shown
