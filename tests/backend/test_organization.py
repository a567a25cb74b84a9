"""Organization commands (protocol/30-commands-org-user-invite.md §4): the administration
commands and the API 1 anonymous `organization_bootstrap`."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec
import pytest
import structlog
from nacl.signing import SigningKey

from parsec_server.api.certificates import (
    UserCertificate,
    unsecure_load,
)
from parsec_server.api.codec import DateTime
from parsec_server.api.crypto import sign
from parsec_server.api.handshake import API_V1
from parsec_server.api.ids import UserProfile
from parsec_server.api.protocol.organization import OrganizationBootstrapReq
from parsec_server.backend.client_context import AnonymousClientContext
from parsec_server.client.connection import AnonymousAuth, BackendConnection
from parsec_server.client.device import LocalDevice
from parsec_server.client.organization import bootstrap_organization, create_organization
from tests.backend.common import (
    OMIT,
    NewUser,
    anonymous_ws,
    assert_closed_without_reply,
    assert_still_open,
    authenticated_ws,
    create_user_by,
    new_user,
    now,
    revoke,
)
from tests.fixtures.servers import (
    ADMINISTRATION_TOKEN,
    Organization,
    RunningServer,
    ServerFactory,
    make_config,
    new_organization_id,
    running_server,
)

FAR_FUTURE = DateTime(datetime(2100, 1, 1, 12, 30, 15, 123456, tzinfo=UTC))


async def admin_cmd(server: RunningServer, cmd: str, **fields: Any) -> dict[str, Any]:
    async with await server.admin() as admin:
        return await admin.cmd(cmd, **fields)


async def status_of(server: RunningServer, organization_id: str) -> dict[str, Any]:
    return await admin_cmd(server, "organization_status", organization_id=organization_id)


# organization_create


async def test_create_returns_a_fresh_hex_token_and_no_expiration_date(
    server: RunningServer,
) -> None:
    rep = await admin_cmd(server, "organization_create", organization_id=new_organization_id())
    assert set(rep) == {"status", "bootstrap_token"}
    assert rep["status"] == "ok"
    assert re.fullmatch(r"[0-9a-f]{64}", rep["bootstrap_token"])


async def test_create_with_nil_expiration_date_does_not_echo_it(server: RunningServer) -> None:
    rep = await admin_cmd(
        server, "organization_create", organization_id=new_organization_id(), expiration_date=None
    )
    assert set(rep) == {"status", "bootstrap_token"}


async def test_create_with_expiration_date_echoes_it(server: RunningServer) -> None:
    organization_id = new_organization_id()
    rep = await admin_cmd(
        server, "organization_create", organization_id=organization_id, expiration_date=FAR_FUTURE
    )
    assert rep == {
        "status": "ok",
        "bootstrap_token": rep["bootstrap_token"],
        "expiration_date": FAR_FUTURE,
    }
    assert await status_of(server, organization_id) == {
        "status": "ok",
        "is_bootstrapped": False,
        "expiration_date": FAR_FUTURE,
    }


async def test_create_twice_gives_different_tokens(server: RunningServer) -> None:
    organization_id = new_organization_id()
    first = await create_organization(server.addr, ADMINISTRATION_TOKEN, organization_id)
    second = await create_organization(server.addr, ADMINISTRATION_TOKEN, organization_id)
    assert first != second


async def test_create_overwrite_invalidates_the_previous_bootstrap_token(
    server: RunningServer,
) -> None:
    organization_id = new_organization_id()
    old = await create_organization(server.addr, ADMINISTRATION_TOKEN, organization_id)
    new = await create_organization(server.addr, ADMINISTRATION_TOKEN, organization_id)
    material = Bootstrap.new()
    assert await bootstrap_cmd(server, organization_id, material.fields(old)) == {
        "status": "not_found"
    }
    assert await bootstrap_cmd(server, organization_id, material.fields(new)) == {"status": "ok"}


async def test_create_overwrite_replaces_the_expiration_date(server: RunningServer) -> None:
    organization_id = new_organization_id()
    await create_organization(server.addr, ADMINISTRATION_TOKEN, organization_id, FAR_FUTURE)
    await create_organization(server.addr, ADMINISTRATION_TOKEN, organization_id)
    assert (await status_of(server, organization_id))["expiration_date"] is None


async def test_create_bootstrapped_organization_is_already_exists(
    server: RunningServer, org: Organization
) -> None:
    rep = await admin_cmd(server, "organization_create", organization_id=org.organization_id)
    assert rep == {"status": "already_exists"}
    # Nothing changed: the organization still works.
    async with await org.alice.connect() as conn:
        assert (await conn.cmd("ping", ping="x"))["status"] == "ok"


@pytest.mark.parametrize("organization_id", ["bad id", "a" * 33, "", "é" * 17, 42, None])
async def test_create_with_invalid_organization_id_is_bad_message(
    server: RunningServer, organization_id: object
) -> None:
    rep = await admin_cmd(server, "organization_create", organization_id=organization_id)
    assert rep["status"] == "bad_message"
    assert rep["reason"] == "Invalid message."
    assert set(rep["errors"]) == {"organization_id"}


async def test_create_without_organization_id_is_bad_message(server: RunningServer) -> None:
    rep = await admin_cmd(server, "organization_create")
    assert rep == {
        "status": "bad_message",
        "reason": "Invalid message.",
        "errors": {"organization_id": ["Missing data for required field."]},
    }


# organization_status


async def test_status_of_a_created_organization(server: RunningServer) -> None:
    organization_id = new_organization_id()
    await create_organization(server.addr, ADMINISTRATION_TOKEN, organization_id)
    assert await status_of(server, organization_id) == {
        "status": "ok",
        "is_bootstrapped": False,
        "expiration_date": None,
    }


async def test_status_of_a_bootstrapped_organization(
    server: RunningServer, org: Organization
) -> None:
    assert await status_of(server, org.organization_id) == {
        "status": "ok",
        "is_bootstrapped": True,
        "expiration_date": None,
    }


async def test_status_of_an_unknown_organization_is_not_found(server: RunningServer) -> None:
    assert await status_of(server, new_organization_id()) == {"status": "not_found"}


# organization_stats


async def test_stats_of_a_new_organization(server: RunningServer) -> None:
    organization_id = new_organization_id()
    await create_organization(server.addr, ADMINISTRATION_TOKEN, organization_id)
    rep = await admin_cmd(server, "organization_stats", organization_id=organization_id)
    assert rep == {"status": "ok", "users": 0, "data_size": 0, "metadata_size": 0}


async def test_stats_count_users_including_revoked_ones(
    server: RunningServer, org: Organization
) -> None:
    rep = await admin_cmd(server, "organization_stats", organization_id=org.organization_id)
    assert rep == {"status": "ok", "users": 3, "data_size": 0, "metadata_size": 0}
    async with await org.alice.connect() as conn:
        await revoke(conn, org.alice, "bob")
        await create_user_by(conn, org.alice, "dave")
    rep = await admin_cmd(server, "organization_stats", organization_id=org.organization_id)
    assert rep["users"] == 4


async def test_stats_of_an_unknown_organization_is_not_found(server: RunningServer) -> None:
    rep = await admin_cmd(server, "organization_stats", organization_id=new_organization_id())
    assert rep == {"status": "not_found"}


# organization_update


async def test_update_of_an_unknown_organization_is_not_found(server: RunningServer) -> None:
    rep = await admin_cmd(
        server,
        "organization_update",
        organization_id=new_organization_id(),
        expiration_date=FAR_FUTURE,
    )
    assert rep == {"status": "not_found"}


async def test_update_sets_then_removes_the_expiration_date(
    server: RunningServer, org: Organization
) -> None:
    async with await server.admin() as admin:
        rep = await admin.cmd(
            "organization_update", organization_id=org.organization_id, expiration_date=FAR_FUTURE
        )
        assert rep == {"status": "ok"}
        assert (await status_of(server, org.organization_id))["expiration_date"] == FAR_FUTURE
        rep = await admin.cmd(
            "organization_update", organization_id=org.organization_id, expiration_date=None
        )
        assert rep == {"status": "ok"}
        assert (await status_of(server, org.organization_id))["expiration_date"] is None


async def test_update_without_expiration_date_is_bad_message(
    server: RunningServer, org: Organization
) -> None:
    async with await server.admin() as admin:
        rep = await admin.cmd("organization_update", organization_id=org.organization_id)
        assert rep == {
            "status": "bad_message",
            "reason": "Invalid message.",
            "errors": {"expiration_date": ["Missing data for required field."]},
        }
        # The connection is still usable.
        assert await admin.cmd("ping", ping="x") == {"status": "ok", "pong": "x"}


async def test_update_with_past_date_closes_authenticated_connections_of_the_organization(
    server: RunningServer, org: Organization
) -> None:
    alice_ws = await authenticated_ws(org.alice)
    bob_v1_ws = await authenticated_ws(org.bob, API_V1)
    rep = await admin_cmd(
        server,
        "organization_update",
        organization_id=org.organization_id,
        expiration_date=now().add(-1),
    )
    assert rep == {"status": "ok"}
    assert await assert_closed_without_reply(alice_ws) == 1000
    assert await assert_closed_without_reply(bob_v1_ws) == 1000


async def test_update_with_past_date_keeps_anonymous_connections_open(
    server: RunningServer, org: Organization
) -> None:
    anonymous = await anonymous_ws(server.addr, org.organization_id)
    watcher = await authenticated_ws(org.alice)
    rep = await admin_cmd(
        server,
        "organization_update",
        organization_id=org.organization_id,
        expiration_date=now().add(-1),
    )
    assert rep == {"status": "ok"}
    # Once the authenticated connection is closed, the expiration has been processed.
    await assert_closed_without_reply(watcher)
    await assert_still_open(anonymous)
    await anonymous.close()


async def test_update_with_past_date_keeps_other_organizations_connections_open(
    server: RunningServer, org: Organization
) -> None:
    other_id = new_organization_id()
    token = await create_organization(server.addr, ADMINISTRATION_TOKEN, other_id)
    other = await bootstrap_organization(server.addr, other_id, token, None, None)
    other_ws = await authenticated_ws(other)
    watcher = await authenticated_ws(org.alice)
    rep = await admin_cmd(
        server,
        "organization_update",
        organization_id=org.organization_id,
        expiration_date=now().add(-1),
    )
    assert rep == {"status": "ok"}
    await assert_closed_without_reply(watcher)
    await assert_still_open(other_ws)
    await other_ws.close()


async def test_update_with_future_date_keeps_connections_open(
    server: RunningServer, org: Organization
) -> None:
    alice_ws = await authenticated_ws(org.alice)
    rep = await admin_cmd(
        server,
        "organization_update",
        organization_id=org.organization_id,
        expiration_date=now().add(3600),
    )
    assert rep == {"status": "ok"}
    await assert_still_open(alice_ws)
    await alice_ws.close()


# organization_bootstrap


@dataclass
class Bootstrap:
    """A root key and the first user's certificates (structs, altered by the tests)."""

    root_key: SigningKey
    first: NewUser
    overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(
        cls,
        human_handle: tuple[str, str] | None = ("zack@example.com", "Zack"),
        device_label: str | None = "Zack's pc",
        profile: UserProfile = UserProfile.ADMIN,
        timestamp: DateTime | None = None,
    ) -> Bootstrap:
        root_key = SigningKey.generate()
        first = new_user(
            None,
            root_key,
            "zack",
            device_name="pc",
            human_handle=human_handle,
            device_label=device_label,
            profile=profile,
            timestamp=timestamp,
        )
        return cls(root_key, first)

    @property
    def rvk(self) -> bytes:
        return bytes(self.root_key.verify_key)

    def fields(self, token: str, **overrides: Any) -> dict[str, Any]:
        """The request; an override may be a struct (signed with the root key), bytes, or
        OMIT."""
        base = {"bootstrap_token": token, "root_verify_key": self.rvk}
        return self.first.request(base, **overrides)

    def local_device(self, server: RunningServer, organization_id: str) -> LocalDevice:
        return LocalDevice(
            backend_addr=server.addr,
            organization_id=organization_id,
            device_id=self.first.device.device_id,
            device_label=self.first.device.device_label,
            human_handle=self.first.user.human_handle,
            profile=UserProfile.ADMIN,
            signing_key=self.first.signing_key,
            private_key=self.first.private_key,
            root_verify_key=self.rvk,
        )


