"""Building databases in the Parsec 2.0.0 layout (with the reference's own SQL files, run
from its installed virtualenv, never copied) and in our legacy layout, with data, for the
migrate / downgrade tests."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
from nacl.signing import SigningKey

from parsec_server.api.certificates import DeviceCertificate, sign_certificate
from parsec_server.api.codec import DateTime
from parsec_server.backend.storage.postgresql.schema.activity import TOOL_APPLICATION_NAME
from parsec_server.backend.storage.postgresql.schema.catalog import read_catalog
from parsec_server.backend.storage.postgresql.schema.files import (
    Series,
    load_series,
    split_statements,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = REPO_ROOT / "scripts" / "reference-parsec"
REFERENCE_VENV_ENVVAR = "PARSEC_REFERENCE_VENV"
DEFAULT_REFERENCE_VENV = Path("/tmp/parsec-reference-2.0.0")

REFERENCE_FILE_NAMES = [
    "0001_initial.sql",
    "0002_add_migration_table.sql",
    "0003_human_handle.sql",
    "0004_invite.sql",
    "0005_redacted_certificates.sql",
]
ALREADY_APPLIED = [f"{name} (already applied)" for name in REFERENCE_FILE_NAMES]
APPLIED = [f"{name} ✔" for name in REFERENCE_FILE_NAMES]
# The extras are ours and grow with the server (`migrations/extras/`): read from the
# package, so that a new extras file needs no change here.
EXTRAS_FILE_NAMES = [m.file_name for m in load_series(Series.EXTRAS)]
EXTRAS_ALREADY_APPLIED = [f"{name} (already applied)" for name in EXTRAS_FILE_NAMES]
EXTRAS_APPLIED = [f"{name} ✔" for name in EXTRAS_FILE_NAMES]
EXTRAS_REMOVED = [f"{name} removed ✔" for name in reversed(EXTRAS_FILE_NAMES)]
NOW = datetime(2021, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def reference_venv() -> Path:
    """The reference Parsec 2.0.0 virtualenv (`$PARSEC_REFERENCE_VENV`, else the one
    scripts/reference-parsec builds). These tests fail without it, they never skip."""
    venv = Path(os.environ.get(REFERENCE_VENV_ENVVAR) or DEFAULT_REFERENCE_VENV)
    if not (venv / "bin" / "parsec").exists():
        pytest.fail(
            f"The reference Parsec 2.0.0 is needed in {venv}: build it with "
            f"`bash {SETUP_SCRIPT} {venv}` (or set {REFERENCE_VENV_ENVVAR})",
            pytrace=False,
        )
    return venv


def reference_sql_files() -> list[Path]:
    venv = reference_venv()
    found = sorted(venv.glob("lib/python*/site-packages/parsec/backend/postgresql/migrations"))
    if not found:
        pytest.fail(f"No parsec/backend/postgresql/migrations in {venv}", pytrace=False)
    files = sorted(found[0].glob("[0-9][0-9][0-9][0-9]_*.sql"))
    assert [f.name for f in files] == REFERENCE_FILE_NAMES
    return files


def run_reference_migrate(url: str, *args: str) -> list[str]:
    """The reference's own `parsec backend migrate`: its output lines after the spinner."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARSEC_", "PYTHON"))}
    result = subprocess.run(
        [str(reference_venv() / "bin" / "parsec"), "backend", "migrate", "--db", url, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd="/",
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if ".sql" in line]


@asynccontextmanager
async def connect(
    url: str, application_name: str | None = None
) -> AsyncIterator[asyncpg.Connection]:
    settings = {"application_name": application_name} if application_name else None
    conn = await asyncpg.connect(url, server_settings=settings)
    try:
        yield conn
    finally:
        await conn.close()


def tool_connect(url: str) -> Any:
    """A connection as `parsec backend migrate` makes (not counted as a user)."""
    return connect(url, TOOL_APPLICATION_NAME)


async def _record(conn: asyncpg.Connection, idx: int, name: str) -> None:
    if idx >= 2:
        await conn.execute(
            "INSERT INTO migration (_id, name, applied) VALUES ($1, $2, clock_timestamp())",
            idx,
            name,
        )


async def build_reference(conn: asyncpg.Connection, level: int) -> None:
    """Parsec 2.0.0's schema at `level`, as its `migrate` leaves it (its files, its rows)."""
    for path in reference_sql_files()[:level]:
        idx, _, name = path.stem.partition("_")
        async with conn.transaction():
            await conn.execute(path.read_text(encoding="utf-8"))
            await _record(conn, int(idx), name)


async def build_ours(conn: asyncpg.Connection, series: Series, level: int) -> None:
    """Our files of `series` up to `level`, recorded as our runner did."""
    for migration in load_series(series)[:level]:
        async with conn.transaction():
            for statement in split_statements(migration.sql):
                await conn.execute(statement)
            await _record(conn, migration.idx, migration.name)


async def catalog(conn: asyncpg.Connection, *, ordered: bool = True) -> list[str]:
    return (await read_catalog(conn)).rows(ordered=ordered)


async def data_snapshot(conn: asyncpg.Connection) -> dict[str, list[str]]:
    """Every row of every table, by `_id` (or all columns), blobs hashed."""
    tables = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1"
    )
    snapshot = {}
    for (table,) in tables:
        rows = await conn.fetch(f'SELECT * FROM "{table}" ORDER BY 1')
        snapshot[table] = [
            repr({k: _digest(v) for k, v in row.items() if k != "applied"}) for row in rows
        ]
    return snapshot


