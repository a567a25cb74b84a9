"""Realm commands (protocol/40-realm-vlob.md §4): realm_create, realm_status, realm_stats,
realm_get_role_certificates, realm_update_roles."""

from __future__ import annotations

import zlib
from typing import Any

import pytest

from parsec_server.api import codec
from parsec_server.api.certificates import (
    RealmRoleCertificate,
    RevokedUserCertificate,
    sign_certificate,
)
from parsec_server.api.codec import ID
from parsec_server.api.crypto import sign
from parsec_server.api.handshake import API_V1
from parsec_server.api.ids import RealmRole, UserProfile
from parsec_server.backend.events import RealmRolesUpdatedEvent
from parsec_server.client.device import LocalDevice
from parsec_server.client.realm import create_realm, share
from parsec_server.client.user import create_device, create_user
from tests.backend.common import anonymous_ws, revoke, send_cmd, wait_set
from tests.backend.realm_helpers import (
    ALREADY_GRANTED,
    IN_MAINTENANCE,
    NOT_ALLOWED,
    OK,
    ROLES,
    assert_no_event,
    dispatched,
    listen,
    message_received,
    new_id,
    new_realm,
    now,
    realm_not_found,
    role_certificate,
    roles_updated,
    start_maintenance_alone,
    start_reencryption,
    subscribed_ws,
    update_roles,
    vlob_create,
    vlob_update,
)
from tests.fixtures.servers import Organization, RunningServer

BALLPARK = 1800.0
ROLE_MAX_AHEAD = 300.0  # a role certificate may be dated at most 5 minutes ahead
OUT_OF_BALLPARK = [-BALLPARK - 5, BALLPARK + 5]
IN_ROLE_WINDOW = [-BALLPARK + 60, ROLE_MAX_AHEAD - 5]
FORGED = {
    "status": "invalid_certification",
    "reason": "Invalid certification data (Signature was forged or corrupt).",
}
BAD_CERTIFICATE_TIMESTAMP = {
    "status": "invalid_certification",
    "reason": "Invalid timestamp in certification.",
}
OUTSIDER_CANNOT_CREATE = {"status": "not_allowed", "reason": "Outsider user cannot create realm"}
INCOMPATIBLE_PROFILE = {
    "status": "incompatible_profile",
    "reason": "User with OUTSIDER profile cannot be MANAGER or OWNER",
}
MANAGEMENT_ROLES = (RealmRole.OWNER, RealmRole.MANAGER)


def role_id(role: RealmRole | None) -> str:
    return "none" if role is None else role.value.lower()


def invalid_data(reason: str) -> dict[str, Any]:
    return {"status": "invalid_data", "reason": reason}


def wrong_author(expected: str, got: str) -> dict[str, Any]:
    return {
        "status": "invalid_certification",
        "reason": f"Invalid certification data (Invalid author: expected `{expected}`, "
        f"got `{got}`).",
    }


def fresh_status(encryption_revision: int = 1) -> dict[str, Any]:
    return {
        "status": "ok",
        "in_maintenance": False,
        "maintenance_type": None,
        "maintenance_started_on": None,
        "maintenance_started_by": None,
        "encryption_revision": encryption_revision,
    }


def certificate_by(
    author: LocalDevice,
    realm_id: ID,
    user_id: str,
    role: RealmRole | None,
    claimed_author: str,
) -> bytes:
    """Signed by `author`'s key but claiming `claimed_author` as author."""
    return sign_certificate(
        RealmRoleCertificate(
            author=claimed_author, timestamp=now(), realm_id=realm_id, user_id=user_id, role=role
        ),
        author.signing_key,
    )


async def realm_create(device: LocalDevice, certificate: bytes) -> dict[str, Any]:
    async with await device.connect() as conn:
        return await conn.cmd("realm_create", role_certificate=certificate)


async def realm_cmd(device: LocalDevice, cmd: str, realm_id: ID, **fields: Any) -> dict[str, Any]:
    async with await device.connect() as conn:
        return await conn.cmd(cmd, realm_id=realm_id, **fields)


async def certificates_of(device: LocalDevice, realm_id: ID, **fields: Any) -> list[bytes]:
    reply = await realm_cmd(device, "realm_get_role_certificates", realm_id, **fields)
    assert reply["status"] == "ok", reply
    certificates: list[bytes] = reply["certificates"]
    return certificates


