"""The audit log (docs/audit-log.md): each administration action and security event is
exactly one line, the same in the log stream (logger `parsec.audit`) and in the
`--audit-log` file."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nacl.signing import SigningKey

from parsec_server.api import codec
from parsec_server.api.codec import DateTime
from parsec_server.api.crypto import sign
from parsec_server.client.connection import AnonymousAuth, BackendConnection, HandshakeRefused
from tests.backend.common import revocation, revoke
from tests.backend.test_administration_api import Api
from tests.backend.test_handshake import authenticated_answer
from tests.fixtures.logs import json_lines, logging_to
from tests.fixtures.raw import raw_connect, raw_handshake, recv_map
from tests.fixtures.servers import (
    Organization,
    RunningServer,
    create_org,
    make_config,
    new_organization_id,
    running_server,
)

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LINE_KEYS = ["time", "action", "actor", "target", "outcome", "reason", "details"]
ADMINISTRATOR = {"kind": "administration_token", "address": "127.0.0.1"}
PEER = {"kind": "peer", "address": "127.0.0.1"}
CREATE_DETAILS = {
    "expiration_date": None,
    "active_users_limit": None,
    "user_profile_outsider_allowed": True,
}


@dataclass
class Audit:
    """The lines of the audit file and of the log stream, read as they come."""

    file: Path
    log: Path
    seen: int = 0

    def _log_lines(self) -> list[dict[str, Any]]:
        return [line for line in json_lines(self.log) if line.get("logger") == "parsec.audit"]

    def new(self) -> list[dict[str, Any]]:
        """The lines written since the last call (the file and the log agree)."""
        in_file = json_lines(self.file)
        in_log = self._log_lines()
        assert len(in_file) == len(in_log), (in_file, in_log)
        for file_line, log_line in zip(in_file, in_log, strict=True):
            assert list(file_line) == LINE_KEYS
            assert RFC3339_UTC.match(file_line["time"]), file_line
            expected_level = "info" if file_line["outcome"] == "ok" else "warning"
            assert log_line["level"] == expected_level
            assert {key: log_line[key] for key in LINE_KEYS} == file_line
        lines, self.seen = in_file[self.seen :], len(in_file)
        return lines

    def one(self) -> dict[str, Any]:
        """The one line written since the last call, without its time."""
        lines = self.new()
        assert len(lines) == 1, lines
        return {key: value for key, value in lines[0].items() if key != "time"}


@dataclass
class Audited:
    server: RunningServer
    audit: Audit


@pytest.fixture
def log_path(tmp_path: Path) -> Iterator[Path]:
    with logging_to(tmp_path / "log.json", "INFO") as path:
        yield path


@pytest.fixture
async def audited(tmp_path: Path, log_path: Path) -> AsyncIterator[Audited]:
    audit_file = tmp_path / "audit.log"
    async with running_server(make_config(audit_log=audit_file)) as server:
        yield Audited(server, Audit(audit_file, log_path))


@pytest.fixture
async def org(audited: Audited) -> Organization:
    organization = await create_org(audited.server)
    audited.audit.new()  # its creation
    return organization


def line(
    action: str,
    actor: dict[str, Any],
    target: dict[str, Any],
    outcome: str = "ok",
    reason: str | None = None,
    **details: Any,
) -> dict[str, Any]:
    return {
        "action": action,
        "actor": actor,
        "target": target,
        "outcome": outcome,
        "reason": reason,
        "details": details,
    }


# Administration commands


async def test_organization_create(audited: Audited) -> None:
    organization_id = new_organization_id()
    async with await audited.server.admin() as admin:
        rep = await admin.cmd("organization_create", organization_id=organization_id)
        assert rep["status"] == "ok"
        assert audited.audit.one() == line(
            "organization.create",
            ADMINISTRATOR,
            {"organization": organization_id},
            **CREATE_DETAILS,
        )
        expiration = DateTime.now().add(3600)
        rep = await admin.cmd(
            "organization_create", organization_id=organization_id, expiration_date=expiration
        )
        assert rep["status"] == "ok"
        assert audited.audit.one()["details"] == {
            **CREATE_DETAILS,
            "expiration_date": expiration.dt.isoformat(timespec="milliseconds")[:-6] + "Z",
        }


async def test_organization_create_of_a_bootstrapped_one(
    audited: Audited, org: Organization
) -> None:
    async with await audited.server.admin() as admin:
        rep = await admin.cmd("organization_create", organization_id=org.organization_id)
    assert rep["status"] == "already_exists"
    assert audited.audit.one() == line(
        "organization.create",
        ADMINISTRATOR,
        {"organization": org.organization_id},
        "already_bootstrapped",
        **CREATE_DETAILS,
    )


async def test_organization_update_then_expire(audited: Audited, org: Organization) -> None:
    target = {"organization": org.organization_id}
    async with await audited.server.admin() as admin:
        later = DateTime.now().add(3600)
        await admin.cmd(
            "organization_update", organization_id=org.organization_id, expiration_date=later
        )
        updated = audited.audit.one()
        assert updated["action"] == "organization.update"
        assert (updated["actor"], updated["target"], updated["outcome"]) == (
            ADMINISTRATOR,
            target,
            "ok",
        )
        await admin.cmd(
            "organization_update", organization_id=org.organization_id, expiration_date=None
        )
        assert audited.audit.one() == line(
            "organization.update", ADMINISTRATOR, target, expiration_date=None
        )
        await admin.cmd(
            "organization_update",
            organization_id=org.organization_id,
            expiration_date=DateTime.now(),
        )
        expired = audited.audit.one()
        assert (expired["action"], expired["outcome"]) == ("organization.expire", "ok")
        rep = await admin.cmd(
            "organization_update", organization_id="Unknown", expiration_date=None
        )
        assert rep["status"] == "not_found"
        assert audited.audit.one() == line(
            "organization.update",
            ADMINISTRATOR,
            {"organization": "Unknown"},
            "not_found",
            expiration_date=None,
        )


async def test_organization_stats_is_an_export_and_status_is_not_audited(
    audited: Audited, org: Organization
) -> None:
    async with await audited.server.admin() as admin:
        await admin.cmd("organization_stats", organization_id=org.organization_id)
        assert audited.audit.one() == line(
            "organization.stats_export", ADMINISTRATOR, {"organization": org.organization_id}
        )
        await admin.cmd("organization_stats", organization_id="Unknown")
        assert audited.audit.one()["outcome"] == "not_found"
        await admin.cmd("organization_status", organization_id=org.organization_id)
        await admin.cmd("ping", ping="x")
    assert audited.audit.new() == []


async def test_bad_administration_token(audited: Audited) -> None:
    answer = {
        "handshake": "answer",
        "type": "administration",
        "client_api_version": [1, 2],
        "token": "Wr0ng-S3CRET",
    }
    assert (await raw_handshake(audited.server.addr, answer))["result"] == "bad_admin_token"
    assert audited.audit.one() == line(
        "administration.token_refused",
        PEER,
        {},
        "refused",
        "bad_administration_token",
        result="bad_admin_token",
    )


# Revocation


async def test_revocation(audited: Audited, org: Organization) -> None:
    async with await org.alice.connect() as conn:
        await revoke(conn, org.alice, "bob")
        alice = {
            "kind": "device",
            "address": "127.0.0.1",
            "organization": org.organization_id,
            "id": org.alice.device_id,
        }
        target = {"organization": org.organization_id, "user": "bob"}
        assert audited.audit.one() == line("user.revoke", alice, target)
        rep = await conn.cmd("user_revoke", revoked_user_certificate=revocation(org.alice, "bob"))
        assert rep["status"] == "already_revoked"
        assert audited.audit.one() == line("user.revoke", alice, target, "already_revoked")


# Refused handshakes


def device_target(org: Organization, device_id: str) -> dict[str, str]:
    return {
        "organization": org.organization_id,
        "user": device_id.partition("@")[0],
        "device": device_id,
    }


async def test_refused_authenticated_handshakes(audited: Audited, org: Organization) -> None:
    addr = audited.server.addr
    cases: list[tuple[dict[str, Any], str, str, str]] = [
        ({"device_id": "nobody@laptop"}, "bad_identity", "unknown_device", "nobody@laptop"),
        (
            {"rvk": bytes(SigningKey.generate().verify_key)},
            "rvk_mismatch",
            "root_verify_key_mismatch",
            org.alice.device_id,
        ),
        ({"answer": b"garbage"}, "bad_protocol", "bad_signature", org.alice.device_id),
        (
            {"answer": lambda _: sign(org.alice.signing_key, b"not the challenge")},
            "bad_protocol",
            "bad_challenge",
            org.alice.device_id,
        ),
    ]
    for overrides, result, reason, device_id in cases:
        rep = await raw_handshake(addr, authenticated_answer(org.alice, **overrides))
        assert rep["result"] == result
        assert audited.audit.one() == line(
            "handshake.refused",
            PEER,
            device_target(org, device_id),
            "refused",
            reason,
            result=result,
        )


async def test_refused_handshake_of_a_revoked_device(audited: Audited, org: Organization) -> None:
    async with await org.alice.connect() as conn:
        await revoke(conn, org.alice, "bob")
    audited.audit.new()
    rep = await raw_handshake(audited.server.addr, authenticated_answer(org.bob))
    assert rep["result"] == "revoked_device"
    assert audited.audit.one() == line(
        "handshake.refused",
        PEER,
        device_target(org, org.bob.device_id),
        "refused",
        "revoked_device",
        result="revoked_device",
    )


async def test_refused_handshake_of_an_expired_organization(
    audited: Audited, org: Organization
) -> None:
    async with await audited.server.admin() as admin:
        await admin.cmd(
            "organization_update",
            organization_id=org.organization_id,
            expiration_date=DateTime.now(),
        )
    assert audited.audit.one()["action"] == "organization.expire"
    rep = await raw_handshake(audited.server.addr, authenticated_answer(org.alice))
    assert rep["result"] == "organization_expired"
    assert audited.audit.one() == line(
        "handshake.refused",
        PEER,
        device_target(org, org.alice.device_id),
        "refused",
        "organization_expired",
        result="organization_expired",
    )


async def test_refused_anonymous_and_invited_handshakes(
    audited: Audited, org: Organization
) -> None:
    unknown = new_organization_id()
    with pytest.raises(HandshakeRefused):
        await BackendConnection.connect(audited.server.addr, AnonymousAuth(unknown))
    assert audited.audit.one() == line(
        "handshake.refused",
        PEER,
        {"organization": unknown},
        "refused",
        "unknown_organization",
        result="bad_identity",
    )
    answer = {
        "handshake": "answer",
        "type": "INVITED",
        "client_api_version": [2, 0],
        "organization_id": org.organization_id,
        "invitation_type": "USER",
        "token": codec.ID.new(),
    }
    assert (await raw_handshake(audited.server.addr, answer))["result"] == "bad_identity"
    assert audited.audit.one() == line(
        "handshake.refused",
        PEER,
        {"organization": org.organization_id},
        "refused",
        "unknown_invitation",
        result="bad_identity",
    )


async def test_refused_undecodable_answers(audited: Audited) -> None:
    async with await raw_connect(audited.server.addr) as ws:
        await ws.recv()
        await ws.send("a text frame")
        await recv_map(ws)
    assert audited.audit.one() == line(
        "handshake.refused",
        PEER,
        {},
        "refused",
        "invalid_message_format",
        result="bad_protocol",
    )
    answer = {"handshake": "answer", "type": "AUTHENTICATED", "client_api_version": [3, 0]}
    assert (await raw_handshake(audited.server.addr, answer))["result"] == "bad_protocol"
    assert audited.audit.one()["reason"] == "unsupported_api_version"
    answer = {"handshake": "answer", "type": "nonsense", "client_api_version": [2, 0]}
    assert (await raw_handshake(audited.server.addr, answer))["result"] == "bad_protocol"
    assert audited.audit.one()["reason"] == "undecodable_answer"


async def test_accepted_handshakes_and_ordinary_commands_are_not_audited(
    audited: Audited, org: Organization
) -> None:
    async with await org.alice.connect() as conn:
        await conn.cmd("ping", ping="x")
    async with await audited.server.admin():
        pass
    assert audited.audit.new() == []


# The REST administration API


@pytest.fixture
async def rest(audited: Audited) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, f"http://127.0.0.1:{audited.server.addr.port}/administration")


async def test_rest_organization_create_and_update(audited: Audited, rest: Api) -> None:
    organization_id = new_organization_id()
    status, _ = await rest.call(
        "POST", "/organizations", {"organization_id": organization_id, "active_users_limit": 3}
    )
    assert status == 200
    target = {"organization": organization_id}
    assert audited.audit.one() == line(
        "organization.create",
        ADMINISTRATOR,
        target,
        **{**CREATE_DETAILS, "active_users_limit": 3},
    )
    path = f"/organizations/{organization_id}"
    await rest.call("PATCH", path, {"user_profile_outsider_allowed": False})
    assert audited.audit.one() == line(
        "organization.update", ADMINISTRATOR, target, user_profile_outsider_allowed=False
    )
    await rest.call("PATCH", path, {"is_expired": True})
    assert audited.audit.one() == line(
        "organization.expire", ADMINISTRATOR, target, is_expired=True
    )
    await rest.call("PATCH", path, {"is_expired": False})
    assert audited.audit.one() == line(
        "organization.update", ADMINISTRATOR, target, is_expired=False
    )
    status, _ = await rest.call("PATCH", "/organizations/Nope", {"is_expired": True})
    assert status == 404
    assert audited.audit.one() == line(
        "organization.update",
        ADMINISTRATOR,
        {"organization": "Nope"},
        "not_found",
        is_expired=True,
    )


async def test_rest_freeze_and_unfreeze(audited: Audited, org: Organization, rest: Api) -> None:
    path = f"/organizations/{org.organization_id}/users/freeze"
    target = {"organization": org.organization_id, "user": "bob"}
    await rest.call("POST", path, {"user_id": "bob", "frozen": True})
    assert audited.audit.one() == line("user.freeze", ADMINISTRATOR, target, by_email=False)
    await rest.call("POST", path, {"user_email": "bob@example.com", "frozen": False})
    assert audited.audit.one() == line("user.unfreeze", ADMINISTRATOR, target, by_email=True)
    status, _ = await rest.call("POST", path, {"user_email": "zack@example.com", "frozen": True})
    assert status == 404
    assert audited.audit.one() == line(
        "user.freeze",
        ADMINISTRATOR,
        {"organization": org.organization_id},
        "user_not_found",
        by_email=True,
    )


async def test_rest_frozen_user_refused_at_handshake(
    audited: Audited, org: Organization, rest: Api
) -> None:
    path = f"/organizations/{org.organization_id}/users/freeze"
    await rest.call("POST", path, {"user_id": "bob", "frozen": True})
    audited.audit.new()
    rep = await raw_handshake(audited.server.addr, authenticated_answer(org.bob))
    assert rep["result"] == "revoked_device"
    assert audited.audit.one() == line(
        "handshake.refused",
        PEER,
        device_target(org, org.bob.device_id),
        "refused",
        "frozen_user",
        result="revoked_device",
    )


async def test_rest_stats_exports(audited: Audited, org: Organization, rest: Api) -> None:
    await rest.call("GET", f"/organizations/{org.organization_id}/stats")
    assert audited.audit.one() == line(
        "organization.stats_export", ADMINISTRATOR, {"organization": org.organization_id}
    )
    await rest.call("GET", "/stats?format=csv&at=2024-06-01T00:00:00Z")
    assert audited.audit.one() == line(
        "server.stats_export", ADMINISTRATOR, {}, format="csv", at="2024-06-01T00:00:00.000Z"
    )
    await rest.call("GET", "/organizations")
    await rest.call("GET", f"/organizations/{org.organization_id}/users")
    assert audited.audit.new() == []


async def test_rest_refused_tokens(audited: Audited, rest: Api) -> None:
    status, _ = await rest.call("GET", "/organizations", headers={})
    assert status == 401
    assert audited.audit.one() == line(
        "administration.token_refused",
        PEER,
        {},
        "refused",
        "no_administration_token",
        status=401,
    )
    status, _ = await rest.call(
        "GET", "/organizations", headers={"Authorization": "Bearer Wr0ng-S3CRET"}
    )
    assert status == 403
    assert audited.audit.one() == line(
        "administration.token_refused",
        PEER,
        {},
        "refused",
        "bad_administration_token",
        status=403,
    )
