from __future__ import annotations

import dataclasses

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from parsec_server.api.codec import DateTime
from parsec_server.api.ids import UserProfile
from parsec_server.backend.audit import STREAM_ONLY, AuditLog
from parsec_server.backend.events import EventBus
from parsec_server.backend.organization import Organization, OrganizationSettings
from parsec_server.backend.storage.postgresql.utils import to_datetime
from parsec_server.backend.storage.rows import (
    human_handle_of,
    sql_own_label_certificate,
    verify_key_of,
)
from parsec_server.backend.user import (
    BaseUserComponent,
    CertifiedDevice,
    DeviceCreateBadOutcome,
    HumanCandidate,
    UserCreateBadOutcome,
    UserFreezeBadOutcome,
    UserRevokeBadOutcome,
    creation_refused,
    walk_trustchain,
)
from parsec_server.backend.user_types import Device, User, UserSummary, UserWithTrustchain

_SQL_GET_IDENTITY = f"""
SELECT
    o.organization_id, o.bootstrap_token, o.expiration_date, o.root_verify_key,
    u.user_id, u.profile, h.email, h.label,
    {sql_own_label_certificate("u")} AS own_label_certificate,
    u.user_certificate, u.redacted_user_certificate,
    uc.device_id AS user_certifier, u.created_on AS user_created_on, u.revoked_on,
    u.revoked_user_certificate, ur.device_id AS revoker,
    d.device_id, d.device_label, d.device_certificate, d.redacted_device_certificate,
    dc.device_id AS device_certifier, d.created_on AS device_created_on, d.verify_key,
    f.user_ IS NOT NULL AS frozen
FROM organization o
JOIN device d ON d.organization = o._id AND d.device_id = $2
JOIN user_ u ON u._id = d.user_
LEFT JOIN ext_user_frozen f ON f.user_ = u._id
LEFT JOIN human h ON h._id = u.human
LEFT JOIN device uc ON uc._id = u.user_certifier
LEFT JOIN device ur ON ur._id = u.revoked_user_certifier
LEFT JOIN device dc ON dc._id = d.device_certifier
WHERE o.organization_id = $1
"""

# What the organization's settings allow (after _SQL_LOCK_ORGANIZATION): users are only
# counted when there is a limit.
_SQL_CREATION_RULES = """
SELECT
    s.active_users_limit,
    COALESCE(s.user_profile_outsider_allowed, TRUE) AS outsider_allowed,
    CASE WHEN s.active_users_limit IS NULL THEN 0 ELSE (
        SELECT count(*) FROM user_ u
        WHERE u.organization = $1 AND u.revoked_on IS NULL
            AND NOT EXISTS (SELECT 1 FROM ext_user_frozen f WHERE f.user_ = u._id)
    ) END AS active_users
FROM (SELECT $1::integer AS organization) o
LEFT JOIN ext_organization_settings s ON s.organization = o.organization
"""

_SQL_USER_SUMMARIES = f"""
SELECT
    u._id, u.user_id, u.profile::text AS profile, h.email, h.label,
    {sql_own_label_certificate("u")} AS own_label_certificate,
    u.created_on, u.revoked_on, f.user_ IS NOT NULL AS frozen
FROM user_ u
LEFT JOIN human h ON h._id = u.human
LEFT JOIN ext_user_frozen f ON f.user_ = u._id
WHERE u.organization = (SELECT _id FROM organization WHERE organization_id = $1)
"""
_SQL_LIST_USERS = _SQL_USER_SUMMARIES + "ORDER BY u.user_id"
# By id ($2), or the non-revoked user of an email ($3)
_SQL_FIND_USER = (
    _SQL_USER_SUMMARIES
    + """AND CASE WHEN $2::text IS NOT NULL THEN u.user_id = $2
        ELSE h.email = $3 AND u.revoked_on IS NULL END
FOR UPDATE OF u"""
)
_SQL_ORGANIZATION_EXISTS = "SELECT 1 FROM organization WHERE organization_id = $1"
_SQL_FREEZE = """
INSERT INTO ext_user_frozen (user_, frozen_on) VALUES ($1, now()) ON CONFLICT DO NOTHING
"""
_SQL_UNFREEZE = "DELETE FROM ext_user_frozen WHERE user_ = $1"

