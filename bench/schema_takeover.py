"""Time of `parsec backend migrate` (takeover) and `parsec backend downgrade` (hand-back)
on a big Parsec 2.0.0 database, and of the conversion of our previous layout.

    .venv/bin/python bench/schema_takeover.py --db postgresql://postgres@127.0.0.1/postgres
        [--vlobs 1000000] [--blocks 100000] [--devices 2000] [--layout reference|legacy]

Creates a scratch database next to the one of `--db`, fills it with generate_series
(one organization, 1 000 realms, `--vlobs` vlob versions of 1 KiB, `--blocks` blocks,
`--devices` devices with real certificates, 10 messages per user), runs our `parsec
backend migrate` then `parsec backend downgrade` (reference layout only) as the operator
would, progress lines included, prints their durations, and drops the database. This is
a program that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped, unused-ignore]

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.backend.schema_helpers import (  # noqa: E402
    build_ours,
    build_reference,
    device_certificate,
)

from parsec_server.backend.storage.postgresql.migrations import Series  # noqa: E402

PARSEC = str(Path(sys.executable).with_name("parsec"))

_FILL_REFERENCE = """
INSERT INTO organization (organization_id, bootstrap_token) VALUES ('Org', 't');
INSERT INTO realm (organization, realm_id, encryption_revision)
    SELECT 1, gen_random_uuid(), 1 FROM generate_series(1, 1000);
INSERT INTO vlob_encryption_revision (realm, encryption_revision) SELECT _id, 1 FROM realm;
INSERT INTO vlob_atom (organization, vlob_encryption_revision, vlob_id, version, blob, size,
    author, created_on)
    SELECT 1, 1 + (i / 2) % 1000, md5((i / 2)::text)::uuid, 1 + i % 2,
        decode(repeat(md5(i::text), 32), 'hex'), 1024, 1, now()
    FROM generate_series(0, {vlobs} - 1) AS i;
INSERT INTO realm_vlob_update (realm, index, vlob_atom)
    SELECT vlob_encryption_revision,
        row_number() OVER (PARTITION BY vlob_encryption_revision ORDER BY _id), _id
    FROM vlob_atom;
INSERT INTO block (organization, block_id, realm, author, size, created_on)
    SELECT 1, gen_random_uuid(), 1 + i % 1000, 1, 4096, now()
    FROM generate_series(1, {blocks}) AS i;
INSERT INTO message (organization, recipient, timestamp, index, sender, body)
    SELECT 1, u._id, now(), i, 1, 'm' FROM user_ u, generate_series(1, 10) AS i;
"""

_FILL_LEGACY = """
INSERT INTO organization (organization_id, bootstrap_token) VALUES ('Org', 't');
INSERT INTO realm (organization, realm_id, encryption_revision, checkpoint)
    SELECT 1, gen_random_uuid(), 1, 0 FROM generate_series(1, 1000);
INSERT INTO vlob_atom (organization, realm, vlob_id, version, encryption_revision, blob,
    size, author, created_on)
    SELECT 1, 1 + (i / 2) % 1000, md5((i / 2)::text)::uuid, 1 + i % 2, 1,
        decode(repeat(md5(i::text), 32), 'hex'), 1024, 1, now()
    FROM generate_series(0, {vlobs} - 1) AS i;
INSERT INTO realm_vlob_update (realm, index, vlob_atom)
    SELECT realm, row_number() OVER (PARTITION BY realm ORDER BY _id), _id FROM vlob_atom;
INSERT INTO block (organization, block_id, realm, author, size, created_on)
    SELECT 1, gen_random_uuid(), 1 + i % 1000, 1, 4096, now()
    FROM generate_series(1, {blocks}) AS i;
INSERT INTO message (recipient, index, sender, timestamp, body)
    SELECT u._id, i, 1, now(), 'm' FROM user_ u, generate_series(1, 10) AS i;
"""


async def fill(url: str, layout: str, vlobs: int, blocks: int, devices: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        if layout == "reference":
            await build_reference(conn, 5)
        else:
            await build_ours(conn, Series.LEGACY, 5)
        await conn.execute(
            "INSERT INTO organization (organization_id, bootstrap_token) VALUES ('Org', 't')"
        )
        users = []
        for n in range(devices):
            device = device_certificate(f"u{n}@dev1")
            users.append((f"u{n}", f"u{n}@dev1", device.certificate, device))
        for user_id, device_id, certificate, device in users:
            user = await conn.fetchval(
                "INSERT INTO user_ (organization, user_id, user_certificate, created_on, "
                "redacted_user_certificate, profile) VALUES (1, $1, 'c', now(), 'c', 'ADMIN') "
                "RETURNING _id",
                user_id,
            )
            columns = "" if layout == "reference" else ", verify_key"
            values = "" if layout == "reference" else ", $4"
            args = [user, device_id, certificate]
            if layout != "reference":
                args.append(bytes(device.signing_key.verify_key))
            await conn.execute(
                "INSERT INTO device (organization, user_, device_id, device_certificate, "
                f"created_on, redacted_device_certificate{columns}) "
                f"VALUES (1, $1, $2, $3, now(), $3{values})",
                *args,
            )
        sql = _FILL_REFERENCE if layout == "reference" else _FILL_LEGACY
        body = sql.format(vlobs=vlobs, blocks=blocks).split(";\n", 1)[1]
        await conn.execute(body)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def timed(*args: str) -> float:
    start = time.monotonic()
    subprocess.run([PARSEC, "backend", *args], check=True)
    return time.monotonic() - start


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--vlobs", type=int, default=1_000_000)
    parser.add_argument("--blocks", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=2_000)
    parser.add_argument("--layout", choices=["reference", "legacy"], default="reference")
    options = parser.parse_args()

    name = f"bench_takeover_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(options.db)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(options.db)._replace(path=f"/{name}"))
    try:
        start = time.monotonic()
        await fill(url, options.layout, options.vlobs, options.blocks, options.devices)
        print(f"filled in {time.monotonic() - start:.1f}s", flush=True)
        print(f"migrate: {timed('migrate', '--db', url):.1f}s", flush=True)
        if options.layout == "reference":
            print(f"downgrade: {timed('downgrade', '--db', url):.1f}s", flush=True)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
