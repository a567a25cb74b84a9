"""The handlers of the administration API: decoded request in, domain call, response out.
The rules are in the domain (`organization.py`, `user.py`), shared with the websocket
administration commands."""

from __future__ import annotations

import csv
import io
from datetime import datetime

import msgspec
from msgspec import UNSET

from parsec_server.api.addr import BackendOrganizationBootstrapAddr
from parsec_server.api.codec import DateTime
from parsec_server.api.ids import UserProfile, is_valid_name
from parsec_server.backend.asgi.administration import schemas as s
from parsec_server.backend.asgi.administration.http import (
    CSV_CONTENT_TYPE,
    ApiError,
    json_response,
    response,
)
from parsec_server.backend.asgi.administration.request import AdminRequest
from parsec_server.backend.asgi.routes import HttpResponse
from parsec_server.backend.audit import NO_TARGET, Action, Target
from parsec_server.backend.audit import OK as AUDIT_OK
from parsec_server.backend.organization import (
    OrganizationCreateBadOutcome,
    OrganizationDetails,
    OrganizationSettings,
    OrganizationStats,
    OrganizationUpdate,
)
from parsec_server.backend.user import UserFreezeBadOutcome
from parsec_server.backend.user_types import UserSummary

CSV_HEADER = (
    "organization_id",
    "realms",
    "data_size",
    "metadata_size",
    "users",
    "active_users",
    "admin_users_active",
    "admin_users_revoked",
    "standard_users_active",
    "standard_users_revoked",
    "outsider_users_active",
    "outsider_users_revoked",
)


def _ok(request: AdminRequest, value: msgspec.Struct) -> HttpResponse:
    return json_response(200, value, request.app.config.debug)


def _instant(value: datetime) -> DateTime:
    """A date of a request; those whose UTC time falls outside the years 1 to 9999 (e.g.
    `0001-01-01T00:00:00+01:00`) are refused."""
    try:
        return DateTime(value)
    except OverflowError:
        raise ApiError(400, "invalid_data", "Date out of the years 1 to 9999 (UTC)") from None


def _organization_not_found(organization_id: str) -> ApiError:
    return ApiError(404, "organization_not_found", f"Organization `{organization_id}` not found")


def _organization_id(request: AdminRequest) -> str:
    """The path's organization id; one that cannot exist is not found."""
    organization_id = request.path["organization_id"]
    if not is_valid_name(organization_id):
        raise _organization_not_found(organization_id)
    return organization_id


# --- Organizations ------------------------------------------------------------------------


async def create_organization(request: AdminRequest) -> HttpResponse:
    body: s.OrganizationCreateReq = request.body
    organization_id = body.organization_id
    if not is_valid_name(organization_id):  # the pattern counts characters, not bytes
        raise ApiError(400, "invalid_data", "Invalid organization id (at most 32 bytes)")
    expiration = None if body.expiration_date is None else _instant(body.expiration_date)
    settings = OrganizationSettings(
        active_users_limit=body.active_users_limit,
        user_profile_outsider_allowed=body.user_profile_outsider_allowed,
    )
    token = await request.app.organization.create_organization(
        request.actor, organization_id, expiration, settings, replace_unbootstrapped=False
    )
    if isinstance(token, OrganizationCreateBadOutcome):
        raise ApiError(400, "already_exists", f"Organization `{organization_id}` already exists")
    url = BackendOrganizationBootstrapAddr.build(
        request.app.config.backend_addr, organization_id, token
    ).to_url()
    return _ok(request, s.OrganizationCreateRep(bootstrap_url=url))


async def list_organizations(request: AdminRequest) -> HttpResponse:
    query: s.OrganizationListQuery = request.query
    offset = (query.page - 1) * query.per_page
    found, total = await request.app.organization.list_details(offset, query.per_page)
    now = DateTime.now()
    items = [
        s.OrganizationItem(
            organization_id=d.organization.organization_id,
            created_on=None if d.created_on is None else d.created_on.dt,
            is_bootstrapped=d.organization.is_bootstrapped,
            is_expired=d.organization.is_expired(now),
        )
        for d in found
    ]
    rep = s.OrganizationListRep(
        organizations=items, page=query.page, per_page=query.per_page, total=total
    )
    return _ok(request, rep)


def _organization_rep(details: OrganizationDetails) -> s.OrganizationRep:
    organization = details.organization
    expiration = organization.expiration_date
    return s.OrganizationRep(
        organization_id=organization.organization_id,
        created_on=None if details.created_on is None else details.created_on.dt,
        is_bootstrapped=organization.is_bootstrapped,
        is_expired=organization.is_expired(DateTime.now()),
        expiration_date=None if expiration is None else expiration.dt,
        active_users_limit=details.settings.active_users_limit,
        user_profile_outsider_allowed=details.settings.user_profile_outsider_allowed,
    )


async def get_organization(request: AdminRequest) -> HttpResponse:
    organization_id = _organization_id(request)
    details = await request.app.organization.get_details(organization_id)
    if details is None:
        raise _organization_not_found(organization_id)
    return _ok(request, _organization_rep(details))