async def messages_of(device: LocalDevice) -> list[dict[str, Any]]:
    async with await device.connect() as conn:
        reply = await conn.cmd("message_get", offset=0)
    assert reply["status"] == "ok", reply
    messages: list[dict[str, Any]] = reply["messages"]
    return messages


async def update_roles_by(
    author: LocalDevice,
    realm_id: ID,
    user_id: str,
    role: RealmRole | None,
    message: bytes | None = None,
) -> dict[str, Any]:
    async with await author.connect() as conn:
        return await update_roles(conn, author, realm_id, user_id, role, message)


async def create_carol(org: Organization) -> LocalDevice:
    """A second STANDARD user (bob is often the author, carol the subject)."""
    async with await org.alice.connect() as conn:
        return await create_user(conn, org.alice, "carol", "pc", None, UserProfile.STANDARD)


# realm_create


async def test_realm_create_makes_the_caller_the_only_owner(org: Organization) -> None:
    realm_id = new_id()
    certificate = role_certificate(org.alice, realm_id, "alice", RealmRole.OWNER)
    assert await realm_create(org.alice, certificate) == OK
    assert await realm_cmd(org.alice, "realm_status", realm_id) == fresh_status()
    assert await certificates_of(org.alice, realm_id) == [certificate]
    assert await realm_cmd(org.bob, "realm_status", realm_id) == NOT_ALLOWED


async def test_realm_create_by_a_standard_user(org: Organization) -> None:
    realm_id = new_id()
    certificate = role_certificate(org.bob, realm_id, "bob", RealmRole.OWNER)
    assert await realm_create(org.bob, certificate) == OK
    assert await realm_cmd(org.bob, "realm_status", realm_id) == fresh_status()


async def test_realm_create_by_an_outsider_is_not_allowed(org: Organization) -> None:
    realm_id = new_id()
    certificate = role_certificate(org.mallory, realm_id, "mallory", RealmRole.OWNER)
    assert await realm_create(org.mallory, certificate) == OUTSIDER_CANNOT_CREATE
    assert await realm_cmd(org.mallory, "realm_status", realm_id) == realm_not_found(realm_id)


@pytest.mark.parametrize("fields", [{}, {"role_certificate": "not bytes"}], ids=["missing", "str"])
async def test_realm_create_by_an_outsider_is_refused_before_validation(
    org: Organization, fields: dict[str, Any]
) -> None:
    async with await org.mallory.connect() as conn:
        assert await conn.cmd("realm_create", **fields) == OUTSIDER_CANNOT_CREATE


async def test_realm_create_without_certificate_is_bad_message(org: Organization) -> None:
    async with await org.bob.connect() as conn:
        reply = await conn.cmd("realm_create")
    assert reply["status"] == "bad_message"
    assert reply["reason"] == "Invalid message."


async def test_realm_create_with_a_certificate_signed_by_another_key_is_invalid(
    org: Organization,
) -> None:
    # Claims alice as author but is signed by bob's key.
    certificate = certificate_by(org.bob, new_id(), "alice", RealmRole.OWNER, "alice@laptop")
    assert await realm_create(org.alice, certificate) == FORGED


async def test_realm_create_with_a_certificate_of_another_author_is_invalid(
    org: Organization,
) -> None:
    certificate = certificate_by(org.alice, new_id(), "alice", RealmRole.OWNER, "bob@desktop")
    assert await realm_create(org.alice, certificate) == wrong_author("alice@laptop", "bob@desktop")


@pytest.mark.parametrize("garbage", [b"", b"x" * 10, b"\x00" * 64 + b"not zlib"])
async def test_realm_create_with_garbage_as_certificate_is_invalid(
    org: Organization, garbage: bytes
) -> None:
    reply = await realm_create(org.alice, garbage)
    assert reply == FORGED


async def test_realm_create_with_a_certificate_of_another_type_is_invalid(
    org: Organization,
) -> None:
    certificate = sign_certificate(
        RevokedUserCertificate(author=org.alice.device_id, timestamp=now(), user_id="alice"),
        org.alice.signing_key,
    )
    reply = await realm_create(org.alice, certificate)
    assert reply["status"] == "invalid_certification"
    assert reply["reason"].startswith("Invalid certification data (")


