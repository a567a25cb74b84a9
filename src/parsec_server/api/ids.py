"""Identifier and small value types of the protocol, as msgspec-validated types.

The reference's regexes end with `$`, which also matches before a trailing newline; we
anchor with `\\Z` and so refuse such ids (no client produces them).

Every field is checked while msgspec decodes it (docs/protocol-limits.md): free text is
`Text` (no NUL character, which PostgreSQL cannot store), integers carry the range of
their storage column.
"""

from __future__ import annotations

import re
from email.utils import parseaddr
from enum import StrEnum
from typing import Annotated

import msgspec

_NAME = r"[\w\-]{1,32}"

# Any text without a NUL character (`\w` of the identifiers already excludes it).
_TEXT_PATTERN = r"\A[^\x00]*\Z"
Text = Annotated[str, msgspec.Meta(pattern=_TEXT_PATTERN)]
# Texts stored in a VARCHAR(n) column of Parsec 2.0.0's PostgreSQL layout (n characters):
# longer ones are refused on every storage, so that a database can be handed back to it.
DEVICE_LABEL_MAX_LENGTH = 254
CLAIMER_EMAIL_MAX_LENGTH = 255
DeviceLabel = Annotated[
    str, msgspec.Meta(pattern=_TEXT_PATTERN, max_length=DEVICE_LABEL_MAX_LENGTH)
]
ClaimerEmail = Annotated[
    str, msgspec.Meta(pattern=_TEXT_PATTERN, max_length=CLAIMER_EMAIL_MAX_LENGTH)
]

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Compared with, or stored as, a PostgreSQL INTEGER. Revisions start at 1, but the
# reference answers `bad_encryption_revision` to any other value it can look up.
EncryptionRevision = Annotated[int, msgspec.Meta(ge=INT32_MIN, le=INT32_MAX)]

OrganizationID = Annotated[str, msgspec.Meta(pattern=rf"^{_NAME}\Z")]
UserID = Annotated[str, msgspec.Meta(pattern=rf"^{_NAME}\Z")]
DeviceName = Annotated[str, msgspec.Meta(pattern=rf"^{_NAME}\Z")]
DeviceID = Annotated[str, msgspec.Meta(pattern=rf"^{_NAME}@{_NAME}\Z")]
PublicKeyBytes = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
VerifyKeyBytes = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
HumanHandle = tuple[Text, Text]  # (email, label); checked by `check_human_handle`


_NAME_RE = re.compile(_NAME)
_NAME_MAX_BYTES = 32


def is_valid_name(value: str) -> bool:
    """Whether `value` is a valid OrganizationID (same rule: UserID, DeviceName), pattern and
    UTF-8 size, for the places that check an id outside of msgspec decoding."""
    return bool(_NAME_RE.fullmatch(value)) and len(value.encode("utf8")) <= _NAME_MAX_BYTES


def user_id_of(device_id: str) -> str:
    return device_id.partition("@")[0]


def check_human_handle(handle: HumanHandle) -> None:
    """Raise ValueError unless `label <email>` parses back to exactly (label, email)."""
    email, label = handle
    for part in (email, label):
        if not 0 < len(part.encode("utf8")) < 255:
            raise ValueError("Invalid human handle")
    if parseaddr(f"{label} <{email}>") != (label, email):
        raise ValueError("Invalid human handle")


def format_human_handle(handle: HumanHandle) -> str:
    email, label = handle
    return f"{label} <{email}>"


class UserProfile(StrEnum):
    ADMIN = "ADMIN"
    STANDARD = "STANDARD"
    OUTSIDER = "OUTSIDER"


class InvitationType(StrEnum):
    USER = "USER"
    DEVICE = "DEVICE"


class RealmRole(StrEnum):
    OWNER = "OWNER"
    MANAGER = "MANAGER"
    CONTRIBUTOR = "CONTRIBUTOR"
    READER = "READER"


_ID_BYTE_LIMITS = {OrganizationID: 32, DeviceID: 65}  # UserID and DeviceName equal OrganizationID
_id_fields_cache: dict[type, tuple[tuple[str, int], ...]] = {}


def _id_fields(cls: type) -> tuple[tuple[str, int], ...]:
    fields = _id_fields_cache.get(cls)
    if fields is None:
        fields = tuple(
            (f.name, _ID_BYTE_LIMITS[f.type])
            for f in msgspec.structs.fields(cls)
            if f.type in _ID_BYTE_LIMITS
        )
        _id_fields_cache[cls] = fields
    return fields


def check_id_byte_lengths(obj: msgspec.Struct) -> None:
    """The identifier regexes count characters; the protocol also caps their UTF-8 size.
    Called from `__post_init__`, so a ValueError becomes a validation error."""
    for name, limit in _id_fields(type(obj)):
        value = getattr(obj, name)
        if not value.isascii() and len(value.encode("utf8")) > limit:
            raise ValueError(f"Field `{name}`: longer than {limit} bytes")
