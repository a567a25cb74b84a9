"""The administration REST API (docs/administration-api.md), on both storages: routes,
errors, settings enforced on user creation, freezing, and the websocket commands sharing
its rules."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import jsonschema  # type: ignore[import-untyped, unused-ignore]
import pytest

from parsec_server.api.addr import BackendOrganizationBootstrapAddr
from parsec_server.api.ids import UserProfile
from parsec_server.backend.asgi.administration.handlers import CSV_HEADER
from parsec_server.backend.asgi.administration.http import MAX_BODY_SIZE
from parsec_server.backend.asgi.administration.openapi import openapi_document
from parsec_server.backend.asgi.administration.routes import ROUTES
from parsec_server.client.connection import HandshakeRefused
from parsec_server.client.organization import CommandFailed, bootstrap_organization
from parsec_server.client.user import create_user
from tests.backend.common import (
    assert_closed_without_reply,
    authenticated_ws,
    revoke,
    send_cmd,
)
from tests.fixtures.servers import (
    ADMINISTRATION_TOKEN,
    Organization,
    RunningServer,
    new_organization_id,
)

AUTH = {"Authorization": f"Bearer {ADMINISTRATION_TOKEN}"}


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> tuple[int, Any]:
        if headers is None:
            headers = dict(AUTH)
        if body is not None:
            data = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        async with self.session.request(
            method, self.base + path, data=data, headers=headers
        ) as rep:
            raw = await rep.read()
            if rep.content_type == "text/csv":
                return rep.status, raw.decode()
            assert rep.content_type == "application/json", (rep.status, raw)
            return rep.status, json.loads(raw)


@pytest.fixture
async def api(server: RunningServer) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, f"http://127.0.0.1:{server.addr.port}/administration")


async def create(api: Api, **fields: Any) -> str:
    organization_id = new_organization_id()
    status, rep = await api.call(
        "POST", "/organizations", {"organization_id": organization_id, **fields}
    )
    assert status == 200, rep
    return organization_id


# --- Authentication -------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [(r.method, r.path) for r in ROUTES])
async def test_every_route_needs_the_token(api: Api, method: str, path: str) -> None:
    path = path.removeprefix("/administration").replace("{organization_id}", "Org")
    status, rep = await api.call(method, path, headers={})
    assert (status, rep["error"]) == (401, "unauthorized")
    status, rep = await api.call(method, path, headers={"Authorization": "Bearer nope"})
    assert (status, rep["error"]) == (403, "forbidden")


async def test_an_unknown_route_needs_the_token_before_saying_it_does_not_exist(
    api: Api,
) -> None:
    assert (await api.call("GET", "/nope", headers={}))[0] == 401
    assert await api.call("GET", "/nope") == (
        404,
        {"error": "not_found", "detail": "No such route"},
    )


async def test_the_openapi_document_is_public(api: Api) -> None:
    status, document = await api.call("GET", "/openapi.json", headers={})
    assert status == 200
    assert document["openapi"] == "3.1.0"


# --- Organizations -------------------------------------------------------------------------


async def test_created_organization_bootstraps_with_the_url_answered(
    server: RunningServer, api: Api
) -> None:
    organization_id = new_organization_id()
    status, rep = await api.call("POST", "/organizations", {"organization_id": organization_id})
    assert status == 200
    url = BackendOrganizationBootstrapAddr.from_url(rep["bootstrap_url"])
    assert url.organization_id == organization_id
    assert url.backend_addr == server.app.config.backend_addr
    await bootstrap_organization(
        server.addr, organization_id, url.token, ("a@example.com", "A"), None, "a", "dev"
    )
    status, rep = await api.call("GET", f"/organizations/{organization_id}")
    assert rep["is_bootstrapped"] is True
    assert rep["created_on"] is not None


async def test_create_refuses_an_existing_or_invalid_id(api: Api) -> None:
    organization_id = await create(api)
    status, rep = await api.call("POST", "/organizations", {"organization_id": organization_id})
    assert (status, rep["error"]) == (400, "already_exists")
    for bad in ["", "a b", "x" * 33, "é" * 17, 42, None]:
        status, rep = await api.call("POST", "/organizations", {"organization_id": bad})
        assert (status, rep["error"]) == (400, "invalid_data"), bad


async def test_the_websocket_command_still_replaces_an_organization_not_bootstrapped(
    server: RunningServer, api: Api
) -> None:
    organization_id = await create(api, active_users_limit=5)
    async with await server.admin() as admin:
        rep = await admin.cmd("organization_create", organization_id=organization_id)
    assert rep["status"] == "ok"
    _status, details = await api.call("GET", f"/organizations/{organization_id}")
    assert details["active_users_limit"] is None  # replaced with the defaults


async def test_organization_settings_are_read_back_and_patched(api: Api) -> None:
    expiration = datetime.now(UTC) + timedelta(days=3)
    organization_id = await create(
        api,
        active_users_limit=3,
        user_profile_outsider_allowed=False,
        expiration_date=expiration.isoformat(),
    )
    path = f"/organizations/{organization_id}"
    status, rep = await api.call("GET", path)
    assert status == 200
    assert rep["organization_id"] == organization_id
    assert rep["active_users_limit"] == 3
    assert rep["user_profile_outsider_allowed"] is False
    assert rep["is_expired"] is False and rep["is_bootstrapped"] is False
    assert datetime.fromisoformat(rep["expiration_date"]) == expiration

    status, rep = await api.call("PATCH", path, {"is_expired": True, "active_users_limit": None})
    assert status == 200
    assert rep["is_expired"] is True and rep["active_users_limit"] is None
    status, rep = await api.call("PATCH", path, {"is_expired": False})
    assert rep["is_expired"] is False and rep["expiration_date"] is None
    status, rep = await api.call("PATCH", path, {})
    assert status == 200 and rep == (await api.call("GET", path))[1]

    status, rep = await api.call("PATCH", path, {"is_expired": True, "expiration_date": None})
    assert (status, rep["error"]) == (400, "invalid_data")


async def test_expiring_an_organization_closes_its_connections_and_refuses_them(
    api: Api, org: Organization
) -> None:
    ws = await authenticated_ws(org.bob)
    await api.call("PATCH", f"/organizations/{org.organization_id}", {"is_expired": True})
    await assert_closed_without_reply(ws)
    with pytest.raises(HandshakeRefused) as refused:
        await org.bob.connect()
    assert refused.value.result == "organization_expired"
    await api.call("PATCH", f"/organizations/{org.organization_id}", {"is_expired": False})
    async with await org.bob.connect() as conn:
        assert (await conn.cmd("ping", ping="back"))["status"] == "ok"


async def test_organizations_are_listed_by_page(api: Api) -> None:
    created = sorted([await create(api) for _ in range(3)])
    status, rep = await api.call("GET", "/organizations?per_page=100")
    assert status == 200
    ids = [o["organization_id"] for o in rep["organizations"]]
    assert set(created) <= set(ids) and ids == sorted(ids)
    total = rep["total"]
    pages = []
    for page in range(1, total + 1):
        status, rep = await api.call("GET", f"/organizations?page={page}&per_page=1")
        assert rep["total"] == total and len(rep["organizations"]) == 1
        pages.append(rep["organizations"][0]["organization_id"])
    assert pages == ids
    item = next(o for o in rep["organizations"])
    assert set(item) == {"organization_id", "created_on", "is_bootstrapped", "is_expired"}


# --- Stats ------------------------------------------------------------------------------------


async def test_stats_count_users_per_profile_as_the_websocket_command(
    server: RunningServer, api: Api, org: Organization
) -> None:
    async with await org.alice.connect() as conn:
        await revoke(conn, org.alice, "mallory")
    status, stats = await api.call("GET", f"/organizations/{org.organization_id}/stats")
    assert status == 200
    assert stats["users"] == 3 and stats["active_users"] == 2
    assert stats["users_per_profile_detail"] == {
        "ADMIN": {"active": 1, "revoked": 0},
        "STANDARD": {"active": 1, "revoked": 0},
        "OUTSIDER": {"active": 0, "revoked": 1},
    }
    async with await server.admin() as admin:
        rep = await admin.cmd("organization_stats", organization_id=org.organization_id)
    assert rep == {
        "status": "ok",
        "users": stats["users"],
        "data_size": stats["data_size"],
        "metadata_size": stats["metadata_size"],
    }


async def test_server_stats_in_json_and_csv_as_of_a_date(api: Api, org: Organization) -> None:
    status, rep = await api.call("GET", "/stats")
    assert status == 200
    [mine] = [s for s in rep["stats"] if s["organization_id"] == org.organization_id]
    assert mine["users"] == 3

    status, text = await api.call("GET", "/stats?format=csv")
    assert status == 200
    assert text.startswith(",".join(CSV_HEADER) + "\r\n")
    rows = {r["organization_id"]: r for r in csv.DictReader(io.StringIO(text))}
    assert rows[org.organization_id]["users"] == "3"
    assert rows[org.organization_id]["admin_users_active"] == "1"

    before = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    status, rep = await api.call("GET", f"/stats?at={before}")  # `+00:00` sent as is
    assert status == 200
    assert org.organization_id not in {s["organization_id"] for s in rep["stats"]}

    for bad in ["format=xml", "at=yesterday", "at=2024-01-01T00:00:00"]:
        status, rep = await api.call("GET", f"/stats?{bad}")
        assert (status, rep["error"]) == (400, "invalid_data"), bad


# --- Users ------------------------------------------------------------------------------------


async def test_users_are_listed_with_their_state(api: Api, org: Organization) -> None:
    async with await org.alice.connect() as conn:
        await revoke(conn, org.alice, "mallory")
    status, rep = await api.call("GET", f"/organizations/{org.organization_id}/users")
    assert status == 200
    users = {u["user_id"]: u for u in rep["users"]}
    assert list(users) == ["alice", "bob", "mallory"]
    assert users["alice"]["human_handle"] == {"email": "alice@example.com", "label": "Alice"}
    assert users["alice"]["profile"] == "ADMIN"
    assert users["mallory"]["human_handle"] is None
    assert users["mallory"]["revoked_on"] is not None
    assert not any(u["frozen"] for u in users.values())


async def test_a_frozen_user_is_refused_and_loses_its_connections_until_unfrozen(
    api: Api, org: Organization
) -> None:
    path = f"/organizations/{org.organization_id}/users/freeze"
    ws = await authenticated_ws(org.bob)
    alice_ws = await authenticated_ws(org.alice)
    status, rep = await api.call("POST", path, {"user_id": "bob", "frozen": True})
    assert status == 200 and rep["frozen"] is True and rep["user_id"] == "bob"
    await assert_closed_without_reply(ws)
    with pytest.raises(HandshakeRefused) as refused:
        await org.bob.connect()
    assert refused.value.result == "revoked_device"
    assert (await send_cmd(alice_ws, "ping", ping="x"))["status"] == "ok"

    status, rep = await api.call("POST", path, {"user_email": "bob@example.com", "frozen": False})
    assert status == 200 and rep["frozen"] is False
    async with await org.bob.connect() as conn:
        assert (await conn.cmd("ping", ping="back"))["status"] == "ok"


async def test_freeze_errors(api: Api, org: Organization) -> None:
    path = f"/organizations/{org.organization_id}/users/freeze"
    for body in [
        {"frozen": True},
        {"frozen": True, "user_id": "bob", "user_email": "bob@example.com"},
        {"user_id": "bob"},
        {"user_id": "bob", "frozen": "yes"},
    ]:
        status, rep = await api.call("POST", path, body)
        assert (status, rep["error"]) == (400, "invalid_data"), body
    status, rep = await api.call("POST", path, {"user_id": "nobody", "frozen": True})
    assert (status, rep["error"]) == (404, "user_not_found")
    status, rep = await api.call("POST", path, {"user_email": "x@example.com", "frozen": True})
    assert (status, rep["error"]) == (404, "user_not_found")
    status, rep = await api.call(
        "POST", "/organizations/Nope/users/freeze", {"user_id": "bob", "frozen": True}
    )
    assert (status, rep["error"]) == (404, "organization_not_found")


async def test_active_users_limit_is_enforced_without_counting_revoked_or_frozen_users(
    api: Api, org: Organization
) -> None:
    path = f"/organizations/{org.organization_id}"
    await api.call("PATCH", path, {"active_users_limit": 3})
    async with await org.alice.connect() as conn:
        with pytest.raises(CommandFailed) as failed:
            await create_user(conn, org.alice, "carl", "pc", None, UserProfile.STANDARD)
        assert failed.value.reply["status"] == "active_users_limit_reached"
        await revoke(conn, org.alice, "mallory")
        await create_user(conn, org.alice, "carl", "pc", None, UserProfile.STANDARD)
        with pytest.raises(CommandFailed):
            await create_user(conn, org.alice, "dave", "pc", None, UserProfile.STANDARD)
        freeze = {"user_id": "carl", "frozen": True}
        await api.call("POST", f"{path}/users/freeze", freeze)
        await create_user(conn, org.alice, "dave", "pc", None, UserProfile.STANDARD)
    _status, stats = await api.call("GET", f"{path}/stats")
    assert stats["active_users"] == 4  # frozen users are not revoked


async def test_outsiders_can_be_forbidden(api: Api, org: Organization) -> None:
    path = f"/organizations/{org.organization_id}"
    await api.call("PATCH", path, {"user_profile_outsider_allowed": False})
    async with await org.alice.connect() as conn:
        with pytest.raises(CommandFailed) as failed:
            await create_user(conn, org.alice, "out", "pc", None, UserProfile.OUTSIDER)
        assert failed.value.reply["status"] == "not_allowed"
        await create_user(conn, org.alice, "std", "pc", None, UserProfile.STANDARD)


# --- Bad input --------------------------------------------------------------------------------


async def test_bad_input_is_a_json_error(api: Api, org: Organization) -> None:
    post = "/organizations"
    json_type = {**AUTH, "Content-Type": "application/json"}
    cases: list[tuple[str, str, dict[str, str], bytes | None, int, str]] = [
        ("POST", post, json_type, b"{", 400, "malformed_json"),
        ("POST", post, json_type, b"", 400, "malformed_json"),
        ("POST", post, json_type, b"[]", 400, "invalid_data"),
        ("POST", post, json_type, b'{"organization_id": "A", "x": 1}', 400, "invalid_data"),
        (
            "POST",
            post,
            json_type,
            b'{"organization_id": "A", "active_users_limit": -1}',
            400,
            "invalid_data",
        ),
        (
            "POST",
            post,
            json_type,
            b'{"organization_id": "A"}' + b" " * MAX_BODY_SIZE,
            413,
            "payload_too_large",
        ),
        (
            "POST",
            post,
            {**AUTH, "Content-Type": "text/plain"},
            b"{}",
            415,
            "unsupported_media_type",
        ),
        ("DELETE", post, AUTH, None, 405, "method_not_allowed"),
        ("GET", "/organizations/Nope", AUTH, None, 404, "organization_not_found"),
        ("GET", "/organizations/Nope/stats", AUTH, None, 404, "organization_not_found"),
        ("GET", "/organizations/Nope/users", AUTH, None, 404, "organization_not_found"),
        ("PATCH", "/organizations/Nope", json_type, b"{}", 404, "organization_not_found"),
        ("GET", "/organizations/%00", AUTH, None, 404, "organization_not_found"),
        ("GET", "/organizations?page=x", AUTH, None, 400, "invalid_data"),
        ("GET", "/organizations?per_page=1000", AUTH, None, 400, "invalid_data"),
        ("GET", "/organizations/", AUTH, None, 404, "not_found"),
    ]
    for method, path, headers, data, expected_status, error in cases:
        status, rep = await api.call(method, path, headers=dict(headers), data=data)
        assert (status, rep["error"]) == (expected_status, error), (method, path, data)


# --- OpenAPI document -------------------------------------------------------------------------


def test_openapi_document_has_every_route_with_its_error_answers() -> None:
    document = openapi_document("test")
    for route in ROUTES:
        operation = document["paths"][route.path][route.method.lower()]
        statuses = set(operation["responses"])
        assert {"200", "401", "403"} <= statuses, route.path
        if route.body is not None:
            assert {"400", "413", "415"} <= statuses, route.path
            assert operation["requestBody"]["required"] is True
        if "{organization_id}" in route.path:
            assert "404" in statuses, route.path
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
        for prop in schema.get("properties", {}).values():
            assert "\\Z" not in json.dumps(prop)  # ECMA-262 anchors only
    freeze = document["components"]["schemas"]["UserFreezeReq"]
    assert freeze["additionalProperties"] is False


@pytest.mark.parametrize(
    "date", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "2030-01-01T01:00:00+01:00"]
)
async def test_expiration_dates_at_the_ends_of_the_range_are_read_back(api: Api, date: str) -> None:
    path = f"/organizations/{await create(api)}"
    status, rep = await api.call("PATCH", path, {"expiration_date": date})
    assert status == 200, rep
    assert datetime.fromisoformat(rep["expiration_date"]) == datetime.fromisoformat(date)
    status, rep = await api.call("PATCH", path, {"expiration_date": "0001-01-01T00:00:00+01:00"})
    assert (status, rep["error"]) == (400, "invalid_data")