def raw_certificate(signer: LocalDevice, fields: dict[str, Any]) -> bytes:
    """A certificate signed by `signer` made of exactly these msgpack fields."""
    return sign(signer.signing_key, zlib.compress(codec.encode(fields)))


def owner_fields(author: LocalDevice) -> dict[str, Any]:
    return {
        "type": "realm_role_certificate",
        "author": author.device_id,
        "timestamp": now(),
        "realm_id": new_id(),
        "user_id": author.user_id,
        "role": "OWNER",
    }


async def test_realm_create_with_a_certificate_without_role_is_invalid(
    org: Organization,
) -> None:
    fields = owner_fields(org.alice)
    del fields["role"]
    reply = await realm_create(org.alice, raw_certificate(org.alice, fields))
    assert reply["status"] == "invalid_certification"
    assert reply["reason"].startswith("Invalid certification data (")


async def test_realm_create_ignores_unknown_certificate_fields(org: Organization) -> None:
    fields = owner_fields(org.alice)
    certificate = raw_certificate(org.alice, {**fields, "future_field": [1, 2]})
    assert await realm_create(org.alice, certificate) == OK
    assert await certificates_of(org.alice, fields["realm_id"]) == [certificate]


@pytest.mark.parametrize("drift", OUT_OF_BALLPARK, ids=["past", "future"])
async def test_realm_create_with_a_timestamp_out_of_the_ballpark_is_invalid(
    org: Organization, drift: float
) -> None:
    realm_id = new_id()
    certificate = role_certificate(org.alice, realm_id, "alice", RealmRole.OWNER, now().add(drift))
    assert await realm_create(org.alice, certificate) == BAD_CERTIFICATE_TIMESTAMP
    assert await realm_cmd(org.alice, "realm_status", realm_id) == realm_not_found(realm_id)


@pytest.mark.parametrize("drift", IN_ROLE_WINDOW, ids=["past", "future"])
async def test_realm_create_with_a_timestamp_up_to_30_minutes_behind_or_5_ahead_is_accepted(
    org: Organization, drift: float
) -> None:
    certificate = role_certificate(org.alice, new_id(), "alice", RealmRole.OWNER, now().add(drift))
    assert await realm_create(org.alice, certificate) == OK


async def test_realm_create_for_another_user_is_invalid_data(org: Organization) -> None:
    realm_id = new_id()
    certificate = role_certificate(org.alice, realm_id, "bob", RealmRole.OWNER)
    assert await realm_create(org.alice, certificate) == invalid_data(
        "Initial realm role certificate must be self-signed."
    )
    assert await realm_cmd(org.bob, "realm_status", realm_id) == realm_not_found(realm_id)


@pytest.mark.parametrize(
    "role", [RealmRole.MANAGER, RealmRole.CONTRIBUTOR, RealmRole.READER, None], ids=role_id
)
async def test_realm_create_with_another_role_than_owner_is_invalid_data(
    org: Organization, role: RealmRole | None
) -> None:
    certificate = role_certificate(org.alice, new_id(), "alice", role)
    assert await realm_create(org.alice, certificate) == invalid_data(
        "Initial realm role certificate must set OWNER role."
    )


async def test_realm_create_twice_is_already_exists(org: Organization) -> None:
    realm_id = await new_realm(org.alice)
    again = role_certificate(org.alice, realm_id, "alice", RealmRole.OWNER)
    assert await realm_create(org.alice, again) == {"status": "already_exists"}
    assert len(await certificates_of(org.alice, realm_id)) == 1


async def test_realm_create_with_the_id_of_a_realm_of_another_user_is_already_exists(
    org: Organization,
) -> None:
    realm_id = await new_realm(org.alice)
    certificate = role_certificate(org.bob, realm_id, "bob", RealmRole.OWNER)
    assert await realm_create(org.bob, certificate) == {"status": "already_exists"}
    assert await realm_cmd(org.bob, "realm_status", realm_id) == NOT_ALLOWED


async def test_realm_create_sends_roles_updated_to_the_creator_connections(
    org: Organization,
) -> None:
    own_ws = await subscribed_ws(org.alice)
    realm_id = await new_realm(org.alice)
    # Even the connections of the creating device are told (no author filter).
    assert await listen(own_ws) == roles_updated(realm_id, RealmRole.OWNER)
    await own_ws.close()


