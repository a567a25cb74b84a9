from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from parsec_server.api.ids import INT64_MAX, Text, UserID
from parsec_server.api.protocol.base import Req

# Pagination is done in Python over the candidates: any page of a signed 64-bit integer.
Page = Annotated[int, Meta(ge=1, le=INT64_MAX)]
PerPage = Annotated[int, Meta(ge=1, le=100)]


class UserGetReq(Req, frozen=True, tag="user_get"):
    user_id: UserID


class UserCreateReq(Req, frozen=True, tag="user_create"):
    user_certificate: bytes
    device_certificate: bytes
    redacted_user_certificate: bytes
    redacted_device_certificate: bytes


class UserRevokeReq(Req, frozen=True, tag="user_revoke"):
    revoked_user_certificate: bytes


class DeviceCreateReq(Req, frozen=True, tag="device_create"):
    device_certificate: bytes
    redacted_device_certificate: bytes


class HumanFindReq(Req, frozen=True, tag="human_find"):
    query: Text | None = None
    omit_revoked: bool = False
    omit_non_human: bool = False
    page: Page = 1
    per_page: PerPage = 100


class APIV1UserCreateReq(Req, frozen=True, tag="user_create"):
    user_certificate: bytes
    device_certificate: bytes


class APIV1DeviceCreateReq(Req, frozen=True, tag="device_create"):
    device_certificate: bytes
    encrypted_answer: bytes


class APIV1UserFindReq(Req, frozen=True, tag="user_find"):
    query: Text | None = None
    omit_revoked: bool = False
    page: Page = 1
    per_page: PerPage = 100
