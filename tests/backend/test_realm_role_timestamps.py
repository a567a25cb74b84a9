"""Timestamps of realm role certificates (docs/deviations.md): at most 5 minutes ahead of the
server's clock, strictly later than the subject's latest certificate in the realm, not earlier
than the author's. A role change is either refused with a reply or effective at once, and the
certificates kept always replay the way the 2.0.0 client checks them."""

from __future__ import annotations

from typing import Any

import pytest

from parsec_server.api.certificates import RealmRoleCertificate, unsecure_load
from parsec_server.api.codec import ID, DateTime
from parsec_server.api.ids import RealmRole, user_id_of
from parsec_server.client.device import LocalDevice
from tests.backend.realm_helpers import (
    NOT_ALLOWED,
    OK,
    new_id,
    new_realm,
    now,
    role_certificate,
    update_roles,
    vlob_create,
)
from tests.fixtures.servers import Organization

BALLPARK = 1800.0
ROLE_MAX_AHEAD = 300.0
BAD_CERTIFICATE_TIMESTAMP = {
    "status": "invalid_certification",
    "reason": "Invalid timestamp in certification.",
}
NOT_AFTER_SUBJECT_LATEST = {
    "status": "invalid_certification",
    "reason": "Invalid timestamp in certification: it must be later than the latest role "
    "certificate of this user in this realm.",
}
BEFORE_AUTHOR_LATEST = {
    "status": "invalid_certification",
    "reason": "Invalid timestamp in certification: it cannot be earlier than the latest role "
    "certificate of its author in this realm.",
}
MANAGEMENT_ROLES = (RealmRole.OWNER, RealmRole.MANAGER)


async def set_role(
    author: LocalDevice, realm_id: ID, user_id: str, role: RealmRole | None, timestamp: DateTime
) -> dict[str, Any]:
    async with await author.connect() as conn:
        return await update_roles(conn, author, realm_id, user_id, role, timestamp=timestamp)


async def certificates_of(device: LocalDevice, realm_id: ID) -> list[bytes]:
    async with await device.connect() as conn:
        reply = await conn.cmd("realm_get_role_certificates", realm_id=realm_id)
    assert reply["status"] == "ok", reply
    certificates: list[bytes] = reply["certificates"]
    return certificates


async def can_write(device: LocalDevice, realm_id: ID) -> bool:
    async with await device.connect() as conn:
        vlob = await vlob_create(conn, realm_id, new_id())
        block = await conn.cmd("block_create", block_id=new_id(), realm_id=realm_id, block=b"b")
    assert vlob == block, (vlob, block)
    assert vlob in (OK, NOT_ALLOWED), vlob
    return vlob == OK


def replay_as_the_2_0_0_client(certificates: list[bytes]) -> dict[str, RealmRole]:
    """The 2.0.0 client's check of a realm's role certificates (40-realm-vlob.md §4.4):
    sorted by timestamp (a stable sort), the first one self-granted, each later one by an
    author whose role at that point of the replay allows the change. Returns the roles at
    the end; fails as the client would refuse the realm."""
    loaded = sorted(
        (unsecure_load(RealmRoleCertificate, c) for c in certificates), key=lambda c: c.timestamp
    )
    roles: dict[str, RealmRole] = {}
    for cert in loaded:
        author = user_id_of(cert.author)
        needed: tuple[RealmRole | None, ...]
        if not roles and cert.user_id == author:
            needed = (None,)
        elif roles.get(cert.user_id) in MANAGEMENT_ROLES or cert.role in MANAGEMENT_ROLES:
            needed = (RealmRole.OWNER,)
        else:
            needed = MANAGEMENT_ROLES
        assert roles.get(author) in needed, f"{cert.author} may not give {cert.role} to " + (
            f"{cert.user_id} on {cert.timestamp}"
        )
        if cert.role is None:
            roles.pop(cert.user_id, None)
        else:
            roles[cert.user_id] = cert.role
    return roles


# At most 5 minutes ahead


@pytest.mark.parametrize("ahead", [ROLE_MAX_AHEAD + 5, 25 * 60.0], ids=["5min5s", "25min"])
async def test_realm_create_more_than_5_minutes_ahead_is_invalid(
    org: Organization, ahead: float
) -> None:
    certificate = role_certificate(org.alice, new_id(), "alice", RealmRole.OWNER, now().add(ahead))
    async with await org.alice.connect() as conn:
        reply = await conn.cmd("realm_create", role_certificate=certificate)
    assert reply == BAD_CERTIFICATE_TIMESTAMP


@pytest.mark.parametrize("ahead", [ROLE_MAX_AHEAD + 5, 25 * 60.0], ids=["5min5s", "25min"])
async def test_realm_update_roles_more_than_5_minutes_ahead_is_invalid(
    org: Organization, ahead: float
) -> None:
    realm_id = await new_realm(org.alice, {org.bob: RealmRole.MANAGER})
    reply = await set_role(org.bob, realm_id, "mallory", RealmRole.CONTRIBUTOR, now().add(ahead))
    assert reply == BAD_CERTIFICATE_TIMESTAMP
    assert len(await certificates_of(org.alice, realm_id)) == 2
    assert not await can_write(org.mallory, realm_id)