@dataclass
class Reserved:
    """An organization created by the administrator, not bootstrapped yet."""

    organization_id: str
    token: str


@pytest.fixture
async def reserved(server: RunningServer) -> Reserved:
    organization_id = new_organization_id()
    token = await create_organization(server.addr, ADMINISTRATION_TOKEN, organization_id)
    return Reserved(organization_id, token)


async def bootstrap_cmd(
    server: RunningServer, organization_id: str, fields: dict[str, Any]
) -> dict[str, Any]:
    async with await BackendConnection.connect(server.addr, AnonymousAuth(organization_id)) as c:
        return await c.cmd("organization_bootstrap", **fields)


async def assert_refused(
    server: RunningServer, reserved: Reserved, fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert await bootstrap_cmd(server, reserved.organization_id, fields) == expected
    assert (await status_of(server, reserved.organization_id))["is_bootstrapped"] is False


def invalid_certification(detail: str) -> dict[str, Any]:
    return {"status": "invalid_certification", "reason": f"Invalid certification data ({detail})."}


def invalid_data(reason: str) -> dict[str, Any]:
    return {"status": "invalid_data", "reason": reason}


FORGED = invalid_certification("Signature was forged or corrupt")
CERTIFICATE_FIELDS = [
    "user_certificate",
    "device_certificate",
    "redacted_user_certificate",
    "redacted_device_certificate",
]


async def test_bootstrap_succeeds_and_the_first_device_can_connect(
    server: RunningServer, reserved: Reserved
) -> None:
    material = Bootstrap.new()
    rep = await bootstrap_cmd(server, reserved.organization_id, material.fields(reserved.token))
    assert rep == {"status": "ok"}
    assert await status_of(server, reserved.organization_id) == {
        "status": "ok",
        "is_bootstrapped": True,
        "expiration_date": None,
    }
    device = material.local_device(server, reserved.organization_id)
    async with await device.connect() as conn:
        rep = await conn.cmd("user_get", user_id="zack")
    fields = material.fields(reserved.token)
    assert rep == {
        "status": "ok",
        "user_certificate": fields["user_certificate"],
        "revoked_user_certificate": None,
        "device_certificates": [fields["device_certificate"]],
        "trustchain": {"devices": [], "users": [], "revoked_users": []},
    }


async def test_bootstrap_ignores_an_organization_id_field(
    server: RunningServer, reserved: Reserved
) -> None:
    material = Bootstrap.new()
    fields = material.fields(reserved.token, organization_id="SomethingElse")
    assert await bootstrap_cmd(server, reserved.organization_id, fields) == {"status": "ok"}
    assert (await status_of(server, reserved.organization_id))["is_bootstrapped"] is True
    assert await status_of(server, "SomethingElse") == {"status": "not_found"}


async def test_bootstrap_stores_redacted_certificates_for_outsiders(
    server: RunningServer, reserved: Reserved
) -> None:
    material = Bootstrap.new()
    fields = material.fields(reserved.token)
    assert await bootstrap_cmd(server, reserved.organization_id, fields) == {"status": "ok"}
    admin = material.local_device(server, reserved.organization_id)
    async with await admin.connect() as conn:
        outsider, _ = await create_user_by(conn, admin, "olga", profile=UserProfile.OUTSIDER)
    async with await outsider.connect() as conn:
        rep = await conn.cmd("user_get", user_id="zack")
    assert rep["user_certificate"] == fields["redacted_user_certificate"]
    assert rep["device_certificates"] == [fields["redacted_device_certificate"]]


async def test_legacy_bootstrap_without_redacted_certificates_stores_the_full_ones(
    server: RunningServer, reserved: Reserved
) -> None:
    material = Bootstrap.new()
    fields = material.fields(
        reserved.token, redacted_user_certificate=OMIT, redacted_device_certificate=OMIT
    )
    assert await bootstrap_cmd(server, reserved.organization_id, fields) == {"status": "ok"}
    admin = material.local_device(server, reserved.organization_id)
    async with await admin.connect() as conn:
        outsider, _ = await create_user_by(conn, admin, "olga", profile=UserProfile.OUTSIDER)
    async with await outsider.connect() as conn:
        rep = await conn.cmd("user_get", user_id="zack")
    # Even with a human handle and a device label, the outsider gets the full ones.
    assert rep["user_certificate"] == fields["user_certificate"]
    assert rep["device_certificates"] == [fields["device_certificate"]]


async def test_bootstrap_accepts_a_legacy_user_certificate_without_profile(
    server: RunningServer, reserved: Reserved
) -> None:
    material = Bootstrap.new()
    legacy = msgspec.structs.replace(material.first.user, profile=msgspec.UNSET)
    fields = material.fields(
        reserved.token,
        user_certificate=legacy,
        redacted_user_certificate=msgspec.structs.replace(legacy, human_handle=None),
    )
    assert await bootstrap_cmd(server, reserved.organization_id, fields) == {"status": "ok"}


async def test_bootstrap_without_human_handle_nor_device_label(
    server: RunningServer, reserved: Reserved
) -> None:
    material = Bootstrap.new(human_handle=None, device_label=None)
    rep = await bootstrap_cmd(server, reserved.organization_id, material.fields(reserved.token))
    assert rep == {"status": "ok"}


@pytest.mark.parametrize(
    "overrides, field_name",
    [
        ({"redacted_user_certificate": None}, "redacted_user_certificate"),
        ({"redacted_device_certificate": None}, "redacted_device_certificate"),
        ({"user_certificate": OMIT}, "user_certificate"),
        ({"device_certificate": OMIT}, "device_certificate"),
        ({"bootstrap_token": OMIT}, "bootstrap_token"),
        ({"bootstrap_token": None}, "bootstrap_token"),
        ({"root_verify_key": b"\x00" * 31}, "root_verify_key"),
        ({"root_verify_key": "not bytes"}, "root_verify_key"),
        ({"user_certificate": "not bytes"}, "user_certificate"),
    ],
)
async def test_bootstrap_with_invalid_fields_is_bad_message(
    server: RunningServer, reserved: Reserved, overrides: dict[str, Any], field_name: str
) -> None:
    fields = Bootstrap.new().fields(reserved.token, **overrides)
    rep = await bootstrap_cmd(server, reserved.organization_id, fields)
    assert rep["status"] == "bad_message"
    assert rep["reason"] == "Invalid message."
    assert set(rep["errors"]) == {field_name}


@pytest.mark.parametrize("certificate", CERTIFICATE_FIELDS)
async def test_bootstrap_certificate_signed_by_another_key_is_invalid_certification(
    server: RunningServer, reserved: Reserved, certificate: str
) -> None:
    material = Bootstrap.new()
    forged = material.first.signed(key=SigningKey.generate())[certificate]
    fields = material.fields(reserved.token, **{certificate: forged})
    await assert_refused(server, reserved, fields, FORGED)


async def test_bootstrap_certificates_signed_by_a_key_other_than_root_verify_key_are_refused(
    server: RunningServer, reserved: Reserved
) -> None:
    material = Bootstrap.new()
    fields = material.fields(
        reserved.token, root_verify_key=bytes(SigningKey.generate().verify_key)
    )
    await assert_refused(server, reserved, fields, FORGED)


@pytest.mark.parametrize("certificate", CERTIFICATE_FIELDS)
async def test_bootstrap_certificate_with_an_author_is_invalid_certification(
    server: RunningServer, reserved: Reserved, certificate: str
) -> None:
    material = Bootstrap.new()
    struct = {
        "user_certificate": material.first.user,
        "device_certificate": material.first.device,
        "redacted_user_certificate": material.first.redacted_user,
        "redacted_device_certificate": material.first.redacted_device,
    }[certificate]
    fields = material.fields(
        reserved.token, **{certificate: msgspec.structs.replace(struct, author="zack@pc")}
    )
    await assert_refused(
        server,
        reserved,
        fields,
        invalid_certification("Invalid author: expected `<root key>`, got `zack@pc`"),
    )


@pytest.mark.parametrize("certificate", CERTIFICATE_FIELDS)
@pytest.mark.parametrize("garbage", ["short", "not_zlib", "not_msgpack", "wrong_kind"])
async def test_bootstrap_undecodable_certificate_is_invalid_certification(
    server: RunningServer, reserved: Reserved, certificate: str, garbage: str
) -> None:
    material = Bootstrap.new()
    value = {
        "short": b"garbage",
        "not_zlib": sign(material.root_key, b"not zlib data"),
        "not_msgpack": sign(material.root_key, zlib.compress(b"\xc1\xc1")),
        # A valid certificate of the other kind.
        "wrong_kind": material.first.signed()[
            "device_certificate" if "user" in certificate else "user_certificate"
        ],
    }[garbage]
    fields = material.fields(reserved.token, **{certificate: value})
    rep = await bootstrap_cmd(server, reserved.organization_id, fields)
    assert rep["status"] == "invalid_certification"
    assert rep["reason"].startswith("Invalid certification data (")
    assert rep["reason"].endswith(").")
    assert set(rep) == {"status", "reason"}


async def test_bootstrap_verifies_the_user_certificate_before_the_device_certificate(
    server: RunningServer, reserved: Reserved
) -> None:
    material = Bootstrap.new()
    fields = material.fields(
        reserved.token,
        user_certificate=material.first.signed(key=SigningKey.generate())["user_certificate"],
        device_certificate=msgspec.structs.replace(material.first.device, author="zack@pc"),
    )
    await assert_refused(server, reserved, fields, FORGED)


async def test_bootstrap_verifies_certificates_before_checking_the_profile(
    server: RunningServer, reserved: Reserved
) -> None:
    material = Bootstrap.new(profile=UserProfile.STANDARD)
    forged = material.first.signed(key=SigningKey.generate())["redacted_device_certificate"]
    fields = material.fields(reserved.token, redacted_device_certificate=forged)
    await assert_refused(server, reserved, fields, FORGED)


@pytest.mark.parametrize("profile", [UserProfile.STANDARD, UserProfile.OUTSIDER])
async def test_bootstrap_with_non_admin_profile_is_invalid_data(
    server: RunningServer, reserved: Reserved, profile: UserProfile
) -> None:
    material = Bootstrap.new(profile=profile)
    await assert_refused(
        server,
        reserved,
        material.fields(reserved.token),
        invalid_data("Bootstrapping user must have admin profile."),
    )


async def test_bootstrap_with_legacy_non_admin_user_is_invalid_data(
    server: RunningServer, reserved: Reserved
) -> None:
    material = Bootstrap.new()
    legacy = msgspec.structs.replace(material.first.user, is_admin=False, profile=msgspec.UNSET)
    fields = material.fields(
        reserved.token,
        user_certificate=legacy,
        redacted_user_certificate=msgspec.structs.replace(legacy, human_handle=None),
    )
    await assert_refused(
        server, reserved, fields, invalid_data("Bootstrapping user must have admin profile.")
    )


async def test_bootstrap_with_different_timestamps_is_invalid_data(
    server: RunningServer, reserved: Reserved
) -> None:
    material = Bootstrap.new()
    device = msgspec.structs.replace(
        material.first.device, timestamp=material.first.device.timestamp.add(1)
    )
    fields = material.fields(
        reserved.token,
        device_certificate=device,
        redacted_device_certificate=msgspec.structs.replace(device, device_label=None),
    )
    await assert_refused(
        server,
        reserved,
        fields,
        invalid_data("Device and user certificates must have the same timestamp."),
    )


async def test_bootstrap_with_different_user_ids_is_invalid_data(
    server: RunningServer, reserved: Reserved
) -> None:
    material = Bootstrap.new()
    device = msgspec.structs.replace(material.first.device, device_id="other@pc")
    fields = material.fields(
        reserved.token,
        device_certificate=device,
        redacted_device_certificate=msgspec.structs.replace(device, device_label=None),
    )
    await assert_refused(
        server, reserved, fields, invalid_data("Device and user must have the same user ID.")
    )


@pytest.mark.parametrize("offset", [-1801, 1801, -86400 * 365])
async def test_bootstrap_outside_the_ballpark_is_invalid_certification(
    server: RunningServer, reserved: Reserved, offset: float
) -> None:
    material = Bootstrap.new(timestamp=now().add(offset))
    await assert_refused(
        server,
        reserved,
        material.fields(reserved.token),
        {"status": "invalid_certification", "reason": "Invalid timestamp in certification."},
    )


@pytest.mark.parametrize("offset", [-1700, 1700])
async def test_bootstrap_inside_the_ballpark_is_accepted(
    server: RunningServer, reserved: Reserved, offset: float
) -> None:
    material = Bootstrap.new(timestamp=now().add(offset))
    rep = await bootstrap_cmd(server, reserved.organization_id, material.fields(reserved.token))
    assert rep == {"status": "ok"}


async def test_bootstrap_checks_same_timestamp_and_user_id_before_the_ballpark(
    server: RunningServer, reserved: Reserved
) -> None:
    material = Bootstrap.new(timestamp=now().add(-7200))
    device = msgspec.structs.replace(material.first.device, device_id="other@pc")
    fields = material.fields(
        reserved.token,
        device_certificate=device,
        redacted_device_certificate=msgspec.structs.replace(device, device_label=None),
    )
    await assert_refused(
        server, reserved, fields, invalid_data("Device and user must have the same user ID.")
    )


REDACTED_USER_DIFFERS = invalid_data("Redacted User certificate differs from User certificate.")
REDACTED_USER_HAS_HANDLE = invalid_data(
    "Redacted User certificate must not contain a human_handle field."
)
REDACTED_DEVICE_DIFFERS = invalid_data(
    "Redacted Device certificate differs from Device certificate."
)
REDACTED_DEVICE_HAS_LABEL = invalid_data(
    "Redacted Device certificate must not contain a device_label field."
)


@pytest.mark.parametrize(
    "change",
    [
        {"public_key": bytes(32)},
        {"user_id": "zed"},
        {"profile": UserProfile.STANDARD, "is_admin": False},
        {"is_admin": False},
        "timestamp",
    ],
)
async def test_bootstrap_redacted_user_differing_is_invalid_data(
    server: RunningServer, reserved: Reserved, change: dict[str, Any] | str
) -> None:
    material = Bootstrap.new()
    redacted = material.first.redacted_user
    if change == "timestamp":
        change = {"timestamp": redacted.timestamp.add(-1)}
    assert isinstance(change, dict)
    fields = material.fields(
        reserved.token, redacted_user_certificate=msgspec.structs.replace(redacted, **change)
    )
    await assert_refused(server, reserved, fields, REDACTED_USER_DIFFERS)


@pytest.mark.parametrize(
    "handle", [("zack@example.com", "Zack"), ("someone@example.com", "Someone")]
)
async def test_bootstrap_redacted_user_with_human_handle_is_invalid_data(
    server: RunningServer, reserved: Reserved, handle: tuple[str, str]
) -> None:
    material = Bootstrap.new()
    redacted = msgspec.structs.replace(material.first.user, human_handle=handle)
    fields = material.fields(reserved.token, redacted_user_certificate=redacted)
    await assert_refused(server, reserved, fields, REDACTED_USER_HAS_HANDLE)


@pytest.mark.parametrize(
    "change",
    [{"verify_key": bytes(32)}, {"device_id": "zack@other"}, "timestamp"],
)
async def test_bootstrap_redacted_device_differing_is_invalid_data(
    server: RunningServer, reserved: Reserved, change: dict[str, Any] | str
) -> None:
    material = Bootstrap.new()
    redacted = material.first.redacted_device
    if change == "timestamp":
        change = {"timestamp": redacted.timestamp.add(1)}
    assert isinstance(change, dict)
    fields = material.fields(
        reserved.token, redacted_device_certificate=msgspec.structs.replace(redacted, **change)
    )
    await assert_refused(server, reserved, fields, REDACTED_DEVICE_DIFFERS)


@pytest.mark.parametrize("label", ["Zack's pc", "Another label"])
async def test_bootstrap_redacted_device_with_label_is_invalid_data(
    server: RunningServer, reserved: Reserved, label: str
) -> None:
    material = Bootstrap.new()
    redacted = msgspec.structs.replace(material.first.device, device_label=label)
    fields = material.fields(reserved.token, redacted_device_certificate=redacted)
    await assert_refused(server, reserved, fields, REDACTED_DEVICE_HAS_LABEL)


async def test_bootstrap_checks_the_redacted_user_before_the_redacted_device(
    server: RunningServer, reserved: Reserved
) -> None:
    material = Bootstrap.new()
    fields = material.fields(
        reserved.token,
        redacted_user_certificate=material.first.user,
        redacted_device_certificate=material.first.device,
    )
    await assert_refused(server, reserved, fields, REDACTED_USER_HAS_HANDLE)


@pytest.mark.parametrize("missing", ["redacted_user_certificate", "redacted_device_certificate"])
async def test_bootstrap_with_only_one_redacted_certificate_is_invalid_data(
    server: RunningServer, reserved: Reserved, missing: str
) -> None:
    fields = Bootstrap.new().fields(reserved.token, **{missing: OMIT})
    await assert_refused(
        server,
        reserved,
        fields,
        invalid_data("Redacted user&device certificate muste be provided together"),
    )


async def test_bootstrap_checks_the_given_redacted_certificate_before_requiring_both(
    server: RunningServer, reserved: Reserved
) -> None:
    material = Bootstrap.new()
    fields = material.fields(
        reserved.token,
        redacted_user_certificate=material.first.user,
        redacted_device_certificate=OMIT,
    )
    await assert_refused(server, reserved, fields, REDACTED_USER_HAS_HANDLE)


async def test_bootstrap_twice_is_already_bootstrapped(
    server: RunningServer, reserved: Reserved
) -> None:
    fields = Bootstrap.new().fields(reserved.token)
    assert await bootstrap_cmd(server, reserved.organization_id, fields) == {"status": "ok"}
    again = Bootstrap.new().fields(reserved.token)
    rep = await bootstrap_cmd(server, reserved.organization_id, again)
    assert rep == {"status": "already_bootstrapped"}


async def test_bootstrap_of_a_bootstrapped_organization_with_a_wrong_token_is_already_bootstrapped(
    server: RunningServer, org: Organization
) -> None:
    fields = Bootstrap.new().fields("wrong token")
    rep = await bootstrap_cmd(server, org.organization_id, fields)
    assert rep == {"status": "already_bootstrapped"}


async def test_bootstrap_checks_certificates_before_already_bootstrapped(
    server: RunningServer, org: Organization
) -> None:
    fields = Bootstrap.new(profile=UserProfile.STANDARD).fields("wrong token")
    rep = await bootstrap_cmd(server, org.organization_id, fields)
    assert rep == invalid_data("Bootstrapping user must have admin profile.")


@pytest.mark.parametrize("token", ["wrong", "", "0" * 64])
async def test_bootstrap_with_wrong_token_is_not_found(
    server: RunningServer, reserved: Reserved, token: str
) -> None:
    fields = Bootstrap.new().fields(token)
    await assert_refused(server, reserved, fields, {"status": "not_found"})


async def test_bootstrap_of_an_unknown_organization_is_not_found(server: RunningServer) -> None:
    # An anonymous handshake needs an existing organization (or creates it, with
    # spontaneous bootstrap), so the unknown-organization branch is only reachable by
    # calling the command handler directly.
    fields = Bootstrap.new().fields("token")
    req = OrganizationBootstrapReq(
        bootstrap_token=fields["bootstrap_token"],
        root_verify_key=fields["root_verify_key"],
        user_certificate=fields["user_certificate"],
        device_certificate=fields["device_certificate"],
        redacted_user_certificate=fields["redacted_user_certificate"],
        redacted_device_certificate=fields["redacted_device_certificate"],
    )
    client = AnonymousClientContext(organization_id=new_organization_id())
    rep = await server.app.organization.api_organization_bootstrap(client, req)
    assert rep == {"status": "not_found"}


async def test_spontaneous_bootstrap_uses_the_empty_token(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(spontaneous_organization_bootstrap=True) as server:
        organization_id = new_organization_id()
        material = Bootstrap.new()
        rep = await bootstrap_cmd(server, organization_id, material.fields("wrong"))
        assert rep == {"status": "not_found"}
        rep = await bootstrap_cmd(server, organization_id, material.fields(""))
        assert rep == {"status": "ok"}


async def test_organization_created_by_the_administrator_refuses_the_empty_token(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(spontaneous_organization_bootstrap=True) as server:
        organization_id = new_organization_id()
        token = await create_organization(server.addr, ADMINISTRATION_TOKEN, organization_id)
        material = Bootstrap.new()
        rep = await bootstrap_cmd(server, organization_id, material.fields(""))
        assert rep == {"status": "not_found"}
        rep = await bootstrap_cmd(server, organization_id, material.fields(token))
        assert rep == {"status": "ok"}


# Bootstrap webhook


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    url: str
    requests: list[ReceivedRequest]
    status: int = 200


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A tiny HTTP server on the loopback recording every request."""
    requests: list[ReceivedRequest] = []
    receiver = WebhookReceiver(url="", requests=requests)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            requests.append(
                ReceivedRequest(
                    method="POST",
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
            )
            self.send_response(receiver.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{httpd.server_address[1]}/hooks/bootstrap?x=1"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


async def test_bootstrap_webhook_receives_the_json_description(
    server_factory: ServerFactory, webhook_receiver: WebhookReceiver
) -> None:
    async with server_factory(organization_bootstrap_webhook=webhook_receiver.url) as server:
        organization_id = new_organization_id()
        token = await create_organization(server.addr, ADMINISTRATION_TOKEN, organization_id)
        rep = await bootstrap_cmd(server, organization_id, Bootstrap.new().fields(token))
        assert rep == {"status": "ok"}
    # The reply comes after the webhook call returned: the request is already recorded.
    assert len(webhook_receiver.requests) == 1
    request = webhook_receiver.requests[0]
    assert request.method == "POST"
    assert request.path == "/hooks/bootstrap?x=1"
    assert request.headers["content-type"] == "application/json; charset=utf-8"
    expected = {
        "device_id": "zack@pc",
        "device_label": "Zack's pc",
        "human_email": "zack@example.com",
        "human_label": "Zack",
        "organization_id": organization_id,
    }
    assert json.loads(request.body) == expected
    # Same serialization as the reference: sorted keys, ", " and ": " separators.
    assert request.body == json.dumps(expected, sort_keys=True).encode()


async def test_bootstrap_webhook_sends_nulls_without_human_handle_nor_label(
    server_factory: ServerFactory, webhook_receiver: WebhookReceiver
) -> None:
    async with server_factory(organization_bootstrap_webhook=webhook_receiver.url) as server:
        organization_id = new_organization_id()
        token = await create_organization(server.addr, ADMINISTRATION_TOKEN, organization_id)
        material = Bootstrap.new(human_handle=None, device_label=None)
        rep = await bootstrap_cmd(server, organization_id, material.fields(token))
        assert rep == {"status": "ok"}
    assert [json.loads(r.body) for r in webhook_receiver.requests] == [
        {
            "device_id": "zack@pc",
            "device_label": None,
            "human_email": None,
            "human_label": None,
            "organization_id": organization_id,
        }
    ]


async def test_bootstrap_webhook_is_not_called_on_a_refused_bootstrap(
    server_factory: ServerFactory, webhook_receiver: WebhookReceiver
) -> None:
    async with server_factory(organization_bootstrap_webhook=webhook_receiver.url) as server:
        organization_id = new_organization_id()
        await create_organization(server.addr, ADMINISTRATION_TOKEN, organization_id)
        rep = await bootstrap_cmd(server, organization_id, Bootstrap.new().fields("wrong"))
        assert rep == {"status": "not_found"}
    assert webhook_receiver.requests == []


async def test_bootstrap_webhook_error_status_still_gives_ok(
    server_factory: ServerFactory, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.status = 500
    async with server_factory(organization_bootstrap_webhook=webhook_receiver.url) as server:
        organization_id = new_organization_id()
        token = await create_organization(server.addr, ADMINISTRATION_TOKEN, organization_id)
        rep = await bootstrap_cmd(server, organization_id, Bootstrap.new().fields(token))
        assert rep == {"status": "ok"}
        assert (await status_of(server, organization_id))["is_bootstrapped"] is True
    assert len(webhook_receiver.requests) == 1


async def test_bootstrap_webhook_down_still_gives_ok(server_factory: ServerFactory) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/webhook"
    async with server_factory(organization_bootstrap_webhook=url) as server:
        organization_id = new_organization_id()
        token = await create_organization(server.addr, ADMINISTRATION_TOKEN, organization_id)
        material = Bootstrap.new()
        rep = await bootstrap_cmd(server, organization_id, material.fields(token))
        assert rep == {"status": "ok"}
        async with await material.local_device(server, organization_id).connect() as conn:
            assert (await conn.cmd("ping", ping="x"))["status"] == "ok"


@asynccontextmanager
async def tcp_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    """A loopback server running `handler` for each connection; yields its port. The
    handlers still running at the end are cancelled."""
    tasks: set[asyncio.Task[None]] = set()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        server.close()
        await server.wait_closed()


async def timed_bootstrap_with_webhook(port: int) -> tuple[dict[str, Any], float, list[Any]]:
    """Bootstrap an organization on a server whose webhook (0.5 s) is on `port`:
    (reply, seconds it took, logs)."""
    url = f"http://127.0.0.1:{port}/webhook"
    config = make_config(
        organization_bootstrap_webhook=url, organization_bootstrap_webhook_timeout=0.5
    )
    async with running_server(config) as server:
        organization_id = new_organization_id()
        token = await create_organization(server.addr, ADMINISTRATION_TOKEN, organization_id)
        with structlog.testing.capture_logs() as logs:
            started = time.monotonic()
            rep = await bootstrap_cmd(server, organization_id, Bootstrap.new().fields(token))
            elapsed = time.monotonic() - started
        assert (await status_of(server, organization_id))["is_bootstrapped"] is True
    return rep, elapsed, logs


def webhook_failures(logs: list[Any]) -> list[Any]:
    return [entry for entry in logs if entry["event"] == "bootstrap webhook failed"]


async def test_bootstrap_webhook_that_never_answers_is_given_up_after_its_timeout() -> None:
    requests: list[bytes] = []

    async def read_and_say_nothing(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        await asyncio.Event().wait()

    async with tcp_server(read_and_say_nothing) as port:
        rep, elapsed, logs = await timed_bootstrap_with_webhook(port)
    assert rep == {"status": "ok"}
    assert 0.4 < elapsed < 3
    assert [r.split(b" ", 2)[:2] for r in requests] == [[b"POST", b"/webhook"]]
    assert [entry["error"] for entry in webhook_failures(logs)] == ["no answer in 0.5 s"]


async def test_bootstrap_webhook_timeout_bounds_the_whole_call() -> None:
    """A webhook answering a byte at a time never lets one socket read time out: the
    timeout is the whole call's."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while True:
            writer.write(b"z")
            await writer.drain()
            await asyncio.sleep(0.05)

    async with tcp_server(trickle) as port:
        rep, elapsed, logs = await timed_bootstrap_with_webhook(port)
    assert rep == {"status": "ok"}
    assert 0.4 < elapsed < 3
    assert len(webhook_failures(logs)) == 1


# Every administration command refuses garbage the same way


@pytest.mark.parametrize(
    "cmd", ["organization_create", "organization_status", "organization_stats"]
)
async def test_administration_command_with_non_string_organization_id_is_bad_message(
    server: RunningServer, cmd: str
) -> None:
    rep = await admin_cmd(server, cmd, organization_id=b"bytes")
    assert rep["status"] == "bad_message"
    assert set(rep["errors"]) == {"organization_id"}


def test_certificate_helpers_build_what_the_server_expects() -> None:
    """Sanity check of the test material itself (a wrong helper would make the refusal
    tests pass for the wrong reason)."""
    material = Bootstrap.new()
    signed = material.first.signed()
    user = unsecure_load(UserCertificate, signed["user_certificate"])
    redacted = unsecure_load(UserCertificate, signed["redacted_user_certificate"])
    assert user.author is None and user.human_handle == ("zack@example.com", "Zack")
    assert redacted.human_handle is None
    assert msgspec.structs.replace(redacted, human_handle=user.human_handle) == user
