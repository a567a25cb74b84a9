"""How long taking over (and handing back) a large Parsec 2.0.0 database takes.

    .venv/bin/python bench/takeover_size.py [--vlobs 1000000] [--blocks 100000]
                                            [--postgresql-url URL] [--keep] [--legacy]

1. Creates a fresh database `size_<random>` on the PostgreSQL server of --postgresql-url
   and gives it the Parsec 2.0.0 schema with the reference's own `parsec backend migrate`.
2. Fills it, with set-based SQL (`generate_series`, `INSERT ... SELECT`, COPY), as
   Parsec 2.0.0 would have left it after years of use: organizations, users, humans,
   devices with real signed certificates, realms with role changes, --vlobs vlob
   versions (`vlob_atom` with their `realm_vlob_update` rows; a few realms re-encrypted,
   holding copies under revision 2 as the reference keeps them, one of them left in the
   middle of its re-encryption), --blocks blocks (`block` and 4 KiB of random data each
   in `block_data`: the PostgreSQL blockstore), messages (some with the duplicate
   indexes the reference can store), invitations of both APIs.
3. Times our `parsec backend migrate` (takeover), our `parsec backend downgrade`
   (hand-back; reported "not available" on a version that lacks it), an interrupted
   takeover (our migrate killed with SIGKILL halfway) and our migrate again, printing
   their output as it comes with the elapsed time.
4. Checks after each step: row counts and a checksum of every row of the 16 Parsec
   2.0.0 tables (their own columns; blobs through md5) are unchanged (message indexes
   apart: the takeover may renumber duplicates, see below); after the takeover, every
   device's verify_key equals the one of its certificate and message indexes are the
   positions in _id order; after the downgrade, the reference's
   `parsec backend migrate --dry-run` finds nothing to apply and `pg_dump
   --schema-only` equals a fresh Parsec 2.0.0 database's; after the interrupted
   takeover, no ext_* object is left and the schema is still that one.
5. Prints the figures (wall time, database size, and the WAL the PostgreSQL cluster
   wrote meanwhile: other databases' writes count too) and drops the databases, unless
   --keep.

With --legacy, the database is instead in our previous layout (`migrations/legacy/`,
level 5; one organization of --organizations x --users-per-org users with a device
each, --organizations x --realms-per-org realms, --vlobs vlob versions of 1 KiB,
--blocks blocks, 10 messages per user): times our `parsec backend migrate` converting
it to the Parsec 2.0.0 layout then applying the extras, checks row counts and verify
keys are kept and that the reference's `migrate --dry-run` finds nothing to apply.

This is a program that prints figures, not a test. It exits 1 if a check failed.
Needed: the reference in /tmp/parsec-reference-2.0.0 (`scripts/reference-parsec`), a
PostgreSQL server whose user may create databases, `pg_dump` of the same major
version. The default size needs about 3 GB of disk on the PostgreSQL server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import json
import os
import random
import re
import secrets
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped, unused-ignore]
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from parsec_server.api.certificates import DeviceCertificate, unsecure_load
from parsec_server.api.codec import ID, DateTime
from parsec_server.api.ids import RealmRole, UserProfile
from parsec_server.backend.storage.postgresql.schema.files import (
    Series,
    load_series,
    split_statements,
)
from parsec_server.client.certificates import (
    device_certificates,
    realm_role_certificate,
    revoked_user_certificate,
    user_certificates,
)

REFERENCE_PARSEC = Path("/tmp/parsec-reference-2.0.0/bin/parsec")
DEFAULT_POSTGRESQL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

# The 16 tables of Parsec 2.0.0 (0001..0005), in the order their rows are checked.
REFERENCE_TABLES = (
    "organization",
    "human",
    "user_",
    "device",
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
)
# The takeover renumbers the messages whose index disagrees with their position in the
# recipient's list (Parsec 2.0.0 can store duplicates): the checksum leaves it out, and
# a check of its own says whether the indexes are the positions.
SKIPPED_COLUMNS = {("message", "index")}

# Versions per vlob, repeated: most vlobs (files) have few versions, a few (folders,
# often edited files) many. The atoms of one repetition form a "stretch" that goes to
# one realm, so a vlob never spans two realms.
VERSIONS_PATTERN = (1, 1, 2, 1, 3, 1, 1, 2, 5, 1, 1, 12, 1, 2, 1, 1, 3, 1, 1, 20)
STRETCH = sum(VERSIONS_PATTERN)  # atoms per stretch
STRETCH_VLOBS = len(VERSIONS_PATTERN)

BLOB_POOL = 4096  # random blobs that vlob blobs and message bodies are made of
CHUNK_POOL = 1024  # random 4080-byte chunks that block data is made of
BLOCK_SIZE = 4096
T0 = datetime(2021, 3, 1, tzinfo=UTC)
REENCRYPTED_SHARE = 0.03  # of the vlob versions: copies under revision 2


# --------------------------------------------------------------------------- output


class Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def say(message: str) -> None:
    print(message, flush=True)


def fmt_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)} min {secs:04.1f} s"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


# --------------------------------------------------------------------------- databases


def database_url(server_url: str, name: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def create_database(server_url: str, name: str) -> None:
    async with connected(server_url) as conn:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')


async def drop_database(server_url: str, name: str) -> None:
    async with connected(server_url) as conn:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------- commands


@dataclass
class CommandRun:
    argv: list[str]
    returncode: int
    lines: list[str]
    seconds: float
    killed: bool = False  # by `kill_after`


def _visible(raw: str) -> str:
    # The reference animates a spinner with carriage returns: keep what stays on screen.
    return raw.rstrip("\r").split("\r")[-1]


async def run_command(
    argv: Sequence[str], *, indent: str = "    ", kill_after: float | None = None
) -> CommandRun:
    """Run a command, echoing each output line (stdout and stderr) with the elapsed time;
    SIGKILL it after `kill_after` seconds if it still runs."""
    clock = Clock()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200"},
    )
    stdout = proc.stdout
    assert stdout is not None
    lines: list[str] = []

    async def echo() -> None:
        while raw := await stdout.readline():
            line = _visible(raw.decode("utf-8", "replace").rstrip("\n"))
            lines.append(line)
            say(f"{indent}[{clock.elapsed():7.1f} s] {line}")

    killed = False
    reader = asyncio.create_task(echo())
    try:
        await asyncio.wait_for(asyncio.shield(reader), kill_after)
    except TimeoutError:
        if proc.returncode is None:
            proc.kill()
            killed = True
            say(f"{indent}[{clock.elapsed():7.1f} s] (killed with SIGKILL)")
        await reader
    returncode = await proc.wait()
    return CommandRun(list(argv), returncode, lines, clock.elapsed(), killed)


async def command_exists(parsec: str, *subcommand: str) -> bool:
    proc = await asyncio.create_subprocess_exec(
        parsec,
        *subcommand,
        "--help",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        stdin=asyncio.subprocess.DEVNULL,
    )
    return await proc.wait() == 0


# --------------------------------------------------------------------------- the data


@dataclass
class Identities:
    """Everything built in Python (with real certificates), as rows ready for COPY."""

    organizations: list[tuple[Any, ...]] = field(default_factory=list)
    humans: list[tuple[Any, ...]] = field(default_factory=list)
    users: list[tuple[Any, ...]] = field(default_factory=list)
    devices: list[tuple[Any, ...]] = field(default_factory=list)
    realms: list[list[Any]] = field(default_factory=list)  # mutable: re-encryption
    roles: list[tuple[Any, ...]] = field(default_factory=list)
    revisions: list[tuple[Any, ...]] = field(default_factory=list)
    invitations: list[tuple[Any, ...]] = field(default_factory=list)
    user_invitations: list[tuple[Any, ...]] = field(default_factory=list)
    device_invitations: list[tuple[Any, ...]] = field(default_factory=list)
    # device _id -> verify key, to check the takeover's backfill
    verify_keys: dict[int, bytes] = field(default_factory=dict)
    # per organization (list index = organization _id - 1): first device _id, device count
    dev_first: list[int] = field(default_factory=list)
    dev_count: list[int] = field(default_factory=list)
    # per realm (list index = realm _id - 1): organization _id
    realm_org: list[int] = field(default_factory=list)
    # realm _id -> (revision-1 _id, revision-2 _id or None)
    realm_revisions: dict[int, tuple[int, int | None]] = field(default_factory=dict)
    reencrypted_realms: list[int] = field(default_factory=list)  # finished
    reencrypting_realm: int | None = None  # left in the middle


def _dt(at: datetime) -> DateTime:
    return DateTime(at)


def build_identities(
    rnd: random.Random, organizations: int, users_per_org: int, realms_per_org: int
) -> Identities:
    ids = Identities()
    user_pk = device_pk = human_pk = realm_pk = role_pk = 0
    invitation_pk = v1_pk = 0

    def key() -> SigningKey:
        return SigningKey(rnd.randbytes(32))

    for o in range(organizations):
        org_pk = o + 1
        org_name = f"Org{o:03d}-{rnd.choice(['Acme', 'Globex', 'Initech', 'Umbrella'])}"
        root_key = key()
        created = T0 + timedelta(days=o)
        ids.organizations.append(
            (org_pk, org_name, secrets.token_hex(32), bytes(root_key.verify_key), None)
        )
        ids.dev_first.append(device_pk + 1)
        org_devices: list[tuple[int, str, SigningKey]] = []  # (_id, device_id, key)
        org_users: list[tuple[int, str, UserProfile, int]] = []  # (_id, user_id, profile, dev)
        admin_device: tuple[int, str, SigningKey] | None = None
        for u in range(users_per_org):
            user_pk += 1
            user_id = uuid.UUID(int=rnd.getrandbits(128)).hex
            if u == 0 or u % 7 == 3:
                profile = UserProfile.ADMIN
            elif u % 5 == 4:
                profile = UserProfile.OUTSIDER
            else:
                profile = UserProfile.STANDARD
            at = created + timedelta(hours=u)
            human = None
            human_pk_of_user = None
            if u != users_per_org - 2:  # one user without human handle (older clients)
                human = (f"user{u}@{org_name.lower()}.example.com", f"User {u} of {org_name}")
                human_pk += 1
                human_pk_of_user = human_pk
                ids.humans.append((human_pk, org_pk, human[0], human[1]))
            if admin_device is None:
                author_key, author_id, certifier = root_key, None, None
            else:
                author_key, author_id, certifier = admin_device[2], admin_device[1], admin_device[0]
            user_cert, redacted_user_cert = user_certificates(
                author_key,
                author_id,
                _dt(at),
                user_id,
                human,
                PrivateKey(rnd.randbytes(32)).public_key,
                profile,
            )
            revoked = u == users_per_org - 1 and admin_device is not None
            revoked_on = revoked_cert = revoked_certifier = None
            if revoked and admin_device is not None:
                revoked_on = at + timedelta(days=30)
                revoked_cert = revoked_user_certificate(
                    admin_device[2], admin_device[1], _dt(revoked_on), user_id
                )
                revoked_certifier = admin_device[0]
            ids.users.append(
                (
                    user_pk,
                    org_pk,
                    user_id,
                    user_cert,
                    certifier,
                    at,
                    revoked_on,
                    revoked_cert,
                    revoked_certifier,
                    human_pk_of_user,
                    redacted_user_cert,
                    profile.value,
                )
            )
            first_device: tuple[int, str, SigningKey] | None = None
            for d in range(3 if u % 3 == 0 else 2):
                device_pk += 1
                signing_key = key()
                device_id = f"{user_id}@{uuid.UUID(int=rnd.getrandbits(128)).hex}"
                label = None if d == 2 else ("Laptop" if d == 0 else "Phone")
                if first_device is None:
                    d_key, d_author, d_certifier = author_key, author_id, certifier
                else:
                    d_key, d_author, d_certifier = first_device[2], first_device[1], first_device[0]
                d_at = at + timedelta(minutes=d)
                device_cert, redacted_device_cert = device_certificates(
                    d_key, d_author, _dt(d_at), device_id, label, signing_key.verify_key
                )
                ids.devices.append(
                    (
                        device_pk,
                        org_pk,
                        user_pk,
                        device_id,
                        device_cert,
                        d_certifier,
                        d_at,
                        redacted_device_cert,
                        label,
                    )
                )
                ids.verify_keys[device_pk] = bytes(signing_key.verify_key)
                this_device = (device_pk, device_id, signing_key)
                org_devices.append(this_device)
                if first_device is None:
                    first_device = this_device
            assert first_device is not None
            if admin_device is None:
                admin_device = first_device
            org_users.append((user_pk, user_id, profile, first_device[0]))
        ids.dev_count.append(len(org_devices))
        devices_by_pk = {d[0]: d for d in org_devices}

        # Realms, each with its owner and a few members; some roles change over time.
        members = [u for u in org_users[:-1] if u[2] is not UserProfile.OUTSIDER]
        for r in range(realms_per_org):
            realm_pk += 1
            realm_id = uuid.UUID(int=rnd.getrandbits(128))
            owner = members[r % len(members)]
            owner_device = devices_by_pk[owner[3]]
            at = created + timedelta(days=1 + r)
            ids.realms.append([realm_pk, org_pk, realm_id, 1, None, None, None])
            ids.realm_org.append(org_pk)

            grants: list[tuple[tuple[int, str, UserProfile, int], RealmRole | None]] = [
                (owner, RealmRole.OWNER)
            ]
            others = rnd.sample(
                [u for u in org_users if u[0] != owner[0]], k=min(2 + r % 5, len(org_users) - 1)
            )
            for i, other in enumerate(others):
                if other[2] is UserProfile.OUTSIDER:
                    grants.append((other, RealmRole.READER))
                else:
                    roles = (RealmRole.MANAGER, RealmRole.CONTRIBUTOR, RealmRole.READER)
                    grants.append((other, roles[i % 3]))
            if len(others) >= 2:  # a role change and a removal
                grants += [(others[0], RealmRole.READER), (others[1], None)]
            for user, role in grants:
                role_pk += 1
                at = at + timedelta(hours=1)
                certificate = realm_role_certificate(
                    owner_device[2], owner_device[1], _dt(at), ID(realm_id), user[1], role
                )
                role_value = None if role is None else role.value
                ids.roles.append(
                    (role_pk, realm_pk, user[0], role_value, certificate, owner_device[0], at)
                )

        # Invitations: a few of each kind and state, on both APIs.
        admin_user = org_users[0]
        for i, (kind, deleted, state) in enumerate(
            [
                ("USER", None, "1_WAIT_PEERS"),
                ("USER", None, "2_1_CLAIMER_HASHED_NONCE"),
                ("USER", "FINISHED", "4_COMMUNICATE"),
                ("USER", "CANCELLED", "1_WAIT_PEERS"),
                ("DEVICE", None, "1_WAIT_PEERS"),
                ("DEVICE", "ROTTEN", "3_1_CLAIMER_TRUST"),
            ]
        ):
            invitation_pk += 1
            at = created + timedelta(days=10 + i)
            ids.invitations.append(
                (
                    invitation_pk,
                    org_pk,
                    uuid.UUID(int=rnd.getrandbits(128)),
                    kind,
                    admin_user[0],
                    f"new{i}@{org_name.lower()}.example.com" if kind == "USER" else None,
                    at,
                    None if deleted is None else at + timedelta(days=1),
                    deleted,
                    state,
                    rnd.randbytes(32) if state != "1_WAIT_PEERS" else None,
                    rnd.randbytes(64) if state != "1_WAIT_PEERS" else None,
                )
            )
        if o % 10 == 0:  # API v1 invitations, left over by old clients
            v1_pk += 1
            ids.user_invitations.append(
                (v1_pk, org_pk, uuid.UUID(int=rnd.getrandbits(128)).hex, admin_user[3], created)
            )
            ids.device_invitations.append(
                (v1_pk, org_pk, f"{admin_user[1]}@v1device", admin_user[3], created)
            )

    # Revision 1 of every realm, then revision 2 of the re-encrypted ones: 1 in 50
    # realms, plus one left in the middle of its re-encryption.
    revision_pk = 0
    for realm in ids.realms:
        revision_pk += 1
        ids.revisions.append((revision_pk, realm[0], 1))
        ids.realm_revisions[realm[0]] = (revision_pk, None)
    realm_count = len(ids.realms)
    step = max(2, realm_count // max(1, realm_count // 50))
    chosen = list(range(step // 2, realm_count, step))
    if len(chosen) < 2:
        chosen = [0, realm_count - 1] if realm_count > 1 else []
    if chosen:
        ids.reencrypting_realm = ids.realms[chosen[-1]][0]
        ids.reencrypted_realms = [ids.realms[i][0] for i in chosen[:-1]]
    for realm in ids.realms:
        realm_pk = realm[0]
        if realm_pk in ids.reencrypted_realms or realm_pk == ids.reencrypting_realm:
            revision_pk += 1
            ids.revisions.append((revision_pk, realm_pk, 2))
            ids.realm_revisions[realm_pk] = (ids.realm_revisions[realm_pk][0], revision_pk)
            realm[3] = 2
            if realm_pk == ids.reencrypting_realm:
                owner_role = next(r for r in ids.roles if r[1] == realm_pk)
                realm[4] = owner_role[5]  # maintenance_started_by: the owner's device
                realm[5] = T0 + timedelta(days=900)
                realm[6] = "REENCRYPTION"
    return ids


@dataclass
class VlobPlan:
    """How the vlob versions are laid out: stretches of STRETCH atoms, one realm each."""

    originals: int
    copies: int
    # per stretch (index = stretch number): revision-1 _id, organization _id
    stretch_revision: list[int]
    stretch_org: list[int]
    # atoms with n < copied_below (0-based, in insertion order) are copied under revision 2
    copied_below: int


def plan_vlobs(rnd: random.Random, ids: Identities, vlobs: int) -> VlobPlan:
    """Place `vlobs` atoms (originals + re-encryption copies, exactly) into stretches.

    The first stretches go to the re-encrypted realms (all copied), then twice as many
    to the realm left in re-encryption (its first half copied), the rest to the other
    realms, skewed: a few realms hold most of the data, as in real organizations.
    """
    reencrypted = ids.reencrypted_realms
    copy_stretches = round(vlobs * REENCRYPTED_SHARE / STRETCH)
    if ids.reencrypting_realm is None or vlobs < 4 * STRETCH:
        copy_stretches = 0
    # Finished realms get `full` stretches in all, the unfinished one `2 * half`.
    half = max(1, copy_stretches // 4) if copy_stretches else 0
    full = copy_stretches - half
    if full < len(reencrypted):
        full, half = 0, copy_stretches
    if (full + 2 * half) * STRETCH > vlobs - copy_stretches * STRETCH:
        full = half = copy_stretches = 0  # too small a database to re-encrypt anything
    copies = copy_stretches * STRETCH
    originals = vlobs - copies
    stretches = -(-originals // STRETCH)  # the last one may be cut short
    layout: list[int] = []  # realm _id per stretch
    for i in range(full):
        layout.append(reencrypted[i % len(reencrypted)])
    if half:
        assert ids.reencrypting_realm is not None
        layout += [ids.reencrypting_realm] * (2 * half)
    copied_stretches = full + half
    special = set(reencrypted) | {ids.reencrypting_realm}
    others = [r[0] for r in ids.realms if r[0] not in special] or [r[0] for r in ids.realms]
    while len(layout) < stretches:
        layout.append(others[int(len(others) * rnd.random() ** 2)])
    return VlobPlan(
        originals=originals,
        copies=copies,
        stretch_revision=[ids.realm_revisions[realm][0] for realm in layout],
        stretch_org=[ids.realm_org[realm - 1] for realm in layout],
        copied_below=copied_stretches * STRETCH,
    )


# --------------------------------------------------------------------------- the fill

_SQL_INSERT_ATOMS = """
INSERT INTO vlob_atom (organization, vlob_encryption_revision, vlob_id, version, blob, size,
                       author, created_on)
