"""What realms, vlobs, blocks and messages share: roles, the expected failures of their
commands and their one mapping to wire replies."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import Enum, auto

from parsec_server.api.codec import DateTime
from parsec_server.api.ids import RealmRole
from parsec_server.api.protocol.base import Rep, error

READ_ROLES = frozenset(RealmRole)
WRITE_ROLES = frozenset({RealmRole.OWNER, RealmRole.MANAGER, RealmRole.CONTRIBUTOR})
MANAGER_ROLES = frozenset({RealmRole.OWNER, RealmRole.MANAGER})


@dataclass(frozen=True, slots=True)
class RoleGrant:
    realm_id: uuid.UUID
    user_id: str
    role: RealmRole | None
    certificate: bytes
    granted_by: str  # DeviceID
    granted_on: DateTime


def can_change_role(
    author_role: RealmRole | None, existing: RealmRole | None, new: RealmRole | None
) -> bool:
    """Who may grant what (40-realm-vlob.md §4.5 step 9): only an OWNER touches an OWNER or
    MANAGER role, an OWNER or MANAGER the others."""
    if existing in MANAGER_ROLES or new in MANAGER_ROLES:
        return author_role is RealmRole.OWNER
    return author_role in MANAGER_ROLES


def check_role_timestamp(
    granted_on: DateTime, subject_latest: DateTime | None, author_latest: DateTime | None
) -> RealmBadOutcome | None:
    """The last checks of a role change, given the timestamps of the latest role certificates
    of its subject and of its author in the realm (None: they have none).

    Strictly later than the subject's: the current role is the latest certificate, so an
    earlier one would be accepted and ignored. Not earlier than the author's: clients replay
    the certificates sorted by timestamp and require the author to hold its role at that
    point of the replay (40-realm-vlob.md §4.4), which its latest certificate then gives."""
    if subject_latest is not None and granted_on <= subject_latest:
        return RealmBadOutcome.ROLE_NOT_AFTER_SUBJECT_LATEST
    if author_latest is not None and granted_on < author_latest:
        return RealmBadOutcome.ROLE_BEFORE_AUTHOR_LATEST
    return None


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message appended by a realm command, announced once committed."""

    recipient: str
    index: int


class RealmBadOutcome(Enum):
    REALM_NOT_FOUND = auto()
    VLOB_NOT_FOUND = auto()
    BLOCK_NOT_FOUND = auto()
    USER_NOT_FOUND = auto()
    REENCRYPTION_ENTRY_NOT_FOUND = auto()
    NOT_ALLOWED = auto()
    IN_MAINTENANCE = auto()
    NOT_IN_MAINTENANCE = auto()
    BAD_ENCRYPTION_REVISION = auto()
    BAD_VERSION = auto()
    BAD_TIMESTAMP = auto()
    REALM_ALREADY_EXISTS = auto()
    VLOB_ALREADY_EXISTS = auto()
    BLOCK_ALREADY_EXISTS = auto()
    ALREADY_GRANTED = auto()
    ROLE_NOT_AFTER_SUBJECT_LATEST = auto()
    ROLE_BEFORE_AUTHOR_LATEST = auto()
    INCOMPATIBLE_PROFILE = auto()
    PARTICIPANTS_MISMATCH = auto()
    MAINTENANCE_ERROR = auto()
    BLOCKSTORE_UNAVAILABLE = auto()


# Our own refusals (docs/deviations.md); the 2.0.0 client reports any status but `ok`,
# `already_granted`, `not_allowed` and `in_maintenance` as a failed sharing.
ROLE_NOT_AFTER_SUBJECT_LATEST_REASON = (
    "Invalid timestamp in certification: it must be later than the latest role certificate "
    "of this user in this realm."
)
ROLE_BEFORE_AUTHOR_LATEST_REASON = (
    "Invalid timestamp in certification: it cannot be earlier than the latest role "
    "certificate of its author in this realm."
)

BAD_TIMESTAMP_OUT_OF_DATE: Rep = {"status": "bad_timestamp", "reason": "Timestamp is out of date."}


def bad_outcome_reply(
    outcome: RealmBadOutcome,
    realm_id: uuid.UUID | None = None,
    vlob_id: uuid.UUID | None = None,
    user_id: str | None = None,
) -> Rep:
    """The one place where these failures become wire replies (reasons as the reference)."""
    match outcome:
        case RealmBadOutcome.REALM_NOT_FOUND:
            return error("not_found", f"Realm `{realm_id}` doesn't exist")
        case RealmBadOutcome.VLOB_NOT_FOUND:
            return error("not_found", f"Vlob `{vlob_id}` doesn't exist")
        case RealmBadOutcome.BLOCK_NOT_FOUND:
            return error("not_found")
        case RealmBadOutcome.USER_NOT_FOUND:
            return error("not_found", f"User `{user_id}` doesn't exist")
        case RealmBadOutcome.REENCRYPTION_ENTRY_NOT_FOUND:
            return error("not_found", "")
        case RealmBadOutcome.NOT_ALLOWED:
            return error("not_allowed")
        case RealmBadOutcome.IN_MAINTENANCE:
            return error("in_maintenance")
        case RealmBadOutcome.NOT_IN_MAINTENANCE:
            return error("not_in_maintenance", f"Realm `{realm_id}` not under maintenance")
        case RealmBadOutcome.BAD_ENCRYPTION_REVISION:
            return error("bad_encryption_revision")
        case RealmBadOutcome.BAD_VERSION:
            return error("bad_version")
        case RealmBadOutcome.BAD_TIMESTAMP:
            return error("bad_timestamp")
        case RealmBadOutcome.REALM_ALREADY_EXISTS | RealmBadOutcome.BLOCK_ALREADY_EXISTS:
            return error("already_exists")
        case RealmBadOutcome.VLOB_ALREADY_EXISTS:
            return error("already_exists", "")
        case RealmBadOutcome.ALREADY_GRANTED:
            return error("already_granted")
        case RealmBadOutcome.ROLE_NOT_AFTER_SUBJECT_LATEST:
            return error("invalid_certification", ROLE_NOT_AFTER_SUBJECT_LATEST_REASON)
        case RealmBadOutcome.ROLE_BEFORE_AUTHOR_LATEST:
            return error("invalid_certification", ROLE_BEFORE_AUTHOR_LATEST_REASON)
        case RealmBadOutcome.INCOMPATIBLE_PROFILE:
            return error(
                "incompatible_profile", "User with OUTSIDER profile cannot be MANAGER or OWNER"
            )
        case RealmBadOutcome.PARTICIPANTS_MISMATCH:
            return error(
                "participants_mismatch", "Realm participants and message recipients mismatch"
            )
        case RealmBadOutcome.MAINTENANCE_ERROR:
            return error("maintenance_error", "Reencryption operations are not over")
        case RealmBadOutcome.BLOCKSTORE_UNAVAILABLE:
            return error("timeout")
