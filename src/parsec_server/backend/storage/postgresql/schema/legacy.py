"""What must hold before `legacy/to_reference.sql` runs: the data of our earlier
layout fits the narrower columns of Parsec 2.0.0's."""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from parsec_server.backend.storage.postgresql.schema.classify import SchemaError

__all__ = ["check_convertible"]

MAX_DEVICE_LABEL = 254
MAX_CLAIMER_EMAIL = 255
MAX_ID = 2**31 - 1
_SHOWN_ROWS = 10

# 64-bit ids in our layout, 32-bit in Parsec 2.0.0's (vlob_encryption_revision is rebuilt)
_BIGINT_ID_TABLES = (
    "message",
    "realm_user_role",
    "vlob_atom",
    "realm_vlob_update",
    "block",
    "block_data",
)

_SQL_LONG_DEVICE_LABELS = """
SELECT o.organization_id || '/' || d.device_id
FROM device d JOIN organization o ON o._id = d.organization
WHERE length(d.device_label) > $1 ORDER BY d._id LIMIT $2
"""

_SQL_LONG_CLAIMER_EMAILS = """
SELECT o.organization_id || '/' || i.token
FROM invitation i JOIN organization o ON o._id = i.organization
WHERE length(i.claimer_email) > $1 ORDER BY i._id LIMIT $2
"""


async def check_convertible(conn: asyncpg.Connection, level: int) -> None:
    """Raises `SchemaError` listing the rows that would not fit; `level` is the legacy
    level the database is at (columns of later levels hold no data yet)."""
    if level >= 5:
        rows = await conn.fetch(_SQL_LONG_DEVICE_LABELS, MAX_DEVICE_LABEL, _SHOWN_ROWS + 1)
        if rows:
            raise SchemaError(
                f"cannot convert: device labels longer than {MAX_DEVICE_LABEL} characters "
                f"(devices {_shown([r[0] for r in rows])}); shorten them first"
            )
    if level >= 4:
        rows = await conn.fetch(_SQL_LONG_CLAIMER_EMAILS, MAX_CLAIMER_EMAIL, _SHOWN_ROWS + 1)
        if rows:
            raise SchemaError(
                f"cannot convert: invitation emails longer than {MAX_CLAIMER_EMAIL} characters "
                f"(invitations {_shown([r[0] for r in rows])}); cancel them first"
            )
    for table in _BIGINT_ID_TABLES:
        # The sequence covers rows deleted since; max(_id) a sequence reset by hand
        highest: int = await conn.fetchval(
            f"SELECT GREATEST((SELECT max(_id) FROM {table}), "
            f"(SELECT last_value FROM {table}__id_seq))"
        )
        if highest > MAX_ID:
            raise SchemaError(
                f"cannot convert: table {table} has ids up to {highest}, beyond the 32-bit "
                "ids of the Parsec 2.0.0 layout"
            )


def _shown(names: list[str]) -> str:
    if len(names) > _SHOWN_ROWS:
        return ", ".join(names[:_SHOWN_ROWS]) + " and more"
    return ", ".join(names)
