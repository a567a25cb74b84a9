"""What the SQL storages (PostgreSQL, SQLite) share: SQL fragments valid in both
dialects, the reading of their result rows, and the order in which a command's checks
become its outcome (the memory storage's order).

A row is anything indexed by column name (`asyncpg.Record`, `sqlite3.Row`). Columns
compared with roles hold the role's text (`'OWNER'` ...): `RealmRole` is a `StrEnum`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from parsec_server.api.certificates import DeviceCertificate, UserCertificate, unsecure_load
from parsec_server.api.codec import DateTime
from parsec_server.api.ids import HumanHandle, RealmRole, UserProfile
from parsec_server.backend.realm_types import (
    WRITE_ROLES,
    RealmBadOutcome,
    RoleGrant,
    can_change_role,
    check_role_timestamp,
)


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


def sql_own_label_certificate(user: str) -> str:
    """SQL: the user certificate of the `user_` row aliased `user` when its human row is
    shared with other users, NULL otherwise. A `human` row is shared by the users of one
    email (one non-revoked at most) and holds the label of the latest one (rows written
    before that rule hold the first one's): each user of a shared row finds its own label
    in its certificate. Reused emails are rare, and so is this certificate parsing."""
    return f"""
    CASE WHEN EXISTS (
        SELECT 1 FROM user_ other WHERE other.human = {user}.human AND other._id <> {user}._id
    ) THEN {user}.user_certificate END"""


# An invitation `i` with its greeter (`u`, `h`): the columns both storages read back
SQL_INVITATION_COLUMNS = f"""
    i.token, i.type, u.user_id AS greeter_user_id, h.email AS greeter_email,
    h.label AS greeter_label,
    {sql_own_label_certificate("u")} AS greeter_own_label_certificate,
    i.claimer_email, i.created_on, i.deleted_on
"""

SQL_INVITATION_JOINS = """
JOIN user_ u ON u._id = i.greeter
LEFT JOIN human h ON h._id = u.human
"""


def human_handle_of(row: Row, prefix: str = "") -> HumanHandle | None:
    """The human handle of a row selecting `<prefix>email`, `<prefix>label` and
    `<prefix>own_label_certificate` (`sql_own_label_certificate`)."""
    email = row[f"{prefix}email"]
    if email is None:
        return None
    certificate = row[f"{prefix}own_label_certificate"]
    if certificate is not None:
        handle = unsecure_load(UserCertificate, certificate).human_handle
        if handle is not None:
            return handle
    return (email, row[f"{prefix}label"])


def verify_key_of(row: Row) -> bytes:
    """The device's verify key: the stored copy (`verify_key`), or, for a device stored by
    Parsec 2.0.0 (which keeps none), the key of its certificate (`device_certificate`,
    checked when it was stored)."""
    stored: bytes | None = row["verify_key"]
    if stored is not None:
        return stored
    return unsecure_load(DeviceCertificate, row["device_certificate"]).verify_key


# --- Outcomes of the realm, vlob and block checks ----------------------------------------
# Rows select `role` (text, NULL: none), `in_maintenance` and, when it is checked,
# `encryption_revision`; None: the realm (or vlob) was not found.


def access_refused(
    row: Row, roles: frozenset[RealmRole], encryption_revision: int | None
) -> RealmBadOutcome | None:
    """The checks after finding the realm, in the memory storage's order: role,
    maintenance, encryption revision."""
    if row["role"] not in roles:
        return RealmBadOutcome.NOT_ALLOWED
    if row["in_maintenance"]:
        return RealmBadOutcome.IN_MAINTENANCE
    if encryption_revision is not None and encryption_revision != row["encryption_revision"]:
        return RealmBadOutcome.BAD_ENCRYPTION_REVISION
    return None


def _role(value: str | None) -> RealmRole | None:
    return None if value is None else RealmRole(value)


def role_update_refused(
    row: Row,
    grant: RoleGrant,
    subject_latest: DateTime | None,
    author_latest: DateTime | None,
) -> RealmBadOutcome | None:
    """realm_update_roles' checks, in the memory storage's order, on a row selecting
    `subject`, `subject_profile`, `realm`, `in_maintenance`, `existing_role` and
    `author_role`; the subject's and the author's latest role timestamps in that realm are
    given converted from the storage's form."""
    if row["subject"] is None:
        return RealmBadOutcome.USER_NOT_FOUND
    if row["subject_profile"] == UserProfile.OUTSIDER.value and grant.role in (
        RealmRole.OWNER,
        RealmRole.MANAGER,
    ):
        return RealmBadOutcome.INCOMPATIBLE_PROFILE
    if row["realm"] is None:
        return RealmBadOutcome.REALM_NOT_FOUND
    if row["in_maintenance"]:
        return RealmBadOutcome.IN_MAINTENANCE
    existing = _role(row["existing_role"])
    if not can_change_role(_role(row["author_role"]), existing, grant.role):
        return RealmBadOutcome.NOT_ALLOWED
    if existing == grant.role:
        return RealmBadOutcome.ALREADY_GRANTED
    return check_role_timestamp(grant.granted_on, subject_latest, author_latest)


def maintenance_refused(row: Row, encryption_revision: int) -> RealmBadOutcome | None:
    """The re-encryption batch commands: OWNER of a realm in maintenance towards
    `encryption_revision`."""
    if row["role"] != RealmRole.OWNER:
        return RealmBadOutcome.NOT_ALLOWED
    if not row["in_maintenance"]:
        return RealmBadOutcome.NOT_IN_MAINTENANCE
    if encryption_revision != row["encryption_revision"]:
        return RealmBadOutcome.BAD_ENCRYPTION_REVISION
    return None


def vlob_create_refused(row: Row | None, encryption_revision: int) -> RealmBadOutcome | None:
    """Also selects `vlob_exists`."""
    if row is None:
        return RealmBadOutcome.REALM_NOT_FOUND
    refused = access_refused(row, WRITE_ROLES, encryption_revision)
    if refused is not None:
        return refused
    if row["vlob_exists"]:
        return RealmBadOutcome.VLOB_ALREADY_EXISTS
    return None


def vlob_update_refused(
    row: Row | None,
    encryption_revision: int,
    version: int,
    timestamp: DateTime,
    to_datetime: Callable[[Any], DateTime],
) -> RealmBadOutcome | None:
    """Also selects `latest_version` and `latest_created_on` (a timestamp of the storage,
    read by `to_datetime`)."""
    if row is None:
        return RealmBadOutcome.VLOB_NOT_FOUND
    refused = access_refused(row, WRITE_ROLES, encryption_revision)
    if refused is not None:
        return refused
    if version != row["latest_version"] + 1:
        return RealmBadOutcome.BAD_VERSION
    if timestamp < to_datetime(row["latest_created_on"]):
        return RealmBadOutcome.BAD_TIMESTAMP
    return None


def block_create_refused(row: Row | None) -> RealmBadOutcome | None:
    """Selects `role`, `in_maintenance` and `block_exists`."""
    if row is None:
        return RealmBadOutcome.REALM_NOT_FOUND
    if row["role"] not in WRITE_ROLES:
        return RealmBadOutcome.NOT_ALLOWED
    if row["in_maintenance"]:
        return RealmBadOutcome.IN_MAINTENANCE
    if row["block_exists"]:
        return RealmBadOutcome.BLOCK_ALREADY_EXISTS
    return None