SELECT org, rev, vlob_id, version, blob, octet_length(blob), author, created_on
FROM (
    SELECT
        ($1::int[])[s.n / $5 + 1] AS org,
        ($2::int[])[s.n / $5 + 1] AS rev,
        md5($8 || ':vlob:' || (s.n / $5 * $6 + ($3::int[])[s.n % $5 + 1]))::uuid AS vlob_id,
        ($4::int[])[s.n % $5 + 1] AS version,
        uuid_send(md5($8 || ':blob:' || s.n)::uuid)
            || (SELECT b FROM size_blob_pool WHERE i = s.n::bigint * 7919 % $7) AS blob,
        ($11::int[])[($1::int[])[s.n / $5 + 1]]
            + (s.n * 31 + s.n / $5) % ($12::int[])[($1::int[])[s.n / $5 + 1]] AS author,
        $13::timestamptz + s.n * interval '20 seconds' AS created_on
    FROM generate_series($9::int, $10::int) AS s (n)
    OFFSET 0
) atoms
"""

# Re-encryption copies: Parsec 2.0.0 inserts, under the new revision, one atom per atom
# of the previous revision with the same vlob, version, author and dates and the
# re-encrypted blob. Atoms n < copied_below are _id n + 1 (a fresh table).
_SQL_INSERT_COPIES = """
INSERT INTO vlob_atom (organization, vlob_encryption_revision, vlob_id, version, blob, size,
                       author, created_on, deleted_on)
