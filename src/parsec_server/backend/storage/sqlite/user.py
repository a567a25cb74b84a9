"""Users and devices. Writes run in the writer thread: a check and the write it allows
are never separated by another command (no row locks needed)."""

from __future__ import annotations

import dataclasses
import sqlite3

from parsec_server.api.codec import DateTime
from parsec_server.api.ids import UserProfile
from parsec_server.backend.audit import STREAM_ONLY, AuditLog
from parsec_server.backend.events import EventBus
from parsec_server.backend.organization import Organization, OrganizationSettings
from parsec_server.backend.storage.rows import (
    human_handle_of,
    sql_own_label_certificate,
    verify_key_of,
)
from parsec_server.backend.storage.sqlite.database import SQLiteDatabase
from parsec_server.backend.storage.sqlite.utils import (
    complete_now,
    from_db_optional_timestamp,
    from_db_timestamp,
    now_timestamp,
    to_db_timestamp,
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

SQL_ORGANIZATION = "SELECT _id FROM organization WHERE organization_id = ?"

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
JOIN device d ON d.organization = o._id AND d.device_id = ?2
JOIN user_ u ON u._id = d.user_
LEFT JOIN ext_user_frozen f ON f.user_ = u._id
LEFT JOIN human h ON h._id = u.human
LEFT JOIN device uc ON uc._id = u.user_certifier
LEFT JOIN device ur ON ur._id = u.revoked_user_certifier
LEFT JOIN device dc ON dc._id = d.device_certifier
WHERE o.organization_id = ?1
"""

_SQL_SETTINGS = """
SELECT active_users_limit, user_profile_outsider_allowed
FROM ext_organization_settings WHERE organization = ?
"""

_SQL_COUNT_ACTIVE_USERS = """
SELECT count(*) FROM user_ u
WHERE u.organization = ? AND u.revoked_on IS NULL
    AND NOT EXISTS (SELECT 1 FROM ext_user_frozen f WHERE f.user_ = u._id)
"""

_SQL_USER_SUMMARIES = f"""
SELECT
    u._id, u.user_id, u.profile, h.email, h.label,
    {sql_own_label_certificate("u")} AS own_label_certificate,
    u.created_on, u.revoked_on, f.user_ IS NOT NULL AS frozen
FROM user_ u
LEFT JOIN human h ON h._id = u.human
LEFT JOIN ext_user_frozen f ON f.user_ = u._id
WHERE u.organization = (SELECT _id FROM organization WHERE organization_id = ?1)
"""
_SQL_LIST_USERS = _SQL_USER_SUMMARIES + "ORDER BY u.user_id"
_SQL_FIND_USER_BY_ID = _SQL_USER_SUMMARIES + "AND u.user_id = ?2"
_SQL_FIND_USER_BY_EMAIL = _SQL_USER_SUMMARIES + "AND h.email = ?2 AND u.revoked_on IS NULL"
_SQL_FREEZE = "INSERT INTO ext_user_frozen (user_, frozen_on) VALUES (?, ?) ON CONFLICT DO NOTHING"
_SQL_UNFREEZE = "DELETE FROM ext_user_frozen WHERE user_ = ?"

_SQL_USER_EXISTS = "SELECT 1 FROM user_ WHERE organization = ? AND user_id = ?"

_SQL_EMAIL_TAKEN = """
SELECT 1 FROM user_ u JOIN human h ON h._id = u.human
WHERE h.organization = ? AND h.email = ? AND u.revoked_on IS NULL
"""

# One row per email: a user reusing the email of a revoked one takes over the row, with its
# own label (the revoked user's label stays in its certificate: `sql_own_label_certificate`).
_SQL_UPSERT_HUMAN = """
INSERT INTO human (organization, email, label) VALUES (?, ?, ?)
ON CONFLICT (organization, email) DO UPDATE SET label = excluded.label
RETURNING _id
"""

_SQL_INSERT_USER = """
INSERT INTO user_ (
    organization, user_id, profile, user_certificate, redacted_user_certificate,
    user_certifier, created_on, human
)
VALUES (
    ?1, ?2, ?3, ?4, ?5,
    (SELECT _id FROM device WHERE organization = ?1 AND device_id = ?6), ?7, ?8
)
"""

_SQL_INSERT_DEVICE = """
INSERT INTO device (
    organization, user_, device_id, device_label, device_certificate,
    redacted_device_certificate, verify_key, device_certifier, created_on
)
VALUES (
    ?1,
    (SELECT _id FROM user_ WHERE organization = ?1 AND user_id = ?2),
    ?3, ?4, ?5, ?6, ?7,
    (SELECT _id FROM device WHERE organization = ?1 AND device_id = ?8),
    ?9
)
ON CONFLICT (organization, device_id) DO NOTHING
"""

_SQL_GET_USER = """
SELECT
    u._id, u.user_certificate, u.redacted_user_certificate, u.revoked_user_certificate,
    uc.device_id AS user_certifier, ur.device_id AS revoker
FROM user_ u
LEFT JOIN device uc ON uc._id = u.user_certifier
LEFT JOIN device ur ON ur._id = u.revoked_user_certifier
WHERE u.organization = (SELECT _id FROM organization WHERE organization_id = ?)
    AND u.user_id = ?
"""

_SQL_GET_USER_DEVICES = """
SELECT d.device_certificate, d.redacted_device_certificate, dc.device_id AS device_certifier
FROM device d LEFT JOIN device dc ON dc._id = d.device_certifier
WHERE d.user_ = ?
ORDER BY d._id
"""

_SQL_GET_CERTIFIED_DEVICE = """
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
WHERE d.organization = (SELECT _id FROM organization WHERE organization_id = ?)
    AND d.device_id = ?
"""

_SQL_REVOKE = """
UPDATE user_ SET
    revoked_on = ?3,
    revoked_user_certificate = ?4,
    revoked_user_certifier = (
        SELECT _id FROM device WHERE organization = user_.organization AND device_id = ?5
    )
WHERE organization = (SELECT _id FROM organization WHERE organization_id = ?1)
    AND user_id = ?2 AND revoked_on IS NULL
RETURNING _id
"""

_SQL_USER_EXISTS_BY_ORG_ID = """
SELECT 1 FROM user_
WHERE organization = (SELECT _id FROM organization WHERE organization_id = ?) AND user_id = ?
"""

_SQL_HUMAN_CANDIDATES = f"""
SELECT
    u.user_id, h.email, h.label, {sql_own_label_certificate("u")} AS own_label_certificate,
    u.revoked_on
FROM user_ u LEFT JOIN human h ON h._id = u.human
WHERE u.organization = (SELECT _id FROM organization WHERE organization_id = ?)
"""


def insert_user_and_device(
    conn: sqlite3.Connection, organization: int, user: User, device: Device
) -> None:
    """Within the caller's write transaction; the caller has checked uniqueness."""
    human = None
    if user.human_handle is not None:
        email, label = user.human_handle
        human = conn.execute(_SQL_UPSERT_HUMAN, (organization, email, label)).fetchone()[0]
    conn.execute(
        _SQL_INSERT_USER,
        (
            organization,
            user.user_id,
            user.profile.value,
            user.user_certificate,
            user.redacted_user_certificate,
            user.user_certifier,
            to_db_timestamp(user.created_on),
            human,
        ),
    )
    _insert_device(conn, organization, device)


def _insert_device(conn: sqlite3.Connection, organization: int, device: Device) -> bool:
    cursor = conn.execute(
        _SQL_INSERT_DEVICE,
        (
            organization,
            device.user_id,
            device.device_id,
            device.device_label,
            device.device_certificate,
            device.redacted_device_certificate,
            device.verify_key,
            device.device_certifier,
            to_db_timestamp(device.created_on),
        ),
    )
    return cursor.rowcount == 1


def _get_identity(
    conn: sqlite3.Connection, organization_id: str, device_id: str
) -> tuple[Organization, User, Device] | None:
    row = conn.execute(_SQL_GET_IDENTITY, (organization_id, device_id)).fetchone()
    if row is None:
        return None
    organization = Organization(
        organization_id=row["organization_id"],
        bootstrap_token=row["bootstrap_token"],
        expiration_date=from_db_optional_timestamp(row["expiration_date"]),
        root_verify_key=row["root_verify_key"],
    )
    user = User(
        user_id=row["user_id"],
        human_handle=human_handle_of(row),
        profile=UserProfile(row["profile"]),
        user_certificate=row["user_certificate"],
        redacted_user_certificate=row["redacted_user_certificate"],
        user_certifier=row["user_certifier"],
        created_on=from_db_timestamp(row["user_created_on"]),
        revoked_on=from_db_optional_timestamp(row["revoked_on"]),
        revoked_user_certificate=row["revoked_user_certificate"],
        revoked_user_certifier=row["revoker"],
        frozen=bool(row["frozen"]),
    )
    device = Device(
        device_id=row["device_id"],
        device_label=row["device_label"],
        device_certificate=row["device_certificate"],
        redacted_device_certificate=row["redacted_device_certificate"],
        device_certifier=row["device_certifier"],
        created_on=from_db_timestamp(row["device_created_on"]),
        verify_key=verify_key_of(row),
    )
    return organization, user, device


def _create_user(
    conn: sqlite3.Connection, organization_id: str, user: User, first_device: Device
) -> UserCreateBadOutcome | None:
    organization: int = conn.execute(SQL_ORGANIZATION, (organization_id,)).fetchone()[0]
    if conn.execute(_SQL_USER_EXISTS, (organization, user.user_id)).fetchone():
        return UserCreateBadOutcome.USER_ALREADY_EXISTS
    if (
        user.human_handle is not None
        and conn.execute(_SQL_EMAIL_TAKEN, (organization, user.human_handle[0])).fetchone()
    ):
        return UserCreateBadOutcome.HUMAN_HANDLE_ALREADY_TAKEN
    settings_row = conn.execute(_SQL_SETTINGS, (organization,)).fetchone()
    settings = (
        OrganizationSettings()
        if settings_row is None
        else OrganizationSettings(
            settings_row["active_users_limit"], bool(settings_row["user_profile_outsider_allowed"])
        )
    )
    # Users are only counted when there is a limit.
    active_users = (
        0
        if settings.active_users_limit is None
        else conn.execute(_SQL_COUNT_ACTIVE_USERS, (organization,)).fetchone()[0]
    )
    refused = creation_refused(settings, user.profile, active_users)
    if refused is not None:
        return refused
    insert_user_and_device(conn, organization, user, first_device)
    return None


def _create_device(
    conn: sqlite3.Connection, organization_id: str, device: Device
) -> DeviceCreateBadOutcome | None:
    organization: int = conn.execute(SQL_ORGANIZATION, (organization_id,)).fetchone()[0]
    if not _insert_device(conn, organization, device):
        return DeviceCreateBadOutcome.ALREADY_EXISTS
    return None


def _certified_devices(
    conn: sqlite3.Connection, organization_id: str, device_ids: set[str]
) -> dict[str, CertifiedDevice]:
    found: dict[str, CertifiedDevice] = {}
    for device_id in device_ids:
        r = conn.execute(_SQL_GET_CERTIFIED_DEVICE, (organization_id, device_id)).fetchone()
        if r is not None:
            found[device_id] = CertifiedDevice(
                r["device_certificate"],
                r["redacted_device_certificate"],
                r["device_certifier"],
                r["user_certificate"],
                r["redacted_user_certificate"],
                r["user_certifier"],
                r["revoked_user_certificate"],
                r["revoker"],
            )
    return found


def _user_with_trustchain(
    conn: sqlite3.Connection, organization_id: str, user_id: str, redacted: bool
) -> UserWithTrustchain | None:
    row = conn.execute(_SQL_GET_USER, (organization_id, user_id)).fetchone()
    if row is None:
        return None
    devices = conn.execute(_SQL_GET_USER_DEVICES, (row["_id"],)).fetchall()
    start = [row["user_certifier"], row["revoker"]]
    start += [d["device_certifier"] for d in devices]

    async def fetch(ids: set[str]) -> dict[str, CertifiedDevice]:
        return _certified_devices(conn, organization_id, ids)

    # The whole walk in this thread, on this transaction's snapshot.
    trustchain = complete_now(walk_trustchain(start, fetch, redacted))
    return UserWithTrustchain(
        user_certificate=row["redacted_user_certificate" if redacted else "user_certificate"],
        revoked_user_certificate=row["revoked_user_certificate"],
        device_certificates=[
            d["redacted_device_certificate" if redacted else "device_certificate"] for d in devices
        ],
        trustchain=trustchain,
    )


def _revoke_user(
    conn: sqlite3.Connection,
    organization_id: str,
    user_id: str,
    revoked_user_certificate: bytes,
    revoked_user_certifier: str,
    revoked_on: DateTime,
) -> UserRevokeBadOutcome | None:
    revoked = conn.execute(
        _SQL_REVOKE,
        (
            organization_id,
            user_id,
            to_db_timestamp(revoked_on),
            revoked_user_certificate,
            revoked_user_certifier,
        ),
    ).fetchone()
    if revoked is not None:
        return None
    if conn.execute(_SQL_USER_EXISTS_BY_ORG_ID, (organization_id, user_id)).fetchone():
        return UserRevokeBadOutcome.ALREADY_REVOKED
    return UserRevokeBadOutcome.NOT_FOUND


def _human_candidates(conn: sqlite3.Connection, organization_id: str) -> list[HumanCandidate]:
    rows = conn.execute(_SQL_HUMAN_CANDIDATES, (organization_id,)).fetchall()
    return [
        HumanCandidate(
            r["user_id"], human_handle_of(r), from_db_optional_timestamp(r["revoked_on"])
        )
        for r in rows
    ]


def _list_users(conn: sqlite3.Connection, organization_id: str) -> list[UserSummary] | None:
    rows = conn.execute(_SQL_LIST_USERS, (organization_id,)).fetchall()
    if not rows and conn.execute(SQL_ORGANIZATION, (organization_id,)).fetchone() is None:
        return None
    return [_summary_from_row(row) for row in rows]


def _set_frozen(
    conn: sqlite3.Connection,
    organization_id: str,
    user_id: str | None,
    email: str | None,
    frozen: bool,
) -> UserSummary | UserFreezeBadOutcome:
    if user_id is not None:
        row = conn.execute(_SQL_FIND_USER_BY_ID, (organization_id, user_id)).fetchone()
    else:
        row = conn.execute(_SQL_FIND_USER_BY_EMAIL, (organization_id, email)).fetchone()
    if row is None:
        if conn.execute(SQL_ORGANIZATION, (organization_id,)).fetchone() is not None:
            return UserFreezeBadOutcome.USER_NOT_FOUND
        return UserFreezeBadOutcome.ORGANIZATION_NOT_FOUND
    if frozen:
        conn.execute(_SQL_FREEZE, (row["_id"], now_timestamp()))
    else:
        conn.execute(_SQL_UNFREEZE, (row["_id"],))
    return dataclasses.replace(_summary_from_row(row), frozen=frozen)


def _summary_from_row(row: sqlite3.Row) -> UserSummary:
    return UserSummary(
        user_id=row["user_id"],
        human_handle=human_handle_of(row),
        profile=UserProfile(row["profile"]),
        created_on=from_db_timestamp(row["created_on"]),
        revoked_on=from_db_optional_timestamp(row["revoked_on"]),
        frozen=bool(row["frozen"]),
    )


class SQLiteUserComponent(BaseUserComponent):
    def __init__(
        self, database: SQLiteDatabase, event_bus: EventBus, audit: AuditLog = STREAM_ONLY
    ) -> None:
        super().__init__(event_bus, audit)
        self._db = database

    async def get_identity(
        self, organization_id: str, device_id: str
    ) -> tuple[Organization, User, Device] | None:
        return await self._db.read(_get_identity, organization_id, device_id)

    async def create_user(
        self, organization_id: str, user: User, first_device: Device
    ) -> UserCreateBadOutcome | None:
        return await self._db.write(_create_user, organization_id, user, first_device)

    async def create_device(
        self, organization_id: str, device: Device
    ) -> DeviceCreateBadOutcome | None:
        return await self._db.write(_create_device, organization_id, device)

    async def get_user_with_trustchain(
        self, organization_id: str, user_id: str, redacted: bool
    ) -> UserWithTrustchain | None:
        return await self._db.read(_user_with_trustchain, organization_id, user_id, redacted)

    async def certified_devices(
        self, organization_id: str, device_ids: set[str]
    ) -> dict[str, CertifiedDevice]:
        return await self._db.read(_certified_devices, organization_id, device_ids)

    async def revoke_user(
        self,
        organization_id: str,
        user_id: str,
        revoked_user_certificate: bytes,
        revoked_user_certifier: str,
        revoked_on: DateTime,
    ) -> UserRevokeBadOutcome | None:
        return await self._db.write(
            _revoke_user,
            organization_id,
            user_id,
            revoked_user_certificate,
            revoked_user_certifier,
            revoked_on,
        )

    async def human_candidates(self, organization_id: str) -> list[HumanCandidate]:
        return await self._db.read(_human_candidates, organization_id)

    async def list_users(self, organization_id: str) -> list[UserSummary] | None:
        return await self._db.read(_list_users, organization_id)

    async def set_frozen(
        self, organization_id: str, user_id: str | None, email: str | None, frozen: bool
    ) -> UserSummary | UserFreezeBadOutcome:
        return await self._db.write(_set_frozen, organization_id, user_id, email, frozen)