_SQL_LOCK_ORGANIZATION = """
SELECT _id FROM organization WHERE organization_id = $1 FOR UPDATE
"""

_SQL_USER_EXISTS = "SELECT 1 FROM user_ WHERE organization = $1 AND user_id = $2"

_SQL_EMAIL_TAKEN = """
SELECT 1 FROM user_ u JOIN human h ON h._id = u.human
WHERE h.organization = $1 AND h.email = $2 AND u.revoked_on IS NULL
"""

# One row per email: a user reusing the email of a revoked one takes over the row, with its
# own label (the revoked user's label stays in its certificate: `sql_own_label_certificate`).
_SQL_UPSERT_HUMAN = """
INSERT INTO human (organization, email, label) VALUES ($1, $2, $3)
ON CONFLICT (organization, email) DO UPDATE SET label = EXCLUDED.label
RETURNING _id
"""

_SQL_INSERT_USER = """
INSERT INTO user_ (
    organization, user_id, profile, user_certificate, redacted_user_certificate,
    user_certifier, created_on, human
)
VALUES (
    $1, $2, $3, $4, $5,
    (SELECT _id FROM device WHERE organization = $1 AND device_id = $6), $7, $8
)
RETURNING _id
"""

_SQL_INSERT_DEVICE = """
INSERT INTO device (
    organization, user_, device_id, device_label, device_certificate,
    redacted_device_certificate, verify_key, device_certifier, created_on
)
VALUES (
    $1,
    (SELECT _id FROM user_ WHERE organization = $1 AND user_id = $2),
    $3, $4, $5, $6, $7,
    (SELECT _id FROM device WHERE organization = $1 AND device_id = $8),
    $9
)
ON CONFLICT (organization, device_id) DO NOTHING
RETURNING _id
"""

_SQL_GET_USER_AND_DEVICES = """
SELECT
    u.user_certificate, u.redacted_user_certificate, u.revoked_user_certificate,
    uc.device_id AS user_certifier, ur.device_id AS revoker,
    ARRAY(
        SELECT ROW(d.device_certificate, d.redacted_device_certificate, dc.device_id)
        FROM device d LEFT JOIN device dc ON dc._id = d.device_certifier
        WHERE d.user_ = u._id ORDER BY d._id
    ) AS devices
FROM user_ u
LEFT JOIN device uc ON uc._id = u.user_certifier
LEFT JOIN device ur ON ur._id = u.revoked_user_certifier
WHERE u.organization = (SELECT _id FROM organization WHERE organization_id = $1)
    AND u.user_id = $2
"""

_SQL_GET_CERTIFIED_DEVICES = """
SELECT
    d.device_id, d.device_certificate, d.redacted_device_certificate,
    dc.device_id AS device_certifier,
    u.user_certificate, u.redacted_user_certificate, uc.device_id AS user_certifier,
    u.revoked_user_certificate, ur.device_id AS revoker
FROM device d
JOIN user_ u ON u._id = d.user_
LEFT JOIN device dc ON dc._id = d.device_certifier
LEFT JOIN device uc ON uc._id = u.user_certifier
LEFT JOIN device ur ON ur._id = u.revoked_user_certifier
WHERE d.organization = (SELECT _id FROM organization WHERE organization_id = $1)
    AND d.device_id = ANY($2::text[])
"""

_SQL_REVOKE = """
UPDATE user_ SET
    revoked_on = $3,
    revoked_user_certificate = $4,
    revoked_user_certifier = (
        SELECT _id FROM device WHERE organization = user_.organization AND device_id = $5
    )
WHERE organization = (SELECT _id FROM organization WHERE organization_id = $1)
    AND user_id = $2 AND revoked_on IS NULL
RETURNING _id
"""

_SQL_USER_EXISTS_BY_ORG_ID = """
SELECT 1 FROM user_
WHERE organization = (SELECT _id FROM organization WHERE organization_id = $1) AND user_id = $2
"""

_SQL_HUMAN_CANDIDATES = f"""
SELECT
    u.user_id, h.email, h.label, {sql_own_label_certificate("u")} AS own_label_certificate,
    u.revoked_on
FROM user_ u LEFT JOIN human h ON h._id = u.human
WHERE u.organization = (SELECT _id FROM organization WHERE organization_id = $1)
"""