SELECT organization, rev2, vlob_id, version, blob, octet_length(blob), author, created_on,
       deleted_on
FROM (
    SELECT a.organization, r2._id AS rev2, a.vlob_id, a.version, a.author, a.created_on,
           a.deleted_on,
           uuid_send(md5($3 || ':copy:' || a._id)::uuid)
               || (SELECT b FROM size_blob_pool WHERE i = a._id::bigint * 104729 % $4) AS blob
    FROM vlob_atom a
    JOIN vlob_encryption_revision r1 ON r1._id = a.vlob_encryption_revision
    JOIN vlob_encryption_revision r2 ON r2.realm = r1.realm AND r2.encryption_revision = 2
    WHERE a._id BETWEEN $1 AND $2
    ORDER BY a._id
    OFFSET 0
) copies
"""

_SQL_INSERT_VLOB_UPDATES = """
INSERT INTO realm_vlob_update (realm, index, vlob_atom)
SELECT realm, position, atom FROM (
    SELECT v.realm, a._id AS atom,
           row_number() OVER (PARTITION BY v.realm ORDER BY a._id) AS position
    FROM vlob_atom a JOIN vlob_encryption_revision v ON v._id = a.vlob_encryption_revision
    WHERE v.encryption_revision = 1
) u
ORDER BY atom
"""

# Blocks land in realms with the same skew as vlobs (a few realms hold most of them).
_SQL_INSERT_BLOCKS = """
INSERT INTO block (organization, block_id, realm, author, size, created_on)
SELECT ($4::int[])[ri], md5($3 || ':block:' || k)::uuid, ri, ($5::int[])[($4::int[])[ri]]
       + k % ($6::int[])[($4::int[])[ri]], $7, $8::timestamptz + k * interval '3 minutes'
