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
    INCOMPATIBLE_PROFILE = auto()
    PARTICIPANTS_MISMATCH = auto()
    MAINTENANCE_ERROR = auto()
    BLOCKSTORE_UNAVAILABLE = auto()


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