def _digest(value: Any) -> Any:
    if isinstance(value, bytes):
        return hashlib.sha256(value).hexdigest()[:16]
    return value


def pg_dump_schema(url: str) -> str:
    result = subprocess.run(
        ["pg_dump", "--schema-only", "--no-owner", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # Random per-run keys of recent pg_dump versions
    return re.sub(r"^\\(un)?restrict .*$", "", result.stdout, flags=re.MULTILINE)


@dataclass
class Device:
    signing_key: SigningKey
    certificate: bytes


def device_certificate(device_id: str, label: str | None = None) -> Device:
    signing_key = SigningKey.generate()
    certificate = DeviceCertificate(
        author=None,
        timestamp=DateTime(NOW),
        device_id=device_id,
        verify_key=bytes(signing_key.verify_key),
        device_label=label,
    )
    return Device(signing_key, sign_certificate(certificate, SigningKey.generate()))


# --- Data -------------------------------------------------------------------------------


@dataclass
class ReferenceData:
    verify_keys: dict[str, bytes]  # device_id -> verify key
    shared_vlob_id: str


async def fill_reference(conn: asyncpg.Connection) -> ReferenceData:
    """Rows as Parsec 2.0.0 writes them at level 5: two organizations (one not
    bootstrapped), users, devices with real certificates, duplicated message indexes,
    a realm mid re-encryption (old atoms plus copies), a vlob id used in two realms,
    blocks and a pending invitation."""
    org = await conn.fetchval(
        "INSERT INTO organization (organization_id, bootstrap_token, root_verify_key) "
        "VALUES ('Org', 'token', '\\x00') RETURNING _id"
    )
    await conn.execute(
        "INSERT INTO organization (organization_id, bootstrap_token) VALUES ('Org2', 'token2')"
    )
    human = await conn.fetchval(
        "INSERT INTO human (organization, email, label) VALUES ($1, 'a@x.org', 'Alice') "
        "RETURNING _id",
        org,
    )
    users, devices, keys = {}, {}, {}
    for user_id, profile, human_id in (("alice", "ADMIN", human), ("bob", "STANDARD", None)):
        users[user_id] = await conn.fetchval(
            "INSERT INTO user_ (organization, user_id, user_certificate, created_on, human, "
            "redacted_user_certificate, profile) VALUES ($1, $2, $3, $4, $5, $3, $6) "
            "RETURNING _id",
            org,
            user_id,
            f"{user_id} cert".encode(),
            NOW,
            human_id,
            profile,
        )
        device = device_certificate(f"{user_id}@dev1", label="laptop")
        keys[f"{user_id}@dev1"] = bytes(device.signing_key.verify_key)
        devices[user_id] = await conn.fetchval(
            "INSERT INTO device (organization, user_, device_id, device_certificate, "
            "created_on, redacted_device_certificate, device_label) "
            "VALUES ($1, $2, $3, $4, $5, $4, 'laptop') RETURNING _id",
            org,
            users[user_id],
            f"{user_id}@dev1",
            device.certificate,
            NOW,
        )
    # Parsec 2.0.0 counts without a lock: duplicates are possible
    for index in (1, 2, 2, 3):
        await conn.execute(
            "INSERT INTO message (organization, recipient, timestamp, index, sender, body) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            org,
            users["bob"],
            NOW,
            index,
            devices["alice"],
            f"message {index}".encode(),
        )
    realms, revisions = {}, {}
    for name, revision, in_maintenance in (("r1", 1, False), ("r2", 2, True)):
        realms[name] = await conn.fetchval(
            "INSERT INTO realm (organization, realm_id, encryption_revision, "
            "maintenance_started_by, maintenance_started_on, maintenance_type) "
            "VALUES ($1, gen_random_uuid(), $2, $3, $4, $5) RETURNING _id",
            org,
            revision,
            devices["alice"] if in_maintenance else None,
            NOW if in_maintenance else None,
            "REENCRYPTION" if in_maintenance else None,
        )
        for rev in range(1, revision + 1):
            revisions[name, rev] = await conn.fetchval(
                "INSERT INTO vlob_encryption_revision (realm, encryption_revision) "
                "VALUES ($1, $2) RETURNING _id",
                realms[name],
                rev,
            )
        await conn.execute(
            "INSERT INTO realm_user_role (realm, user_, role, certificate, certified_by, "
            "certified_on) VALUES ($1, $2, 'OWNER', 'role', $3, $4)",
            realms[name],
            users["alice"],
            devices["alice"],
            NOW,
        )
    shared = "11111111-1111-1111-1111-111111111111"
    atoms = [
        ("r1", 1, shared, 1),
        ("r1", 1, shared, 2),
        ("r2", 1, shared, 1),
        ("r2", 1, "22222222-2222-2222-2222-222222222222", 1),
        ("r2", 2, shared, 1),  # the re-encrypted copy saved so far
    ]
    index = {"r1": 0, "r2": 0}
    for realm, rev, vlob_id, version in atoms:
        atom = await conn.fetchval(
            "INSERT INTO vlob_atom (organization, vlob_encryption_revision, vlob_id, version, "
            "blob, size, author, created_on) VALUES ($1, $2, $3, $4, $5, 4, $6, $7) "
            "RETURNING _id",
            org,
            revisions[realm, rev],
            vlob_id,
            version,
            b"blob",
            devices["alice"],
            NOW,
        )
        if rev == 1:
            index[realm] += 1
            await conn.execute(
                "INSERT INTO realm_vlob_update (realm, index, vlob_atom) VALUES ($1, $2, $3)",
                realms[realm],
                index[realm],
                atom,
            )
    await conn.execute(
        "INSERT INTO block (organization, block_id, realm, author, size, created_on) "
        "VALUES ($1, gen_random_uuid(), $2, $3, 3, $4)",
        org,
        realms["r1"],
        devices["alice"],
        NOW,
    )
    await conn.execute(
        "INSERT INTO block_data (organization_id, block_id, data) "
        "VALUES ('Org', gen_random_uuid(), 'abc')"
    )
    await conn.execute(
        "INSERT INTO invitation (organization, token, type, greeter, claimer_email, created_on) "
        "VALUES ($1, gen_random_uuid(), 'USER', $2, 'new@x.org', $3)",
        org,
        users["alice"],
        NOW,
    )
    return ReferenceData(keys, f"Org/{shared}")


@dataclass
class LegacyData:
    verify_keys: dict[str, bytes]
    realms: dict[str, int]


async def fill_legacy_level1(conn: asyncpg.Connection) -> LegacyData:
    """Rows as our earlier releases wrote them at legacy level 1, with a realm mid
    re-encryption (one of its two work rows saved)."""
    org = await conn.fetchval(
        "INSERT INTO organization (organization_id, bootstrap_token) "
        "VALUES ('Org', 'token') RETURNING _id"
    )
    users, devices, keys = {}, {}, {}
    for user_id, is_admin in (("alice", True), ("bob", False)):
        users[user_id] = await conn.fetchval(
            "INSERT INTO user_ (organization, user_id, is_admin, user_certificate, created_on) "
            "VALUES ($1, $2, $3, $4, $5) RETURNING _id",
            org,
            user_id,
            is_admin,
            f"{user_id} cert".encode(),
            NOW,
        )
        device = device_certificate(f"{user_id}@dev1")
        keys[f"{user_id}@dev1"] = bytes(device.signing_key.verify_key)
        devices[user_id] = await conn.fetchval(
            "INSERT INTO device (organization, user_, device_id, device_certificate, "
            "verify_key, created_on) VALUES ($1, $2, $3, $4, $5, $6) RETURNING _id",
            org,
            users[user_id],
            f"{user_id}@dev1",
            device.certificate,
            keys[f"{user_id}@dev1"],
            NOW,
        )
    for index in (1, 2):
        await conn.execute(
            "INSERT INTO message (recipient, index, sender, timestamp, body) "
            "VALUES ($1, $2, $3, $4, 'hi')",
            users["bob"],
            index,
            devices["alice"],
            NOW,
        )
    realms = {}
    for name, revision, in_maintenance in (("r1", 1, False), ("r2", 2, True)):
        realms[name] = await conn.fetchval(
            "INSERT INTO realm (organization, realm_id, encryption_revision, checkpoint, "
            "maintenance_type, maintenance_started_on, maintenance_started_by) "
            "VALUES ($1, gen_random_uuid(), $2, 2, $3, $4, $5) RETURNING _id",
            org,
            revision,
            "REENCRYPTION" if in_maintenance else None,
            NOW if in_maintenance else None,
            devices["alice"] if in_maintenance else None,
        )
        await conn.execute(
            "INSERT INTO realm_user_role (realm, user_, role, certificate, certifier, "
            "certified_on) VALUES ($1, $2, 'OWNER', 'role', $3, $4)",
            realms[name],
            users["alice"],
            devices["alice"],
            NOW,
        )
        atoms = []
        for index in (1, 2):
            atom = await conn.fetchval(
                "INSERT INTO vlob_atom (organization, realm, vlob_id, version, "
                "encryption_revision, blob, size, author, created_on) "
                "VALUES ($1, $2, gen_random_uuid(), 1, 1, 'old', 3, $3, $4) RETURNING _id",
                org,
                realms[name],
                devices["alice"],
                NOW,
            )
            atoms.append(atom)
            await conn.execute(
                "INSERT INTO realm_vlob_update (realm, index, vlob_atom) VALUES ($1, $2, $3)",
                realms[name],
                index,
                atom,
            )
        if in_maintenance:
            for atom, blob in zip(atoms, (b"new!", None), strict=True):
                await conn.execute(
                    "INSERT INTO vlob_encryption_revision (realm, encryption_revision, "
                    "vlob_atom, reencrypted_blob) VALUES ($1, 2, $2, $3)",
                    realms[name],
                    atom,
                    blob,
                )
    await conn.execute(
        "INSERT INTO block (organization, block_id, realm, author, size, created_on) "
        "VALUES ($1, gen_random_uuid(), $2, $3, 3, $4)",
        org,
        realms["r1"],
        devices["alice"],
        NOW,
    )
    await conn.execute(
        "INSERT INTO block_data (organization_id, block_id, data) "
        "VALUES ('Org', gen_random_uuid(), 'abc')"
    )
    return LegacyData(keys, realms)