@pytest.mark.parametrize("drift", [-BALLPARK + 60, ROLE_MAX_AHEAD - 5], ids=["past", "future"])
async def test_realm_update_roles_up_to_30_minutes_behind_or_5_ahead_is_accepted(
    org: Organization, drift: float
) -> None:
    realm_id = await new_realm(org.alice, created_on=now().add(-BALLPARK + 30))
    assert await set_role(org.alice, realm_id, "bob", RealmRole.READER, now().add(drift)) == OK


# Strictly later than the subject's latest certificate


async def test_realm_update_roles_removal_dated_before_a_future_grant_is_refused_not_ignored(
    org: Organization,
) -> None:
    # The review's case: a MANAGER grants mallory a role dated ahead (now within 5 minutes),
    # the OWNER removes it at its own "now".
    realm_id = await new_realm(org.alice, {org.bob: RealmRole.MANAGER})
    granted_on = now().add(ROLE_MAX_AHEAD - 60)
    assert await set_role(org.bob, realm_id, "mallory", RealmRole.CONTRIBUTOR, granted_on) == OK
    assert await set_role(org.alice, realm_id, "mallory", None, now()) == NOT_AFTER_SUBJECT_LATEST
    # Refused, hence not stored: mallory keeps the role, as the reply said.
    assert len(await certificates_of(org.alice, realm_id)) == 3
    assert await can_write(org.mallory, realm_id)
    # Dated after the grant, the removal is effective at once.
    assert await set_role(org.alice, realm_id, "mallory", None, granted_on.add(0.000001)) == OK
    assert not await can_write(org.mallory, realm_id)


@pytest.mark.parametrize("offset", [-5.0, 0.0], ids=["earlier", "same"])
async def test_realm_update_roles_not_later_than_the_subjects_latest_certificate_is_invalid(
    org: Organization, offset: float
) -> None:
    realm_id = await new_realm(org.alice)
    granted_on = now().add(10)
    assert await set_role(org.alice, realm_id, "bob", RealmRole.CONTRIBUTOR, granted_on) == OK
    for role in (None, RealmRole.READER, RealmRole.MANAGER):
        reply = await set_role(org.alice, realm_id, "bob", role, granted_on.add(offset))
        assert reply == NOT_AFTER_SUBJECT_LATEST
    assert len(await certificates_of(org.alice, realm_id)) == 2
    assert await can_write(org.bob, realm_id)


async def test_realm_update_roles_sending_the_same_grant_again_is_already_granted(
    org: Organization,
) -> None:
    # Idempotent, as a client retrying a sharing whose reply it lost expects.
    realm_id = await new_realm(org.alice)
    granted_on = now()
    assert await set_role(org.alice, realm_id, "bob", RealmRole.READER, granted_on) == OK
    reply = await set_role(org.alice, realm_id, "bob", RealmRole.READER, granted_on)
    assert reply == {"status": "already_granted"}


async def test_realm_update_roles_timestamps_are_checked_after_the_authorization(
    org: Organization,
) -> None:
    realm_id = await new_realm(org.alice, {org.bob: RealmRole.READER})
    assert await set_role(org.mallory, realm_id, "bob", None, now().add(-60)) == NOT_ALLOWED


# Not earlier than the author's latest certificate


async def test_realm_update_roles_earlier_than_the_authors_latest_certificate_is_invalid(
    org: Organization,
) -> None:
    realm_id = await new_realm(org.alice)
    manager_since = now().add(60)
    assert await set_role(org.alice, realm_id, "bob", RealmRole.MANAGER, manager_since) == OK
    # bob, with a clock behind alice's: the 2.0.0 client would find no role of bob's at
    # that point of the replay and reject the whole realm.
    reply = await set_role(org.bob, realm_id, "mallory", RealmRole.READER, now())
    assert reply == BEFORE_AUTHOR_LATEST
    assert len(await certificates_of(org.alice, realm_id)) == 2
    # The same timestamp is fine: equal timestamps keep the server's order.
    assert await set_role(org.bob, realm_id, "mallory", RealmRole.READER, manager_since) == OK


async def test_role_certificates_still_replay_as_the_2_0_0_client_after_refusals(
    org: Organization,
) -> None:
    start = now()
    realm_id = await new_realm(org.alice, created_on=start.add(-60))
    steps: list[tuple[LocalDevice, str, RealmRole | None, float, dict[str, Any]]] = [
        (org.alice, "bob", RealmRole.MANAGER, 60, OK),
        (org.bob, "mallory", RealmRole.READER, 0, BEFORE_AUTHOR_LATEST),
        (org.bob, "mallory", RealmRole.CONTRIBUTOR, 60, OK),
        (org.alice, "mallory", None, 30, NOT_AFTER_SUBJECT_LATEST),
        (org.alice, "mallory", None, 60, NOT_AFTER_SUBJECT_LATEST),
        (org.alice, "bob", RealmRole.READER, 40, NOT_AFTER_SUBJECT_LATEST),
        (org.alice, "mallory", None, 61, OK),
        (org.bob, "mallory", RealmRole.READER, 62, OK),
    ]
    for author, user_id, role, delay, expected in steps:
        assert await set_role(author, realm_id, user_id, role, start.add(delay)) == expected
    certificates = await certificates_of(org.alice, realm_id)
    assert len(certificates) == 5
    assert replay_as_the_2_0_0_client(certificates) == {
        "alice": RealmRole.OWNER,
        "bob": RealmRole.MANAGER,
        "mallory": RealmRole.READER,
    }
    assert not await can_write(org.mallory, realm_id)