async def insert_user_and_device(
    conn: asyncpg.Connection, organization: int, user: User, device: Device
) -> None:
    """Within the caller's transaction; the caller has checked uniqueness."""
    human = None
    if user.human_handle is not None:
        email, label = user.human_handle
        human = await conn.fetchval(_SQL_UPSERT_HUMAN, organization, email, label)
    await conn.execute(
        _SQL_INSERT_USER,
        organization,
        user.user_id,
        user.profile.value,
        user.user_certificate,
        user.redacted_user_certificate,
        user.user_certifier,
        user.created_on.dt,
        human,
    )
    await _insert_device(conn, organization, device)


async def _insert_device(conn: asyncpg.Connection, organization: int, device: Device) -> bool:
    inserted = await conn.fetchval(
        _SQL_INSERT_DEVICE,
        organization,
        device.user_id,
        device.device_id,
        device.device_label,
        device.device_certificate,
        device.redacted_device_certificate,
        device.verify_key,
        device.device_certifier,
        device.created_on.dt,
    )
    return inserted is not None


async def _certified_devices(
    conn: asyncpg.Connection, organization_id: str, device_ids: set[str]
) -> dict[str, CertifiedDevice]:
    rows = await conn.fetch(_SQL_GET_CERTIFIED_DEVICES, organization_id, list(device_ids))
    return {
        r["device_id"]: CertifiedDevice(
            r["device_certificate"],
            r["redacted_device_certificate"],
            r["device_certifier"],
            r["user_certificate"],
            r["redacted_user_certificate"],
            r["user_certifier"],
            r["revoked_user_certificate"],
            r["revoker"],
        )
        for r in rows
    }