async def update_organization(request: AdminRequest) -> HttpResponse:
    organization_id = _organization_id(request)
    body: s.OrganizationUpdateReq = request.body
    expiration = body.expiration_date
    update = OrganizationUpdate(
        expiration_date=_instant(expiration) if isinstance(expiration, datetime) else expiration,
        is_expired=body.is_expired,
        active_users_limit=body.active_users_limit,
        user_profile_outsider_allowed=body.user_profile_outsider_allowed,
    )
    details = await request.app.organization.update_organization(
        request.actor, organization_id, update
    )
    if details is None:
        raise _organization_not_found(organization_id)
    return _ok(request, _organization_rep(details))


# --- Stats --------------------------------------------------------------------------------


def _per_profile(stats: OrganizationStats) -> s.UsersPerProfileRep:
    def count(profile: UserProfile) -> s.ProfileCountRep:
        found = stats.users_per_profile.get(profile)
        if found is None:
            return s.ProfileCountRep(active=0, revoked=0)
        return s.ProfileCountRep(active=found.active, revoked=found.revoked)

    return s.UsersPerProfileRep(
        ADMIN=count(UserProfile.ADMIN),
        STANDARD=count(UserProfile.STANDARD),
        OUTSIDER=count(UserProfile.OUTSIDER),
    )


async def organization_stats(request: AdminRequest) -> HttpResponse:
    organization_id = _organization_id(request)
    stats = await request.app.organization.stats(organization_id, None)
    request.app.audit.record(
        Action.ORGANIZATION_STATS_EXPORT,
        request.actor,
        Target(organization=organization_id),
        "not_found" if stats is None else AUDIT_OK,
    )
    if stats is None:
        raise _organization_not_found(organization_id)
    rep = s.OrganizationStatsRep(
        realms=stats.realms,
        data_size=stats.data_size,
        metadata_size=stats.metadata_size,
        users=stats.users,
        active_users=stats.active_users,
        users_per_profile_detail=_per_profile(stats),
    )
    return _ok(request, rep)


async def server_stats(request: AdminRequest) -> HttpResponse:
    query: s.ServerStatsQuery = request.query
    at = None if query.at is UNSET else _instant(query.at)
    request.app.audit.record(
        Action.SERVER_STATS_EXPORT, request.actor, NO_TARGET, AUDIT_OK, format=query.format, at=at
    )
    items = [
        s.OrganizationStatsItem(
            organization_id=organization_id,
            realms=stats.realms,
            data_size=stats.data_size,
            metadata_size=stats.metadata_size,
            users=stats.users,
            active_users=stats.active_users,
            users_per_profile_detail=_per_profile(stats),
        )
        for organization_id, stats in await request.app.organization.all_stats(at)
    ]
    if query.format == "json":
        return _ok(request, s.ServerStatsRep(stats=items))
    return response(200, _csv(items), CSV_CONTENT_TYPE, request.app.config.debug)


def _csv(items: list[s.OrganizationStatsItem]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    for item in items:
        detail = item.users_per_profile_detail
        writer.writerow(
            (
                item.organization_id,
                item.realms,
                item.data_size,
                item.metadata_size,
                item.users,
                item.active_users,
                detail.ADMIN.active,
                detail.ADMIN.revoked,
                detail.STANDARD.active,
                detail.STANDARD.revoked,
                detail.OUTSIDER.active,
                detail.OUTSIDER.revoked,
            )
        )
    return out.getvalue().encode()


# --- Users --------------------------------------------------------------------------------


def _user_rep(user: UserSummary) -> s.UserRep:
    handle = user.human_handle
    return s.UserRep(
        user_id=user.user_id,
        human_handle=None if handle is None else s.HumanHandleRep(email=handle[0], label=handle[1]),
        profile=user.profile.value,
        created_on=user.created_on.dt,
        revoked_on=None if user.revoked_on is None else user.revoked_on.dt,
        frozen=user.frozen,
    )


async def list_users(request: AdminRequest) -> HttpResponse:
    organization_id = _organization_id(request)
    users = await request.app.user.list_users(organization_id)
    if users is None:
        raise _organization_not_found(organization_id)
    return _ok(request, s.UserListRep(users=[_user_rep(u) for u in users]))


async def freeze_user(request: AdminRequest) -> HttpResponse:
    organization_id = _organization_id(request)
    body: s.UserFreezeReq = request.body
    outcome = await request.app.user.freeze_user(
        request.actor,
        organization_id,
        None if body.user_id is UNSET else body.user_id,
        None if body.user_email is UNSET else body.user_email,
        body.frozen,
    )
    match outcome:
        case UserFreezeBadOutcome.ORGANIZATION_NOT_FOUND:
            raise _organization_not_found(organization_id)
        case UserFreezeBadOutcome.USER_NOT_FOUND:
            raise ApiError(404, "user_not_found", "No such user in this organization")
        case UserSummary():
            return _ok(request, _user_rep(outcome))