FROM (
    SELECT k, 1 + floor(cardinality($4::int[])
                        * power(((k::bigint * 2654435761) % 4294967296)::float8 / 4294967296,
                                2))::int AS ri
    FROM generate_series($1::int, $2::int) AS k
    OFFSET 0
) b
"""

_SQL_INSERT_BLOCK_DATA = """
INSERT INTO block_data (organization_id, block_id, data)
SELECT o.organization_id, b.block_id,
       uuid_send(b.block_id) || (SELECT c FROM size_chunk_pool WHERE i = b._id % $3)
FROM block b JOIN organization o ON o._id = b.organization
WHERE b._id BETWEEN $1 AND $2
ORDER BY b._id
"""

# Messages: 0 to 8 per user, interleaved in time; index = position per recipient.
_SQL_INSERT_MESSAGES = """
INSERT INTO message (organization, recipient, timestamp, index, sender, body)
SELECT organization, recipient, at,
       row_number() OVER (PARTITION BY recipient ORDER BY at, k), sender, body
FROM (
    SELECT u.organization, u._id AS recipient, k,
           $3::timestamptz + ((u._id * 7 + k * 104729) % 1000000) * interval '1 minute' AS at,
           ($1::int[])[u.organization] + (u._id + k) % ($2::int[])[u.organization] AS sender,
           uuid_send(md5($4 || ':msg:' || u._id || ':' || k)::uuid)
               || (SELECT b FROM size_blob_pool WHERE i = (u._id * 31 + k) % $5) AS body
    FROM user_ u, generate_series(1, u._id % 9) AS k
) m
ORDER BY at, recipient, k
"""

# What Parsec 2.0.0 stores when two messages reach one recipient at once: index =
# count + 1 taken without a lock, so both get the same index (1, 2, 2, 4, ...).
_SQL_DUPLICATE_MESSAGE_INDEXES = """
UPDATE message SET index = 2 WHERE index = 3 AND recipient % 10 = 0
"""


# The columns of the rows built in Python, per table
COPY_COLUMNS = {
    "organization": "_id organization_id bootstrap_token root_verify_key expiration_date",
    "human": "_id organization email label",
    "user_": "_id organization user_id user_certificate user_certifier created_on revoked_on"
    " revoked_user_certificate revoked_user_certifier human redacted_user_certificate profile",
    "device": "_id organization user_ device_id device_certificate device_certifier created_on"
    " redacted_device_certificate device_label",
    "realm": "_id organization realm_id encryption_revision maintenance_started_by"
    " maintenance_started_on maintenance_type",
    "realm_user_role": "_id realm user_ role certificate certified_by certified_on",
    "vlob_encryption_revision": "_id realm encryption_revision",
    "invitation": "_id organization token type greeter claimer_email created_on deleted_on"
    " deleted_reason conduit_state conduit_greeter_payload conduit_claimer_payload",
    "user_invitation": "_id organization user_id creator created_on",
    "device_invitation": "_id organization device_id creator created_on",
    "size_blob_pool": "i b",
    "size_chunk_pool": "i c",
}


async def copy_rows(conn: asyncpg.Connection, table: str, rows: Sequence[tuple[Any, ...]]) -> None:
    if rows:
        columns = COPY_COLUMNS[table].split()
        await conn.copy_records_to_table(table, records=rows, columns=columns)


async def fill(
    url: str,
    args: argparse.Namespace,
    ids: Identities,
    plan: VlobPlan,
) -> dict[str, float]:
    """Fill the database; returns the duration of each phase."""
    timings: dict[str, float] = {}
    seed = str(args.seed)
    async with connected(url) as conn:
        await conn.execute("SET synchronous_commit = off; SET work_mem = '256MB'")

        async def phase(name: str, coro: Any) -> Any:
            clock = Clock()
            result = await coro
            timings[name] = clock.elapsed()
            say(f"    {name}: {fmt_duration(timings[name])}")
            return result

        async def identities() -> None:
            async with conn.transaction():
                # user_ and device reference each other: users first without certifiers
                users = [(*u[:4], None, *u[5:8], None, *u[9:]) for u in ids.users]
                await copy_rows(conn, "organization", ids.organizations)
                await copy_rows(conn, "human", ids.humans)
                await copy_rows(conn, "user_", users)
                await copy_rows(conn, "device", ids.devices)
                await conn.executemany(
                    "UPDATE user_ SET user_certifier = $2, revoked_user_certifier = $3"
                    " WHERE _id = $1",
                    [(u[0], u[4], u[8]) for u in ids.users if u[4] or u[8]],
                )
                await copy_rows(conn, "realm", [tuple(r) for r in ids.realms])
                await copy_rows(conn, "realm_user_role", ids.roles)
                await copy_rows(conn, "vlob_encryption_revision", ids.revisions)
                await copy_rows(conn, "invitation", ids.invitations)
                await copy_rows(conn, "user_invitation", ids.user_invitations)
                await copy_rows(conn, "device_invitation", ids.device_invitations)
                # Explicit _id values: move the sequences past them, as inserts would have.
                for table in (
                    "organization",
                    "human",
                    "user_",
                    "device",
                    "realm",
                    "realm_user_role",
                    "vlob_encryption_revision",
                    "invitation",
                    "user_invitation",
                    "device_invitation",
                ):
                    await conn.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', '_id'),"
                        f" (SELECT COALESCE(max(_id), 1) FROM {table}))"
                    )

        await phase(
            f"organizations, users, devices, realms, roles, invitations "
            f"({len(ids.users)} users, {len(ids.devices)} devices, {len(ids.realms)} realms)",
            identities(),
        )

        async def pools() -> None:
            rnd = random.Random(args.seed + 1)
            sizes = [
                int(min(16_000, max(120, rnd.lognormvariate(6.5, 0.7)))) for _ in range(BLOB_POOL)
            ]
            await conn.execute(
                "CREATE TEMP TABLE size_blob_pool (i int PRIMARY KEY, b bytea NOT NULL);"
                "CREATE TEMP TABLE size_chunk_pool (i int PRIMARY KEY, c bytea NOT NULL)"
            )
            await copy_rows(
                conn, "size_blob_pool", [(i, os.urandom(size)) for i, size in enumerate(sizes)]
            )
            await copy_rows(
                conn,
                "size_chunk_pool",
                [(i, os.urandom(BLOCK_SIZE - 16)) for i in range(CHUNK_POOL)],
            )
            await conn.execute("ANALYZE size_blob_pool; ANALYZE size_chunk_pool")

        await phase("random pools", pools())

        async def atoms() -> None:
            vo = [i for i, count in enumerate(VERSIONS_PATTERN) for _ in range(count)]
            ver = [v + 1 for count in VERSIONS_PATTERN for v in range(count)]
            batch = 100_000
            clock = Clock()
            for start in range(0, plan.originals, batch):
                end = min(plan.originals, start + batch) - 1
                await conn.execute(
                    _SQL_INSERT_ATOMS,
                    plan.stretch_org,
                    plan.stretch_revision,
                    vo,
                    ver,
                    STRETCH,
                    STRETCH_VLOBS,
                    BLOB_POOL,
                    seed,
                    start,
                    end,
                    ids.dev_first,
                    ids.dev_count,
                    T0 + timedelta(days=60),
                )
                say(f"      vlob_atom {end + 1:>9,}/{plan.originals:,} [{clock.elapsed():6.1f} s]")
            for start in range(1, plan.copied_below + 1, batch):
                end = min(plan.copied_below, start + batch - 1)
                await conn.execute(_SQL_INSERT_COPIES, start, end, seed, BLOB_POOL)
            if plan.copied_below:
                say(f"      re-encryption copies {plan.copies:,} [{clock.elapsed():6.1f} s]")

        await phase(
            f"vlob_atom ({plan.originals:,} versions + {plan.copies:,} re-encryption copies)",
            atoms(),
        )
        await phase("realm_vlob_update", conn.execute(_SQL_INSERT_VLOB_UPDATES))

        async def blocks() -> None:
            realm_org = ids.realm_org
            batch = 20_000
            clock = Clock()
            for start in range(0, args.blocks, batch):
                end = min(args.blocks, start + batch) - 1
                await conn.execute(
                    _SQL_INSERT_BLOCKS,
                    start,
                    end,
                    seed,
                    realm_org,
                    ids.dev_first,
                    ids.dev_count,
                    BLOCK_SIZE,
                    T0 + timedelta(days=60),
                )
                await conn.execute(_SQL_INSERT_BLOCK_DATA, start + 1, end + 1, CHUNK_POOL)
                say(
                    f"      block + block_data {end + 1:>9,}/{args.blocks:,}"
                    f" [{clock.elapsed():6.1f} s]"
                )

        await phase(f"block + block_data ({args.blocks:,} x {BLOCK_SIZE} bytes)", blocks())

        async def messages() -> None:
            await conn.execute(
                _SQL_INSERT_MESSAGES, ids.dev_first, ids.dev_count, T0, seed, BLOB_POOL
            )
            await conn.execute(_SQL_DUPLICATE_MESSAGE_INDEXES)

        await phase("message (with duplicate indexes)", messages())
        await conn.execute("DROP TABLE size_blob_pool, size_chunk_pool")
        await conn.execute("SET synchronous_commit = on")
        await phase("VACUUM ANALYZE (as autovacuum would have)", conn.execute("VACUUM ANALYZE"))
    return timings


# --------------------------------------------------------------------------- checks


@dataclass
class Snapshot:
    counts: dict[str, int]
    checksums: dict[str, str]
    seconds: float


async def reference_columns(conn: asyncpg.Connection) -> dict[str, list[tuple[str, str]]]:
    rows = await conn.fetch(
        """
        SELECT table_name::text, column_name::text, udt_name::text
        FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = ANY($1::text[])
        ORDER BY table_name, ordinal_position
        """,
        list(REFERENCE_TABLES),
    )
    columns: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        if (row[0], row[1]) not in SKIPPED_COLUMNS:
            columns.setdefault(row[0], []).append((row[1], row[2]))
    return columns


async def snapshot(url: str, columns: dict[str, list[tuple[str, str]]]) -> Snapshot:
    """Row count and an md5 of every row (the given columns; bytea through md5)."""
    clock = Clock()
    counts: dict[str, int] = {}
    checksums: dict[str, str] = {}
    async with connected(url) as conn:
        await conn.execute("SET work_mem = '256MB'")
        for table in REFERENCE_TABLES:
            parts = [
                f"md5({name})" if udt == "bytea" else f"{name}::text"
                for name, udt in columns[table]
            ]
            row_text = " || '|' || ".join(f"coalesce({p}, 'N')" for p in parts)
            order = "_id" if any(name == "_id" for name, _ in columns[table]) else "1"
            row = await conn.fetchrow(
                f"SELECT count(*), md5(string_agg(md5({row_text}), '' ORDER BY {order}))"
                f" FROM {table}"
            )
            counts[table] = row[0]
            checksums[table] = row[1] or ""
    return Snapshot(counts, checksums, clock.elapsed())


@dataclass
class Checks:
    failures: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str, detail: str = "") -> None:
        mark = "ok  " if ok else "FAIL"
        line = f"    {mark} {what}" + (f": {detail}" if detail else "")
        say(line)
        self.lines.append(line)
        if not ok:
            self.failures.append(what)

    def note(self, what: str) -> None:
        line = f"    note {what}"
        say(line)
        self.lines.append(line)


def compare_snapshots(checks: Checks, step: str, before: Snapshot, after: Snapshot) -> None:
    changed = [t for t in REFERENCE_TABLES if before.checksums[t] != after.checksums[t]]
    recounted = [
        f"{t} {before.counts[t]} -> {after.counts[t]}"
        for t in REFERENCE_TABLES
        if before.counts[t] != after.counts[t]
    ]
    checks.check(
        not recounted and not changed,
        f"{step}: rows of the 16 Parsec 2.0.0 tables unchanged"
        f" ({sum(after.counts.values()):,} rows, checksummed in {after.seconds:.1f} s)",
        "; ".join(recounted + [f"{t} content changed" for t in changed]),
    )


async def check_takeover(checks: Checks, url: str, ids: Identities, duplicates: int) -> None:
    async with connected(url) as conn:
        has_column = await conn.fetchval(
            "SELECT EXISTS (SELECT FROM information_schema.columns WHERE table_schema ="
            " current_schema() AND table_name = 'device' AND column_name = 'verify_key')"
        )
        if not has_column:
            checks.check(False, "device.verify_key exists after the takeover")
        else:
            rows = await conn.fetch("SELECT _id, verify_key, device_certificate FROM device")
            filled = [r for r in rows if r["verify_key"] is not None]
            wrong = [
                r["_id"] for r in filled if bytes(r["verify_key"]) != ids.verify_keys[r["_id"]]
            ]
            parsed_wrong = [
                r["_id"]
                for r in rows
                if unsecure_load(DeviceCertificate, r["device_certificate"]).verify_key
                != ids.verify_keys[r["_id"]]
            ]
            checks.check(not parsed_wrong, "device certificates parse to their verify keys")
            if not filled:
                checks.note(
                    f"device.verify_key not filled by this migrate (0/{len(rows)}): the"
                    " handshake parses the certificate"
                )
            else:
                checks.check(
                    not wrong and len(filled) == len(rows),
                    "device.verify_key backfilled from the certificates",
                    f"{len(filled)}/{len(rows)} filled, {len(wrong)} wrong",
                )
        bad = await conn.fetchval(
            """
            SELECT count(*) FROM (
                SELECT index, row_number() OVER (PARTITION BY recipient ORDER BY _id) AS position
                FROM message) m
            WHERE index <> position
            """
        )
        checks.check(
            bad == 0,
            f"message indexes are the positions in _id order ({duplicates} duplicates renumbered)",
            f"{bad} differ" if bad else "",
        )


async def schema_dump(url: str) -> list[str]:
    proc = await asyncio.create_subprocess_exec(
        "pg_dump",
        "--schema-only",
        "--no-owner",
        "--no-privileges",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"pg_dump failed: {err.decode(errors='replace').strip()}")
    # Recent pg_dump versions print a random key on \restrict / \unrestrict lines.
    return [
        line
        for line in out.decode().splitlines()
        if not line.startswith(("\\restrict", "\\unrestrict"))
    ]


# --------------------------------------------------------------------------- the steps


@dataclass
class Step:
    name: str
    command: str
    available: bool = True
    run: CommandRun | None = None
    wal_bytes: int = 0
    db_size: int = 0


async def database_size_and_wal(url: str) -> tuple[int, int]:
    async with connected(url) as conn:
        size: int = await conn.fetchval("SELECT pg_database_size(current_database())")
        lsn = await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
    return size, int(lsn)


async def table_sizes(url: str) -> list[tuple[str, int, int]]:
    async with connected(url) as conn:
        rows = await conn.fetch(
            """
            SELECT c.relname::text, pg_total_relation_size(c.oid),
                   pg_indexes_size(c.oid)
            FROM pg_class c
            WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'
            ORDER BY pg_total_relation_size(c.oid) DESC LIMIT 6
            """
        )
    return [(r[0], r[1], r[2]) for r in rows]


def migrate_lines_ok(run: CommandRun, *, ours: bool) -> tuple[bool, str]:
    """Whether `migrate` applied nothing of 0001..0005 and, for ours, extras once."""
    applied = [line for line in run.lines if re.match(r"^\S+\.sql ✔$", line)]
    already = [line for line in run.lines if line.endswith(".sql (already applied)")]
    numbered_applied = [line for line in applied if not line.startswith("extras/")]
    extras_applied = len(applied) > len(numbered_applied)
    ok = run.returncode == 0 and len(already) >= 5 and not numbered_applied
    if ours:
        ok = ok and extras_applied
    return ok, f"{len(already)} already applied, applied: {', '.join(applied) or 'nothing'}"


async def run_step(step: Step, argv: list[str], url: str) -> None:
    say(f"\n== {step.name}: {' '.join(argv[:3])} ... ({step.command})")
    _, wal_before = await database_size_and_wal(url)
    step.run = await run_command(argv)
    step.db_size, wal_after = await database_size_and_wal(url)
    step.wal_bytes = wal_after - wal_before
    say(
        f"    -> exit {step.run.returncode} in {fmt_duration(step.run.seconds)},"
        f" WAL of the cluster {fmt_bytes(step.wal_bytes)}, database {fmt_bytes(step.db_size)}"
    )


async def wait_until_unused(server_url: str, name: str, limit_seconds: float = 600) -> float:
    """Wait until no session is connected to database `name` (a killed client's
    PostgreSQL backend finishes its statement first); returns the seconds waited."""
    clock = Clock()
    async with connected(server_url) as conn:
        while clock.elapsed() < limit_seconds:
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            count = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", name
            )
            if count == 0:
                break
            await asyncio.sleep(0.2)
    return clock.elapsed()


async def interrupted_takeover(
    checks: Checks,
    args: argparse.Namespace,
    url: str,
    fresh_url: str | None,
    base: Snapshot,
    columns: dict[str, list[tuple[str, str]]],
    kill_after: float,
) -> None:
    say(f"\n== interrupted takeover: our parsec backend migrate, SIGKILL after {kill_after:.1f} s")
    run = await run_command([args.parsec, "backend", "migrate", "--db", url], kill_after=kill_after)
    name = urlsplit(url).path.lstrip("/")
    waited = await wait_until_unused(args.postgresql_url, name)
    say(f"    the database's sessions ended {waited:.1f} s after the kill")
    if not run.killed:
        checks.note(f"migrate finished in {run.seconds:.1f} s, before the kill: handing back")
        await run_command([args.parsec, "backend", "downgrade", "--db", url])
        return
    async with connected(url) as conn:
        ext = await conn.fetch(
            "SELECT relname::text FROM pg_class WHERE relname LIKE 'ext\\_%'"
            " AND relnamespace = current_schema()::regnamespace"
        )
    checks.check(
        not ext, "interrupted takeover: no ext_* object left", ", ".join(r[0] for r in ext)
    )
    if fresh_url is not None:
        diff = list(
            difflib.unified_diff(
                await schema_dump(fresh_url), await schema_dump(url), lineterm="", n=0
            )
        )
        checks.check(
            not diff,
            "interrupted takeover: schema still the Parsec 2.0.0 one",
            "\n" + "\n".join(diff[:20]) if diff else "",
        )
    compare_snapshots(checks, "interrupted takeover", base, await snapshot(url, columns))


# --------------------------------------------------------------------------- --legacy

# Rows of our previous layout (`migrations/legacy/`, level 5), set-based, around the
# users and devices of one organization built in Python (`fill_legacy`).
_FILL_LEGACY = """
INSERT INTO realm (organization, realm_id, encryption_revision, checkpoint)
    SELECT 1, gen_random_uuid(), 1, 0 FROM generate_series(1, {realms});
