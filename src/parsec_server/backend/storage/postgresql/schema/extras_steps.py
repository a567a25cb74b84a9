"""The Python parts of the extras migrations, run after their SQL in the same
transaction, and what a takeover reports about the data it found."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from parsec_server.api.certificates import CertificateError, DeviceCertificate, unsecure_load
from parsec_server.backend.storage.postgresql.schema.classify import SchemaError
from parsec_server.backend.storage.postgresql.schema.progress import ProgressStep

__all__ = ["PYTHON_STEPS", "PythonStep", "backfill_verify_keys", "shared_vlob_ids"]

PythonStep = Callable[[asyncpg.Connection, ProgressStep], Awaitable[None]]

BATCH_SIZE = 1000

_SQL_COUNT_DEVICES = "SELECT count(*) FROM device WHERE verify_key IS NULL"

_SQL_DEVICES_BATCH = """
SELECT d._id, d.device_id, o.organization_id, d.device_certificate
FROM device d JOIN organization o ON o._id = d.organization
WHERE d.verify_key IS NULL AND d._id > $1
ORDER BY d._id
LIMIT $2
"""

_SQL_SET_VERIFY_KEYS = """
UPDATE device d SET verify_key = k.verify_key
FROM unnest($1::integer[], $2::bytea[]) AS k(_id, verify_key)
WHERE d._id = k._id
"""

_SQL_SHARED_VLOB_IDS = """
SELECT o.organization_id, a.vlob_id
FROM vlob_atom a
JOIN vlob_encryption_revision v ON v._id = a.vlob_encryption_revision
JOIN organization o ON o._id = a.organization
GROUP BY o.organization_id, a.vlob_id
HAVING count(DISTINCT v.realm) > 1
ORDER BY 1, 2
"""


async def backfill_verify_keys(conn: asyncpg.Connection, step: ProgressStep) -> None:
    """Fill `device.verify_key` from each device certificate (the rows Parsec 2.0.0
    wrote); the handshake then needs no parsing."""
    total: int = await conn.fetchval(_SQL_COUNT_DEVICES)
    done, last_id = 0, 0
    while True:
        rows = await conn.fetch(_SQL_DEVICES_BATCH, last_id, BATCH_SIZE)
        if not rows:
            return
        ids, keys = [], []
        for row in rows:
            try:
                certificate = unsecure_load(DeviceCertificate, row["device_certificate"])
            except CertificateError as exc:
                raise SchemaError(
                    f"cannot read the certificate of device {row['device_id']} "
                    f"(organization {row['organization_id']}): {exc}"
                ) from None
            ids.append(row["_id"])
            keys.append(bytes(certificate.verify_key))
        await conn.execute(_SQL_SET_VERIFY_KEYS, ids, keys)
        done += len(rows)
        last_id = rows[-1]["_id"]
        step.detail = f"{done} of {total} devices"


async def shared_vlob_ids(conn: asyncpg.Connection) -> list[str]:
    """Vlob ids Parsec 2.0.0 let two realms use (ours are unique per organization):
    served from the realm of their latest version, to be known by the operator."""
    rows = await conn.fetch(_SQL_SHARED_VLOB_IDS)
    return [f"{row['organization_id']}/{row['vlob_id']}" for row in rows]


# By migration file name
PYTHON_STEPS: dict[str, PythonStep] = {
    "extras/0001_server_extras.sql": backfill_verify_keys,
}