async def test_realm_create_is_not_announced_to_other_users(
    server: RunningServer, org: Organization
) -> None:
    bob_ws = await subscribed_ws(org.bob)
    realm_id = new_id()
    seen = dispatched(server, RealmRolesUpdatedEvent, realm_id=realm_id)
    await new_realm(org.alice, realm_id=realm_id)
    await wait_set(seen)
    await assert_no_event(bob_ws)
    await bob_ws.close()


# realm_status


async def test_realm_status_of_an_unknown_realm_is_not_found(org: Organization) -> None:
    realm_id = new_id()
    assert await realm_cmd(org.alice, "realm_status", realm_id) == realm_not_found(realm_id)


async def test_realm_status_by_a_non_member_is_not_allowed(org: Organization) -> None:
    realm_id = await new_realm(org.bob)
    # Being an organization admin gives no access to the realm.
    assert await realm_cmd(org.alice, "realm_status", realm_id) == NOT_ALLOWED


@pytest.mark.parametrize("role", list(RealmRole), ids=role_id)
async def test_realm_status_by_any_member(org: Organization, role: RealmRole) -> None:
    realm_id = await new_realm(org.alice, {org.bob: role})
    assert await realm_cmd(org.bob, "realm_status", realm_id) == fresh_status()


async def test_realm_status_by_a_removed_member_is_not_allowed(org: Organization) -> None:
    realm_id = await new_realm(org.alice, {org.bob: RealmRole.READER})
    assert await update_roles_by(org.alice, realm_id, "bob", None) == OK
    assert await realm_cmd(org.bob, "realm_status", realm_id) == NOT_ALLOWED


async def test_realm_status_during_maintenance(org: Organization) -> None:
    realm_id = await new_realm(org.alice, {org.bob: RealmRole.READER})
    started_on = now().add(-10.5)
    async with await org.alice.connect() as conn:
        reply = await start_reencryption(
            conn, realm_id, {"alice": b"a", "bob": b"b"}, timestamp=started_on
        )
        assert reply == OK
    assert await realm_cmd(org.bob, "realm_status", realm_id) == {
        "status": "ok",
        "in_maintenance": True,
        "maintenance_type": "REENCRYPTION",
        "maintenance_started_on": started_on,
        "maintenance_started_by": "alice@laptop",
        "encryption_revision": 2,
    }


# realm_get_role_certificates


async def test_realm_get_role_certificates_returns_every_certificate_in_timestamp_order(
    org: Organization,
) -> None:
    start = now()
    realm_id = await new_realm(org.alice)
    creation = (await certificates_of(org.alice, realm_id))[0]
    sent: dict[str, bytes] = {}
    async with await org.alice.connect() as conn:
        # Received out of order: returned sorted by certificate timestamp.
        for name, user_id, role, delay in [
            ("bob_reader", "bob", RealmRole.READER, 20.0),
            ("mallory", "mallory", RealmRole.CONTRIBUTOR, 10.0),
            ("bob_removed", "bob", None, 30.0),
        ]:
            sent[name] = await share(
                conn, org.alice, realm_id, user_id, role, timestamp=start.add(delay)
            )
    assert await certificates_of(org.alice, realm_id) == [
        creation,
        sent["mallory"],
        sent["bob_reader"],
        sent["bob_removed"],
    ]


async def test_realm_get_role_certificates_keeps_the_arrival_order_of_equal_timestamps(
    org: Organization,
) -> None:
    realm_id = await new_realm(org.alice)
    creation = (await certificates_of(org.alice, realm_id))[0]
    same = now().add(5)
    async with await org.alice.connect() as conn:
        first = await share(conn, org.alice, realm_id, "mallory", RealmRole.READER, timestamp=same)
        second = await share(conn, org.alice, realm_id, "bob", RealmRole.READER, timestamp=same)
    assert await certificates_of(org.alice, realm_id) == [creation, first, second]


async def test_realm_get_role_certificates_since_returns_the_strictly_later_ones(
    org: Organization,
) -> None:
    start = now()
    realm_id = await new_realm(org.alice)
    async with await org.alice.connect() as conn:
        first = await share(
            conn, org.alice, realm_id, "bob", RealmRole.READER, timestamp=start.add(10)
        )
        second = await share(conn, org.alice, realm_id, "bob", None, timestamp=start.add(20))
    assert await certificates_of(org.alice, realm_id, since=start.add(5)) == [first, second]
    assert await certificates_of(org.alice, realm_id, since=start.add(10)) == [second]
    assert await certificates_of(org.alice, realm_id, since=start.add(20)) == []
    assert len(await certificates_of(org.alice, realm_id, since=None)) == 3


