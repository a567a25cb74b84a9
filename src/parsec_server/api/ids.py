"""Identifier and small value types of the protocol, as msgspec-validated types.

The reference's regexes end with `$`, which also matches before a trailing newline; we
anchor with `\\Z` and so refuse such ids (no client produces them).
"""

from __future__ import annotations

from email.utils import parseaddr
from enum import Enum
from typing import Annotated

import msgspec

_NAME = r"[\w\-]{1,32}"

OrganizationID = Annotated[str, msgspec.Meta(pattern=rf"^{_NAME}\Z")]
UserID = Annotated[str, msgspec.Meta(pattern=rf"^{_NAME}\Z")]
DeviceName = Annotated[str, msgspec.Meta(pattern=rf"^{_NAME}\Z")]
DeviceID = Annotated[str, msgspec.Meta(pattern=rf"^{_NAME}@{_NAME}\Z")]
PublicKeyBytes = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
VerifyKeyBytes = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
HumanHandle = tuple[str, str]  # (email, label); checked by `check_human_handle`


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


class UserProfile(str, Enum):
    ADMIN = "ADMIN"
    STANDARD = "STANDARD"
    OUTSIDER = "OUTSIDER"


class InvitationType(str, Enum):
    USER = "USER"
    DEVICE = "DEVICE"


class RealmRole(str, Enum):
    OWNER = "OWNER"
    MANAGER = "MANAGER"
    CONTRIBUTOR = "CONTRIBUTOR"
    READER = "READER"