class PGUserComponent(BaseUserComponent):
    def __init__(
        self, pool: asyncpg.Pool, event_bus: EventBus, audit: AuditLog = STREAM_ONLY
    ) -> None:
        super().__init__(event_bus, audit)
        self._pool = pool

    async def get_identity(
        self, organization_id: str, device_id: str
    ) -> tuple[Organization, User, Device] | None:
        row = await self._pool.fetchrow(_SQL_GET_IDENTITY, organization_id, device_id)
        if row is None:
            return None
        organization = Organization(
            organization_id=row["organization_id"],
            bootstrap_token=row["bootstrap_token"],
            expiration_date=to_datetime(row["expiration_date"]),
            root_verify_key=row["root_verify_key"],
        )
        user = User(
            user_id=row["user_id"],
            human_handle=human_handle_of(row),
            profile=UserProfile(row["profile"]),
            user_certificate=row["user_certificate"],
            redacted_user_certificate=row["redacted_user_certificate"],
            user_certifier=row["user_certifier"],
            created_on=DateTime(row["user_created_on"]),
            revoked_on=to_datetime(row["revoked_on"]),
            revoked_user_certificate=row["revoked_user_certificate"],
            revoked_user_certifier=row["revoker"],
            frozen=row["frozen"],
        )
        device = Device(
            device_id=row["device_id"],
            device_label=row["device_label"],
            device_certificate=row["device_certificate"],
            redacted_device_certificate=row["redacted_device_certificate"],
            device_certifier=row["device_certifier"],
            created_on=DateTime(row["device_created_on"]),
            verify_key=verify_key_of(row),
        )
        return organization, user, device

    async def create_user(
        self, organization_id: str, user: User, first_device: Device
    ) -> UserCreateBadOutcome | None:
        async with self._pool.acquire() as conn, conn.transaction():
            # Serializes user creations in the organization, so that two of them cannot
            # both take the same email.
            organization = await conn.fetchval(_SQL_LOCK_ORGANIZATION, organization_id)
            if await conn.fetchval(_SQL_USER_EXISTS, organization, user.user_id):
                return UserCreateBadOutcome.USER_ALREADY_EXISTS
            if user.human_handle is not None and await conn.fetchval(
                _SQL_EMAIL_TAKEN, organization, user.human_handle[0]
            ):
                return UserCreateBadOutcome.HUMAN_HANDLE_ALREADY_TAKEN
            rules = await conn.fetchrow(_SQL_CREATION_RULES, organization)
            settings = OrganizationSettings(rules["active_users_limit"], rules["outsider_allowed"])
            refused = creation_refused(settings, user.profile, rules["active_users"])
            if refused is not None:
                return refused
            await insert_user_and_device(conn, organization, user, first_device)
        return None

    async def create_device(
        self, organization_id: str, device: Device
    ) -> DeviceCreateBadOutcome | None:
        async with self._pool.acquire() as conn:
            organization = await conn.fetchval(
                "SELECT _id FROM organization WHERE organization_id = $1", organization_id
            )
            if not await _insert_device(conn, organization, device):
                return DeviceCreateBadOutcome.ALREADY_EXISTS
        return None

    async def get_user_with_trustchain(
        self, organization_id: str, user_id: str, redacted: bool
    ) -> UserWithTrustchain | None:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(_SQL_GET_USER_AND_DEVICES, organization_id, user_id)
            if row is None:
                return None

            start = [row["user_certifier"], row["revoker"]]
            start += [d[2] for d in row["devices"]]
            trustchain = await walk_trustchain(
                start, lambda ids: _certified_devices(conn, organization_id, ids), redacted
            )
        return UserWithTrustchain(
            user_certificate=row["redacted_user_certificate" if redacted else "user_certificate"],
            revoked_user_certificate=row["revoked_user_certificate"],
            device_certificates=[d[1] if redacted else d[0] for d in row["devices"]],
            trustchain=trustchain,
        )

    async def certified_devices(
        self, organization_id: str, device_ids: set[str]
    ) -> dict[str, CertifiedDevice]:
        async with self._pool.acquire() as conn:
            return await _certified_devices(conn, organization_id, device_ids)

    async def revoke_user(
        self,
        organization_id: str,
        user_id: str,
        revoked_user_certificate: bytes,
        revoked_user_certifier: str,
        revoked_on: DateTime,
    ) -> UserRevokeBadOutcome | None:
        async with self._pool.acquire() as conn:
            revoked = await conn.fetchval(
                _SQL_REVOKE,
                organization_id,
                user_id,
                revoked_on.dt,
                revoked_user_certificate,
                revoked_user_certifier,
            )
            if revoked is not None:
                return None
            if await conn.fetchval(_SQL_USER_EXISTS_BY_ORG_ID, organization_id, user_id):
                return UserRevokeBadOutcome.ALREADY_REVOKED
            return UserRevokeBadOutcome.NOT_FOUND

    async def human_candidates(self, organization_id: str) -> list[HumanCandidate]:
        rows = await self._pool.fetch(_SQL_HUMAN_CANDIDATES, organization_id)
        return [
            HumanCandidate(r["user_id"], human_handle_of(r), to_datetime(r["revoked_on"]))
            for r in rows
        ]

    async def list_users(self, organization_id: str) -> list[UserSummary] | None:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_SQL_LIST_USERS, organization_id)
            if not rows and not await conn.fetchval(_SQL_ORGANIZATION_EXISTS, organization_id):
                return None
        return [_summary_from_row(row) for row in rows]

    async def set_frozen(
        self, organization_id: str, user_id: str | None, email: str | None, frozen: bool
    ) -> UserSummary | UserFreezeBadOutcome:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_SQL_FIND_USER, organization_id, user_id, email)
            if row is None:
                if await conn.fetchval(_SQL_ORGANIZATION_EXISTS, organization_id):
                    return UserFreezeBadOutcome.USER_NOT_FOUND
                return UserFreezeBadOutcome.ORGANIZATION_NOT_FOUND
            await conn.execute(_SQL_FREEZE if frozen else _SQL_UNFREEZE, row["_id"])
        return dataclasses.replace(_summary_from_row(row), frozen=frozen)


def _summary_from_row(row: asyncpg.Record) -> UserSummary:
    return UserSummary(
        user_id=row["user_id"],
        human_handle=human_handle_of(row),
        profile=UserProfile(row["profile"]),
        created_on=DateTime(row["created_on"]),
        revoked_on=to_datetime(row["revoked_on"]),
        frozen=row["frozen"],
    )