async def test_realm_get_role_certificates_by_any_member(org: Organization) -> None:
    realm_id = await new_realm(org.alice, {org.mallory: RealmRole.READER})
    assert len(await certificates_of(org.mallory, realm_id)) == 2


async def test_realm_get_role_certificates_by_a_non_member_is_not_allowed(
    org: Organization,
) -> None:
    realm_id = await new_realm(org.alice)
    reply = await realm_cmd(org.bob, "realm_get_role_certificates", realm_id)
    assert reply == NOT_ALLOWED


async def test_realm_get_role_certificates_of_an_unknown_realm_is_not_found(
    org: Organization,
) -> None:
    realm_id = new_id()
    reply = await realm_cmd(org.alice, "realm_get_role_certificates", realm_id)
    assert reply == realm_not_found(realm_id)


async def test_realm_get_role_certificates_during_maintenance(org: Organization) -> None:
    realm_id = await new_realm(org.alice)
    await start_maintenance_alone(org.alice, realm_id)
    assert len(await certificates_of(org.alice, realm_id)) == 1


# realm_update_roles: steps of §4.5, in order


async def test_realm_update_roles_grants_the_role(org: Organization) -> None:
    realm_id = await new_realm(org.alice)
    async with await org.alice.connect() as conn:
        certificate = role_certificate(org.alice, realm_id, "bob", RealmRole.CONTRIBUTOR)
        reply = await conn.cmd(
            "realm_update_roles", role_certificate=certificate, recipient_message=None
        )
    assert reply == OK
    assert (await certificates_of(org.bob, realm_id))[-1] == certificate
    async with await org.bob.connect() as conn:
        assert await vlob_create(conn, realm_id, new_id()) == OK


async def test_realm_update_roles_without_recipient_message_key_is_bad_message(
    org: Organization,
) -> None:
    realm_id = await new_realm(org.alice)
    async with await org.alice.connect() as conn:
        reply = await conn.cmd(
            "realm_update_roles",
            role_certificate=role_certificate(org.alice, realm_id, "bob", RealmRole.READER),
        )
    assert reply["status"] == "bad_message"


async def test_realm_update_roles_with_a_forged_certificate_is_invalid(org: Organization) -> None:
    realm_id = await new_realm(org.alice)
    certificate = certificate_by(org.bob, realm_id, "bob", RealmRole.READER, "alice@laptop")
    async with await org.alice.connect() as conn:
        reply = await conn.cmd(
            "realm_update_roles", role_certificate=certificate, recipient_message=None
        )
    assert reply == FORGED


async def test_realm_update_roles_with_a_certificate_of_another_author_is_invalid(
    org: Organization,
) -> None:
    realm_id = await new_realm(org.alice)
    certificate = certificate_by(org.alice, realm_id, "bob", RealmRole.READER, "alice@other")
    async with await org.alice.connect() as conn:
        reply = await conn.cmd(
            "realm_update_roles", role_certificate=certificate, recipient_message=None
        )
    assert reply == wrong_author("alice@laptop", "alice@other")


@pytest.mark.parametrize("drift", OUT_OF_BALLPARK, ids=["past", "future"])
async def test_realm_update_roles_with_a_timestamp_out_of_the_ballpark_is_invalid(
    org: Organization, drift: float
) -> None:
    realm_id = await new_realm(org.alice)
    async with await org.alice.connect() as conn:
        reply = await update_roles(
            conn, org.alice, realm_id, "bob", RealmRole.READER, timestamp=now().add(drift)
        )
    assert reply == BAD_CERTIFICATE_TIMESTAMP


async def test_realm_update_roles_on_oneself_is_invalid_data(org: Organization) -> None:
    realm_id = await new_realm(org.alice)
    reply = await update_roles_by(org.alice, realm_id, "alice", RealmRole.READER)
    assert reply == invalid_data("Realm role certificate cannot be self-signed.")


async def test_realm_update_roles_on_oneself_is_checked_before_the_realm(
    org: Organization,
) -> None:
    reply = await update_roles_by(org.alice, new_id(), "alice", None)
    assert reply == invalid_data("Realm role certificate cannot be self-signed.")


