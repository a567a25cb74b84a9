"""The request and response bodies of the administration REST API (docs/administration-api.md).

These msgspec Structs are the single source of truth: requests are decoded and validated
with them, responses encoded from them, and the OpenAPI document is generated from them
(`openapi.py`). A request struct refuses unknown fields; a rule spanning several fields is
checked in `__post_init__` (msgspec reports it as a validation error) and stated for the
OpenAPI document with `extra_json_schema`.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from parsec_server.api.ids import INT32_MAX, OrganizationID, Text, UserID

AwareDatetime = Annotated[
    datetime.datetime,
    Meta(tz=True, description="RFC 3339 date and time, with its offset (e.g. `Z`)"),
]
ActiveUsersLimit = Annotated[
    int,
    Meta(ge=0, le=INT32_MAX, description="Most users neither revoked nor frozen at a time"),
]
Profile = Literal["ADMIN", "STANDARD", "OUTSIDER"]
Email = Annotated[Text, Meta(min_length=1, max_length=254)]
MAX_PER_PAGE = 100


class Request(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class Response(msgspec.Struct, frozen=True):
    pass


# --- Errors -------------------------------------------------------------------------------


class ErrorRep(Response, frozen=True):
    """Every error answer."""

    error: str
    detail: str | None = None


# --- Organizations ------------------------------------------------------------------------


class OrganizationCreateReq(Request, frozen=True):
    organization_id: OrganizationID
    active_users_limit: ActiveUsersLimit | None = None
    user_profile_outsider_allowed: bool = True
    expiration_date: AwareDatetime | None = None


class OrganizationCreateRep(Response, frozen=True):
    bootstrap_url: Annotated[
        str, Meta(description="What `parsec core create_organization` prints (parsec:// URL)")
    ]


class OrganizationListQuery(Request, frozen=True):
    page: Annotated[int, Meta(ge=1, le=INT32_MAX)] = 1
    per_page: Annotated[int, Meta(ge=1, le=MAX_PER_PAGE)] = MAX_PER_PAGE


class OrganizationItem(Response, frozen=True):
    organization_id: str
    created_on: Annotated[
        datetime.datetime | None,
        Meta(description="null: created by Parsec 2.0.0 before this server took over"),
    ]
    is_bootstrapped: bool
    is_expired: bool


class OrganizationListRep(Response, frozen=True):
    organizations: list[OrganizationItem]
    page: int
    per_page: int
    total: int


class OrganizationRep(Response, frozen=True):
    organization_id: str
    created_on: datetime.datetime | None
    is_bootstrapped: bool
    is_expired: bool
    expiration_date: datetime.datetime | None
    active_users_limit: int | None
    user_profile_outsider_allowed: bool


class OrganizationUpdateReq(Request, frozen=True):
    """Absent fields are left unchanged."""

    is_expired: (
        Annotated[
            bool,
            Meta(
                description="true: expire now (unless already expired); false: remove a past "
                "expiration date. Not together with expiration_date."
            ),
        ]
        | UnsetType
    ) = UNSET
    expiration_date: AwareDatetime | UnsetType | None = UNSET
    active_users_limit: ActiveUsersLimit | UnsetType | None = UNSET
    user_profile_outsider_allowed: bool | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.is_expired is not UNSET and self.expiration_date is not UNSET:
            raise ValueError("`is_expired` and `expiration_date` cannot be given together")


# --- Stats --------------------------------------------------------------------------------


class ProfileCountRep(Response, frozen=True):
    active: int
    revoked: int


class UsersPerProfileRep(Response, frozen=True):
    ADMIN: ProfileCountRep
    STANDARD: ProfileCountRep
    OUTSIDER: ProfileCountRep


class OrganizationStatsRep(Response, frozen=True):
    realms: int
    data_size: int
    metadata_size: int
    users: int
    active_users: int
    users_per_profile_detail: UsersPerProfileRep


class ServerStatsQuery(Request, frozen=True):
    format: Literal["json", "csv"] = "json"
    at: AwareDatetime | UnsetType = UNSET


class OrganizationStatsItem(Response, frozen=True):
    organization_id: str
    realms: int
    data_size: int
    metadata_size: int
    users: int
    active_users: int
    users_per_profile_detail: UsersPerProfileRep


class ServerStatsRep(Response, frozen=True):
    stats: list[OrganizationStatsItem]


# --- Users --------------------------------------------------------------------------------


class HumanHandleRep(Response, frozen=True):
    email: str
    label: str


class UserRep(Response, frozen=True):
    user_id: str
    human_handle: HumanHandleRep | None
    profile: Profile
    created_on: datetime.datetime
    revoked_on: datetime.datetime | None
    frozen: bool


class UserListRep(Response, frozen=True):
    users: list[UserRep]


class UserFreezeReq(Request, frozen=True):
    """The user by id, or the non-revoked user of an email (one of the two)."""

    frozen: bool
    user_id: UserID | UnsetType = UNSET
    user_email: Email | UnsetType = UNSET

    def __post_init__(self) -> None:
        if (self.user_id is UNSET) == (self.user_email is UNSET):
            raise ValueError("Give either `user_id` or `user_email`")


# The body types of the routes, with the rules spanning several fields for the OpenAPI
# document (the `__post_init__` methods check them).
OrganizationUpdateBody = Annotated[
    OrganizationUpdateReq,
    Meta(extra_json_schema={"not": {"required": ["is_expired", "expiration_date"]}}),
]
UserFreezeBody = Annotated[
    UserFreezeReq,
    Meta(extra_json_schema={"oneOf": [{"required": ["user_id"]}, {"required": ["user_email"]}]}),
]