INSERT INTO vlob_atom (organization, realm, vlob_id, version, encryption_revision, blob,
    size, author, created_on)
    SELECT 1, 1 + (i / 2) % {realms}, md5((i / 2)::text)::uuid, 1 + i % 2, 1,
        decode(repeat(md5(i::text), 32), 'hex'), 1024, 1, now()
    FROM generate_series(0, {vlobs} - 1) AS i;
INSERT INTO realm_vlob_update (realm, index, vlob_atom)
    SELECT realm, row_number() OVER (PARTITION BY realm ORDER BY _id), _id FROM vlob_atom;
INSERT INTO block (organization, block_id, realm, author, size, created_on)
    SELECT 1, gen_random_uuid(), 1 + i % {realms}, 1, 4096, now()
    FROM generate_series(1, {blocks}) AS i;
INSERT INTO message (recipient, index, sender, timestamp, body)
    SELECT u._id, i, 1, now(), 'm' FROM user_ u, generate_series(1, 10) AS i;
"""
LEGACY_COUNTED = ("user_", "device", "realm", "vlob_atom", "realm_vlob_update", "block", "message")
CONVERTED_LINE = "converted from the previous parsec-server layout"


async def fill_legacy(url: str, args: argparse.Namespace) -> None:
    """Our legacy files 0001..0005 (recorded as our earlier releases did), then the rows."""
    async with connected(url) as conn:
        for migration in load_series(Series.LEGACY):
            async with conn.transaction():
                for statement in split_statements(migration.sql):
                    await conn.execute(statement)
                if migration.idx >= 2:
                    await conn.execute(
                        "INSERT INTO migration (_id, name, applied)"
                        " VALUES ($1, $2, clock_timestamp())",
                        migration.idx,
                        migration.name,
                    )
        await conn.execute(
            "INSERT INTO organization (organization_id, bootstrap_token) VALUES ('Org', 't')"
        )
        root_key = SigningKey.generate()
        now = DateTime(T0)
        devices = []
        for n in range(args.organizations * args.users_per_org):
            verify_key = SigningKey.generate().verify_key
            certificate, redacted = device_certificates(
                root_key, None, now, f"u{n}@dev1", None, verify_key
            )
            devices.append((n + 1, f"u{n}@dev1", certificate, redacted, bytes(verify_key)))
        await conn.copy_records_to_table(
            "user_",
            records=[(n, 1, f"u{n - 1}", b"c", b"c", T0, "ADMIN") for n, *_ in devices],
            columns=(
                "_id",
                "organization",
                "user_id",
                "user_certificate",
                "redacted_user_certificate",
                "created_on",
                "profile",
            ),
        )
        await conn.copy_records_to_table(
            "device",
            records=[(n, 1, n, d, c, r, k, T0) for n, d, c, r, k in devices],
            columns=(
                "_id",
                "organization",
                "user_",
                "device_id",
                "device_certificate",
                "redacted_device_certificate",
                "verify_key",
                "created_on",
            ),
        )
        for table in ("user_", "device"):
            await conn.execute(
                "SELECT setval(pg_get_serial_sequence($1, '_id'), $2)", table, len(devices)
            )
        realms = args.organizations * args.realms_per_org
        await conn.execute(_FILL_LEGACY.format(realms=realms, vlobs=args.vlobs, blocks=args.blocks))
        await conn.execute("VACUUM ANALYZE")


async def legacy_counts(url: str) -> dict[str, int]:
    async with connected(url) as conn:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in LEGACY_COUNTED}


async def legacy_main_async(args: argparse.Namespace, report: dict[str, Any]) -> int:
    """--legacy: time the conversion of our previous layout by our `migrate`."""
    name = f"size_{secrets.token_hex(4)}"
    url = database_url(args.postgresql_url, name)
    checks = Checks()
    total = Clock()
    say(f"database {name} on {urlsplit(args.postgresql_url).hostname} (previous layout)")
    await create_database(args.postgresql_url, name)
    try:
        say("\n== schema and fill: our previous layout, legacy/0001..0005")
        clock = Clock()
        await fill_legacy(url, args)
        fill_seconds = clock.elapsed()
        size0, _ = await database_size_and_wal(url)
        before = await legacy_counts(url)
        async with connected(url) as conn:
            keys = await conn.fetch("SELECT device_id, verify_key FROM device ORDER BY 1")
        say(f"    filled in {fmt_duration(fill_seconds)}: database {fmt_bytes(size0)}")
        say("    rows: " + ", ".join(f"{t} {n:,}" for t, n in before.items()))

        conversion = Step("conversion", "our parsec backend migrate")
        await run_step(conversion, [args.parsec, "backend", "migrate", "--db", url], url)
        assert conversion.run is not None
        checks.check(
            conversion.run.returncode == 0 and CONVERTED_LINE in conversion.run.lines,
            "conversion: migrate exits 0 and converts",
        )
        after = await legacy_counts(url)
        checks.check(
            after == before,
            "conversion: row counts unchanged",
            "; ".join(f"{t} {before[t]} -> {after[t]}" for t in before if before[t] != after[t]),
        )
        async with connected(url) as conn:
            converted = await conn.fetch("SELECT device_id, verify_key FROM device ORDER BY 1")
        checks.check(converted == keys, "conversion: every device keeps its verify_key")
        say("\n== Parsec 2.0.0 `parsec backend migrate --dry-run` on the converted database")
        ref = await run_command(
            [args.reference_parsec, "backend", "migrate", "--db", url, "--dry-run"]
        )
        ok, detail = migrate_lines_ok(ref, ours=False)
        checks.check(ok, "conversion: Parsec 2.0.0 finds nothing to apply", detail)

        say("\n== figures")
        say(
            f"    database (previous layout): {args.vlobs:,} vlob versions, {args.blocks:,}"
            f" blocks, {before['device']:,} devices, {before['message']:,} messages;"
            f" {fmt_bytes(size0)}"
        )
        say(f"    fill: {fmt_duration(fill_seconds)}")
        say(
            f"    conversion + extras: {fmt_duration(conversion.run.seconds)},"
            f" WAL (cluster) {fmt_bytes(conversion.wal_bytes)},"
            f" database {fmt_bytes(conversion.db_size)}"
        )
        say(f"    total run: {fmt_duration(total.elapsed())}")
        report.update(
            {
                "layout": "legacy",
                "vlobs": args.vlobs,
                "blocks": args.blocks,
                "rows": before,
                "database_bytes": size0,
                "fill_seconds": fill_seconds,
                "steps": [
                    {
                        "name": conversion.name,
                        "command": conversion.command,
                        "seconds": conversion.run.seconds,
                        "returncode": conversion.run.returncode,
                        "output": conversion.run.lines,
                        "wal_bytes": conversion.wal_bytes,
                        "database_bytes": conversion.db_size,
                    }
                ],
                "failures": checks.failures,
            }
        )
    finally:
        if args.keep:
            say(f"\nkept: {url}")
        else:
            await drop_database(args.postgresql_url, name)
    if checks.failures:
        say(f"\n{len(checks.failures)} check(s) failed: {'; '.join(checks.failures)}")
        return 1
    say("\nall checks passed")
    return 0


# --------------------------------------------------------------------------- main


def default_parsec() -> str:
    beside = Path(sys.executable).parent / "parsec"
    return str(beside) if beside.exists() else (shutil.which("parsec") or "parsec")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time the takeover and hand-back of a large Parsec 2.0.0 database."
    )
    parser.add_argument(
        "--vlobs",
        type=int,
        default=1_000_000,
        help="vlob versions (vlob_atom rows, re-encryption copies included)",
    )
    parser.add_argument(
        "--blocks", type=int, default=100_000, help="blocks (block and block_data rows, 4 KiB each)"
    )
    parser.add_argument("--organizations", type=int, default=50)
    parser.add_argument("--users-per-org", type=int, default=20)
    parser.add_argument("--realms-per-org", type=int, default=8)
    parser.add_argument(
        "--postgresql-url",
        default=DEFAULT_POSTGRESQL_URL,
        help="server where the databases are created (any database of it)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the databases (their names are printed)"
    )
    parser.add_argument("--parsec", default=default_parsec(), help="our `parsec` command")
    parser.add_argument(
        "--reference-parsec",
        default=str(REFERENCE_PARSEC),
        help="the Parsec 2.0.0 `parsec` command",
    )
    parser.add_argument("--seed", type=int, default=2021)
    parser.add_argument(
        "--legacy",
        action="store_true",
        help="instead, time our migrate on a database in our previous layout (conversion"
        " to the Parsec 2.0.0 layout, then the extras)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.vlobs < 1 or args.blocks < 1 or args.organizations < 1:
        parser.error("--vlobs, --blocks and --organizations must be positive")
    if args.users_per_org < 3 or args.realms_per_org < 1:
        parser.error("--users-per-org must be at least 3, --realms-per-org at least 1")
    return args


async def main_async(args: argparse.Namespace, report: dict[str, Any]) -> int:
    """Run everything; fill `report` with the figures; return the exit status."""
    name = f"size_{secrets.token_hex(4)}"
    fresh_name = f"{name}_fresh"
    url = database_url(args.postgresql_url, name)
    fresh_url = database_url(args.postgresql_url, fresh_name)
    checks = Checks()
    steps: list[Step] = []
    total = Clock()
    say(f"database {name} on {urlsplit(args.postgresql_url).hostname}")
    await create_database(args.postgresql_url, name)
    try:
        say("\n== schema: Parsec 2.0.0 `parsec backend migrate`")
        run = await run_command([args.reference_parsec, "backend", "migrate", "--db", url])
        if run.returncode != 0:
            say("the reference's migrate failed")
            return 1

        say("\n== fill")
        clock = Clock()
        rnd = random.Random(args.seed)
        ids = build_identities(rnd, args.organizations, args.users_per_org, args.realms_per_org)
        say(f"    certificates built in Python: {fmt_duration(clock.elapsed())}")
        plan = plan_vlobs(rnd, ids, args.vlobs)
        fill_timings = await fill(url, args, ids, plan)
        fill_seconds = clock.elapsed()
        size0, _ = await database_size_and_wal(url)
        async with connected(url) as conn:
            columns = await reference_columns(conn)
            duplicates = await conn.fetchval(
                "SELECT count(*) FROM (SELECT index, row_number() OVER (PARTITION BY recipient"
                " ORDER BY _id) AS position FROM message) m WHERE index <> position"
            )
        say(f"    filled in {fmt_duration(fill_seconds)}: database {fmt_bytes(size0)}")
        for table, total_size, index_size in await table_sizes(url):
            say(f"      {table:<20} {fmt_bytes(total_size):>10} (indexes {fmt_bytes(index_size)})")
        base = await snapshot(url, columns)
        say("    rows: " + ", ".join(f"{t} {n:,}" for t, n in base.counts.items()))
        say(f"    checksum of every row: {base.seconds:.1f} s")
        if base.counts["vlob_atom"] != args.vlobs:
            checks.check(False, f"vlob_atom rows = --vlobs ({base.counts['vlob_atom']:,})")

        # 1. Takeover
        takeover = Step("takeover", "our parsec backend migrate")
        steps.append(takeover)
        await run_step(takeover, [args.parsec, "backend", "migrate", "--db", url], url)
        assert takeover.run is not None
        ok, detail = migrate_lines_ok(takeover.run, ours=True)
        checks.check(ok, "takeover: five (already applied), extras applied", detail)
        compare_snapshots(checks, "takeover", base, await snapshot(url, columns))
        await check_takeover(checks, url, ids, duplicates)

        # 2. Hand-back
        downgrade = Step("hand-back", "our parsec backend downgrade")
        steps.append(downgrade)
        if not await command_exists(args.parsec, "backend", "downgrade"):
            downgrade.available = False
            say("\n== hand-back: `parsec backend downgrade` not available in this version")
        else:
            await run_step(downgrade, [args.parsec, "backend", "downgrade", "--db", url], url)
            assert downgrade.run is not None
            checks.check(downgrade.run.returncode == 0, "hand-back: downgrade exits 0")
            compare_snapshots(checks, "hand-back", base, await snapshot(url, columns))
            say("\n== Parsec 2.0.0 `parsec backend migrate --dry-run` on the handed-back database")
            ref = await run_command(
                [args.reference_parsec, "backend", "migrate", "--db", url, "--dry-run"]
            )
            ok, detail = migrate_lines_ok(ref, ours=False)
            checks.check(ok, "hand-back: Parsec 2.0.0 finds nothing to apply", detail)
            await create_database(args.postgresql_url, fresh_name)
            fresh = await run_command(
                [args.reference_parsec, "backend", "migrate", "--db", fresh_url], indent="      "
            )
            if fresh.returncode == 0:
                diff = list(
                    difflib.unified_diff(
                        await schema_dump(fresh_url),
                        await schema_dump(url),
                        "fresh",
                        "handed back",
                        lineterm="",
                        n=0,
                    )
                )
                checks.check(
                    not diff,
                    "hand-back: pg_dump --schema-only equals a fresh Parsec 2.0.0 database's",
                    "\n" + "\n".join(diff[:40]) if diff else "",
                )

            # An interrupted takeover leaves the database as it was.
            await interrupted_takeover(
                checks,
                args,
                url,
                fresh_url if fresh.returncode == 0 else None,
                base,
                columns,
                takeover.run.seconds / 2,
            )

            # 3. Takeover again
            again = Step("takeover again", "our parsec backend migrate")
            steps.append(again)
            await run_step(again, [args.parsec, "backend", "migrate", "--db", url], url)
            assert again.run is not None
            ok, detail = migrate_lines_ok(again.run, ours=True)
            checks.check(ok, "takeover again: five (already applied), extras applied", detail)
            compare_snapshots(checks, "takeover again", base, await snapshot(url, columns))

        # Summary
        say("\n== figures")
        say(
            f"    database: {args.vlobs:,} vlob versions ({plan.copies:,} of them re-encryption"
            f" copies), {args.blocks:,} blocks of {BLOCK_SIZE} bytes,"
            f" {base.counts['user_']:,} users, {base.counts['device']:,} devices,"
            f" {base.counts['realm']:,} realms, {base.counts['message']:,} messages;"
            f" {fmt_bytes(size0)}"
        )
        say(f"    fill: {fmt_duration(fill_seconds)}")
        say(
            f"    {'step':<16} {'command':<30} {'wall time':>12} {'WAL (cluster)':>14}"
            f" {'database':>10}"
        )
        for step in steps:
            if not step.available or step.run is None:
                say(f"    {step.name:<16} {step.command:<30} {'not available':>12}")
                continue
            say(
                f"    {step.name:<16} {step.command:<30} {fmt_duration(step.run.seconds):>12}"
                f" {fmt_bytes(step.wal_bytes):>14} {fmt_bytes(step.db_size):>10}"
            )
        say(f"    total run: {fmt_duration(total.elapsed())}")
        report.update(
            {
                "vlobs": args.vlobs,
                "blocks": args.blocks,
                "rows": base.counts,
                "database_bytes": size0,
                "fill_seconds": fill_seconds,
                "fill": fill_timings,
                "steps": [
                    {
                        "name": s.name,
                        "command": s.command,
                        "available": s.available,
                        "seconds": s.run.seconds if s.run else None,
                        "returncode": s.run.returncode if s.run else None,
                        "output": s.run.lines if s.run else None,
                        "wal_bytes": s.wal_bytes,
                        "database_bytes": s.db_size,
                    }
                    for s in steps
                ],
                "failures": checks.failures,
            }
        )
    finally:
        await drop_database(args.postgresql_url, fresh_name)
        if args.keep:
            say(f"\nkept: {url}")
        else:
            await drop_database(args.postgresql_url, name)
    if checks.failures:
        say(f"\n{len(checks.failures)} check(s) failed: {'; '.join(checks.failures)}")
        return 1
    say("\nall checks passed")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict[str, Any] = {}
    status = asyncio.run((legacy_main_async if args.legacy else main_async)(args, report))
    if args.json and report:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