async def test_realm_update_roles_for_an_unknown_user_is_not_found(org: Organization) -> None:
    realm_id = await new_realm(org.alice)
    reply = await update_roles_by(org.alice, realm_id, "zack", RealmRole.READER)
    assert reply == {"status": "not_found", "reason": "User `zack` doesn't exist"}


async def test_realm_update_roles_checks_the_user_before_the_realm(org: Organization) -> None:
    reply = await update_roles_by(org.alice, new_id(), "zack", RealmRole.READER)
    assert reply == {"status": "not_found", "reason": "User `zack` doesn't exist"}


@pytest.mark.parametrize("role", MANAGEMENT_ROLES, ids=role_id)
async def test_realm_update_roles_making_an_outsider_manager_or_owner_is_incompatible_profile(
    org: Organization, role: RealmRole
) -> None:
    realm_id = await new_realm(org.alice)
    assert await update_roles_by(org.alice, realm_id, "mallory", role) == INCOMPATIBLE_PROFILE
    assert await realm_cmd(org.mallory, "realm_status", realm_id) == NOT_ALLOWED


@pytest.mark.parametrize("role", [RealmRole.CONTRIBUTOR, RealmRole.READER], ids=role_id)
async def test_realm_update_roles_making_an_outsider_contributor_or_reader(
    org: Organization, role: RealmRole
) -> None:
    realm_id = await new_realm(org.alice)
    assert await update_roles_by(org.alice, realm_id, "mallory", role) == OK
    assert await realm_cmd(org.mallory, "realm_status", realm_id) == fresh_status()


async def test_realm_update_roles_checks_the_profile_before_the_realm(org: Organization) -> None:
    reply = await update_roles_by(org.alice, new_id(), "mallory", RealmRole.OWNER)
    assert reply == INCOMPATIBLE_PROFILE


async def test_realm_update_roles_on_an_unknown_realm_is_not_found(org: Organization) -> None:
    realm_id = new_id()
    reply = await update_roles_by(org.alice, realm_id, "bob", RealmRole.READER)
    assert reply == realm_not_found(realm_id)


async def test_realm_update_roles_during_maintenance_is_in_maintenance(org: Organization) -> None:
    realm_id = await new_realm(org.alice)
    await start_maintenance_alone(org.alice, realm_id)
    assert await update_roles_by(org.alice, realm_id, "bob", RealmRole.READER) == IN_MAINTENANCE


async def test_realm_update_roles_checks_maintenance_before_the_author_role(
    org: Organization,
) -> None:
    realm_id = await new_realm(org.alice)
    await start_maintenance_alone(org.alice, realm_id)
    # bob has no role at all, yet the maintenance is reported first.
    assert await update_roles_by(org.bob, realm_id, "mallory", RealmRole.READER) == IN_MAINTENANCE


def expected_update(
    author: RealmRole | None, existing: RealmRole | None, new: RealmRole | None
) -> dict[str, Any]:
    """§4.5 step 9 then step 10."""
    if existing in MANAGEMENT_ROLES or new in MANAGEMENT_ROLES:
        allowed = author is RealmRole.OWNER
    else:
        allowed = author in MANAGEMENT_ROLES
    if not allowed:
        return NOT_ALLOWED
    return ALREADY_GRANTED if existing == new else OK


@pytest.mark.parametrize("new", ROLES, ids=lambda r: f"new-{role_id(r)}")
@pytest.mark.parametrize("existing", ROLES, ids=lambda r: f"existing-{role_id(r)}")
@pytest.mark.parametrize("author_role", ROLES, ids=lambda r: f"author-{role_id(r)}")
async def test_realm_update_roles_authorization(
    org: Organization,
    author_role: RealmRole | None,
    existing: RealmRole | None,
    new: RealmRole | None,
) -> None:
    carol = await create_carol(org)
    members = {d: r for d, r in [(org.bob, author_role), (carol, existing)] if r is not None}
    realm_id = await new_realm(org.alice, members)
    reply = await update_roles_by(org.bob, realm_id, "carol", new)
    assert reply == expected_update(author_role, existing, new)
    expected_count = 1 + len(members) + (reply == OK)
    assert len(await certificates_of(org.alice, realm_id)) == expected_count


async def test_realm_update_roles_granting_the_current_role_again_is_already_granted(
    org: Organization,
) -> None:
    realm_id = await new_realm(org.alice, {org.bob: RealmRole.READER})
    assert await update_roles_by(org.alice, realm_id, "bob", RealmRole.READER) == ALREADY_GRANTED
    assert len(await certificates_of(org.alice, realm_id)) == 2


async def test_realm_update_roles_removing_a_role_nobody_has_is_already_granted(
    org: Organization,
) -> None:
    realm_id = await new_realm(org.alice)
    assert await update_roles_by(org.alice, realm_id, "bob", None) == ALREADY_GRANTED
    assert len(await certificates_of(org.alice, realm_id)) == 1


async def test_realm_update_roles_changes_the_role(org: Organization) -> None:
    realm_id = await new_realm(org.alice, {org.bob: RealmRole.CONTRIBUTOR})
    assert await update_roles_by(org.alice, realm_id, "bob", RealmRole.READER) == OK
    async with await org.bob.connect() as conn:
        assert await vlob_create(conn, realm_id, new_id()) == NOT_ALLOWED


async def test_realm_update_roles_removes_the_role(org: Organization) -> None:
    realm_id = await new_realm(org.alice, {org.bob: RealmRole.MANAGER})
    async with await org.alice.connect() as conn:
        removal = await share(conn, org.alice, realm_id, "bob", None)
    assert (await certificates_of(org.alice, realm_id))[-1] == removal
    assert await realm_cmd(org.bob, "realm_status", realm_id) == NOT_ALLOWED
    assert await update_roles_by(org.bob, realm_id, "mallory", RealmRole.READER) == NOT_ALLOWED


async def test_realm_update_roles_of_a_revoked_user_is_accepted(org: Organization) -> None:
    realm_id = await new_realm(org.alice)
    async with await org.alice.connect() as conn:
        await revoke(conn, org.alice, "bob")
        assert await update_roles(conn, org.alice, realm_id, "bob", RealmRole.READER, b"m") == OK


async def test_realm_update_roles_sends_roles_updated_to_the_subject(org: Organization) -> None:
    realm_id = await new_realm(org.alice)
    bob_ws = await subscribed_ws(org.bob)
    assert await update_roles_by(org.alice, realm_id, "bob", RealmRole.READER) == OK
    assert await listen(bob_ws) == roles_updated(realm_id, RealmRole.READER)
    assert await update_roles_by(org.alice, realm_id, "bob", None) == OK
    assert await listen(bob_ws) == roles_updated(realm_id, None)
    await bob_ws.close()


async def test_realm_update_roles_appends_the_message_with_the_certificate_timestamp(
    org: Organization,
) -> None:
    timestamp = now().add(-42.123456)
    realm_id = await new_realm(org.alice, created_on=timestamp.add(-1))
    async with await org.alice.connect() as conn:
        reply = await update_roles(
            conn, org.alice, realm_id, "bob", RealmRole.READER, b"<sharing.granted>", timestamp
        )
    assert reply == OK
    assert await messages_of(org.bob) == [
        {"count": 1, "sender": "alice@laptop", "timestamp": timestamp, "body": b"<sharing.granted>"}
    ]
    assert await messages_of(org.alice) == []


async def test_realm_update_roles_message_is_announced_to_the_subject(org: Organization) -> None:
    realm_id = await new_realm(org.alice)
    bob_ws = await subscribed_ws(org.bob)
    assert await update_roles_by(org.alice, realm_id, "bob", RealmRole.READER, b"hi") == OK
    assert await listen(bob_ws) == roles_updated(realm_id, RealmRole.READER)
    assert await listen(bob_ws) == message_received(1)
    await bob_ws.close()


async def test_realm_update_roles_message_reaches_every_device_of_the_subject(
    org: Organization,
) -> None:
    async with await org.bob.connect() as conn:
        bob2 = await create_device(conn, org.bob, "laptop2")
    realm_id = await new_realm(org.alice)
    bob2_ws = await subscribed_ws(bob2)
    assert await update_roles_by(org.alice, realm_id, "bob", RealmRole.READER, b"hi") == OK
    assert await listen(bob2_ws) == roles_updated(realm_id, RealmRole.READER)
    assert await listen(bob2_ws) == message_received(1)
    assert [m["body"] for m in await messages_of(bob2)] == [b"hi"]
    await bob2_ws.close()


async def test_realm_update_roles_without_message_appends_none(org: Organization) -> None:
    realm_id = await new_realm(org.alice)
    bob_ws = await subscribed_ws(org.bob)
    assert await update_roles_by(org.alice, realm_id, "bob", RealmRole.READER, None) == OK
    assert await listen(bob_ws) == roles_updated(realm_id, RealmRole.READER)
    # A later message gets index 1: nothing was appended before it.
    assert await update_roles_by(org.alice, realm_id, "bob", None, b"bye") == OK
    assert await listen(bob_ws) == roles_updated(realm_id, None)
    assert await listen(bob_ws) == message_received(1)
    assert [m["body"] for m in await messages_of(org.bob)] == [b"bye"]
    await bob_ws.close()


async def test_realm_update_roles_refused_appends_no_message(org: Organization) -> None:
    realm_id = await new_realm(org.alice, {org.bob: RealmRole.READER})
    assert await update_roles_by(org.alice, realm_id, "bob", RealmRole.READER, b"x") == (
        ALREADY_GRANTED
    )
    assert await update_roles_by(org.bob, realm_id, "mallory", RealmRole.READER, b"x") == (
        NOT_ALLOWED
    )
    assert await messages_of(org.bob) == []
    assert await messages_of(org.mallory) == []


# realm_stats


async def test_realm_stats_of_a_new_realm(org: Organization) -> None:
    realm_id = await new_realm(org.alice)
    assert await realm_cmd(org.alice, "realm_stats", realm_id) == {
        "status": "ok",
        "blocks_size": 0,
        "vlobs_size": 0,
    }


async def test_realm_stats_sums_blocks_and_every_vlob_version(org: Organization) -> None:
    realm_id = await new_realm(org.alice, {org.bob: RealmRole.READER})
    other_realm = await new_realm(org.alice)
    async with await org.alice.connect() as conn:
        vlob_id = new_id()
        assert await vlob_create(conn, realm_id, vlob_id, b"x" * 10) == OK
        assert await vlob_update(conn, vlob_id, 2, b"x" * 20) == OK
        assert await vlob_create(conn, realm_id, new_id(), b"x" * 5) == OK
        assert await vlob_create(conn, other_realm, new_id(), b"x" * 1000) == OK
        for size, target in [(100, realm_id), (50, realm_id), (7000, other_realm)]:
            reply = await conn.cmd(
                "block_create", block_id=new_id(), realm_id=target, block=b"b" * size
            )
            assert reply == OK
    assert await realm_cmd(org.bob, "realm_stats", realm_id) == {
        "status": "ok",
        "blocks_size": 150,
        "vlobs_size": 35,
    }


async def test_realm_stats_by_a_non_member_is_not_allowed(org: Organization) -> None:
    realm_id = await new_realm(org.alice)
    assert await realm_cmd(org.bob, "realm_stats", realm_id) == NOT_ALLOWED


async def test_realm_stats_of_an_unknown_realm_is_not_found(org: Organization) -> None:
    realm_id = new_id()
    assert await realm_cmd(org.alice, "realm_stats", realm_id) == realm_not_found(realm_id)


async def test_realm_stats_during_maintenance(org: Organization) -> None:
    realm_id = await new_realm(org.alice)
    await start_maintenance_alone(org.alice, realm_id)
    reply = await realm_cmd(org.alice, "realm_stats", realm_id)
    assert reply == {"status": "ok", "blocks_size": 0, "vlobs_size": 0}


# Connection types (§1.2)


async def test_realm_commands_on_api_1_authenticated_connections(org: Organization) -> None:
    async with await org.alice.connect(api_version=API_V1) as conn:
        realm_id = await create_realm(conn, org.alice)
        assert await conn.cmd("realm_status", realm_id=realm_id) == fresh_status()
        assert await vlob_create(conn, realm_id, new_id()) == OK


@pytest.mark.parametrize(
    "cmd",
    [
        "realm_create",
        "realm_status",
        "realm_update_roles",
        "vlob_read",
        "block_read",
        "message_get",
        "vlob_maintenance_get_reencryption_batch",
    ],
)
async def test_realm_commands_are_unknown_on_anonymous_connections(
    server: RunningServer, org: Organization, cmd: str
) -> None:
    ws = await anonymous_ws(server.addr, org.organization_id)
    assert await send_cmd(ws, cmd, realm_id=new_id()) == {
        "status": "unknown_command",
        "reason": "Unknown command",
    }
    await ws.close()
