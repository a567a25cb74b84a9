"""User, device and human commands (protocol/30-commands-org-user-invite.md §5), API 2 and
their API 1 `authenticated` variants."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import msgspec
import pytest
from nacl.signing import SigningKey
from websockets.asyncio.client import ClientConnection

from parsec_server.api import codec
from parsec_server.api.certificates import (
    DeviceCertificate,
    RevokedUserCertificate,
    UserCertificate,
    sign_certificate,
    unsecure_load,
)
from parsec_server.api.codec import ID
from parsec_server.api.handshake import API_V1, API_V2, InvitedAnswer, build_answer
from parsec_server.api.ids import DEVICE_LABEL_MAX_LENGTH, InvitationType, UserProfile
from parsec_server.backend.config import MockedEmailConfig
from parsec_server.client.device import LocalDevice
from parsec_server.client.organization import bootstrap_organization, create_organization
from parsec_server.client.user import create_device
from tests.backend.common import (
    OMIT,
    NewUser,
    assert_closed_without_reply,
    assert_still_open,
    authenticated_ws,
    create_user_by,
    device_certificate,
    new_user_by,
    now,
    revocation,
    revoke,
    send_cmd,
)
from tests.fixtures.raw import raw_connect, recv_map
from tests.fixtures.servers import (
    ADMINISTRATION_TOKEN,
    Organization,
    RunningServer,
    ServerFactory,
    create_org,
    make_config,
    new_organization_id,
    running_server,
)

FORGED = {
    "status": "invalid_certification",
    "reason": "Invalid certification data (Signature was forged or corrupt).",
}
CERTIFICATE_FIELDS = [
    "user_certificate",
    "device_certificate",
    "redacted_user_certificate",
    "redacted_device_certificate",
]


def invalid_data(reason: str) -> dict[str, Any]:
    return {"status": "invalid_data", "reason": reason}


def wrong_author(expected: str, got: str) -> dict[str, Any]:
    return {
        "status": "invalid_certification",
        "reason": f"Invalid certification data (Invalid author: expected `{expected}`, "
        f"got `{got}`).",
    }


BAD_TIMESTAMP = {"status": "invalid_certification", "reason": "Invalid timestamp in certification."}
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
BAD_USER_ID = {"status": "bad_user_id", "reason": "Device must be handled by it own user."}


def carol(org: Organization, **kwargs: Any) -> NewUser:
    """A user alice may create (not created yet)."""
    fields: dict[str, Any] = {
        "device_name": "pc",
        "human_handle": ("carol@example.com", "Carol"),
        "device_label": "Carol's pc",
    }
    fields.update(kwargs)
    return new_user_by(org.alice, "carol", **fields)


async def user_get(device: LocalDevice, user_id: str) -> dict[str, Any]:
    async with await device.connect() as conn:
        return await conn.cmd("user_get", user_id=user_id)


async def assert_create_refused(
    org: Organization, fields: dict[str, Any], expected: dict[str, Any], user_id: str = "carol"
) -> None:
    async with await org.alice.connect() as conn:
        assert await conn.cmd("user_create", **fields) == expected
        assert await conn.cmd("user_get", user_id=user_id) == {"status": "not_found"}


def decoded_user(certificate: bytes) -> UserCertificate:
    return unsecure_load(UserCertificate, certificate)


def decoded_device(certificate: bytes) -> DeviceCertificate:
    return unsecure_load(DeviceCertificate, certificate)


# user_create


async def test_user_create_succeeds_and_the_new_device_can_connect(org: Organization) -> None:
    new = carol(org)
    async with await org.alice.connect() as conn:
        assert await conn.cmd("user_create", **new.request()) == {"status": "ok"}
    async with await new.local_device(org.alice).connect() as conn:
        assert await conn.cmd("ping", ping="hi") == {"status": "ok", "pong": "hi"}


@pytest.mark.parametrize("caller", ["bob", "mallory"])
@pytest.mark.parametrize(
    "fields",
    [{}, {"user_certificate": 42}, {"user_certificate": b"x", "device_certificate": None}],
)
async def test_user_create_by_non_admin_is_not_allowed_before_validation(
    org: Organization, caller: str, fields: dict[str, Any]
) -> None:
    async with await getattr(org, caller).connect() as conn:
        rep = await conn.cmd("user_create", **fields)
    assert rep == {"status": "not_allowed", "reason": f"User `{caller}` is not admin"}


async def test_user_create_by_non_admin_with_valid_certificates_is_not_allowed(
    org: Organization,
) -> None:
    new = new_user_by(org.bob, "carol")
    async with await org.bob.connect() as conn:
        rep = await conn.cmd("user_create", **new.request())
    assert rep == {"status": "not_allowed", "reason": "User `bob` is not admin"}


@pytest.mark.parametrize("field_name", CERTIFICATE_FIELDS)
@pytest.mark.parametrize("value", [OMIT, "not bytes", None, 42])
async def test_user_create_with_missing_or_ill_typed_field_is_bad_message(
    org: Organization, field_name: str, value: object
) -> None:
    fields = carol(org).request(**{field_name: value})
    async with await org.alice.connect() as conn:
        rep = await conn.cmd("user_create", **fields)
    assert rep["status"] == "bad_message"
    assert rep["reason"] == "Invalid message."
    assert set(rep["errors"]) == {field_name}
    if value is OMIT:
        assert rep["errors"] == {field_name: ["Missing data for required field."]}


@pytest.mark.parametrize("field_name", CERTIFICATE_FIELDS)
async def test_user_create_certificate_signed_by_another_key_is_invalid_certification(
    org: Organization, field_name: str
) -> None:
    new = carol(org)
    forged = new.signed(key=SigningKey.generate())[field_name]
    await assert_create_refused(org, new.request(**{field_name: forged}), FORGED)


@pytest.mark.parametrize("field_name", CERTIFICATE_FIELDS)
async def test_user_create_certificate_of_another_author_is_invalid_certification(
    org: Organization, field_name: str
) -> None:
    new = carol(org)
    struct = {
        "user_certificate": new.user,
        "device_certificate": new.device,
        "redacted_user_certificate": new.redacted_user,
        "redacted_device_certificate": new.redacted_device,
    }[field_name]
    fields = new.request(**{field_name: msgspec.structs.replace(struct, author="bob@desktop")})
    await assert_create_refused(org, fields, wrong_author("alice@laptop", "bob@desktop"))


@pytest.mark.parametrize("field_name", CERTIFICATE_FIELDS)
async def test_user_create_undecodable_certificate_is_invalid_certification(
    org: Organization, field_name: str
) -> None:
    new = carol(org)
    fields = new.request(**{field_name: b"garbage"})
    await assert_create_refused(org, fields, FORGED)


async def test_user_create_certificate_of_the_wrong_kind_is_invalid_certification(
    org: Organization,
) -> None:
    new = carol(org)
    signed = new.signed()
    fields = new.request(user_certificate=signed["device_certificate"])
    async with await org.alice.connect() as conn:
        rep = await conn.cmd("user_create", **fields)
    assert rep["status"] == "invalid_certification"
    assert rep["reason"].startswith("Invalid certification data (")


async def test_user_create_verifies_the_device_certificate_first(org: Organization) -> None:
    new = carol(org)
    fields = new.request(
        user_certificate=new.signed(key=SigningKey.generate())["user_certificate"],
        device_certificate=msgspec.structs.replace(new.device, author="bob@desktop"),
    )
    await assert_create_refused(org, fields, wrong_author("alice@laptop", "bob@desktop"))


async def test_user_create_with_different_timestamps_is_invalid_data(org: Organization) -> None:
    new = carol(org)
    device = msgspec.structs.replace(new.device, timestamp=new.device.timestamp.add(1))
    fields = new.request(
        device_certificate=device,
        redacted_device_certificate=msgspec.structs.replace(device, device_label=None),
    )
    await assert_create_refused(
        org, fields, invalid_data("Device and User certificates must have the same timestamp.")
    )


@pytest.mark.parametrize("offset", [-1801, 1801])
async def test_user_create_outside_the_ballpark_is_invalid_certification(
    org: Organization, offset: float
) -> None:
    new = carol(org, timestamp=now().add(offset))
    await assert_create_refused(
        org,
        new.request(),
        # Note: "certificate", where the other commands say "certification".
        {"status": "invalid_certification", "reason": "Invalid timestamp in certificate."},
    )


@pytest.mark.parametrize("offset", [-1700, 1700])
async def test_user_create_inside_the_ballpark_is_accepted(
    org: Organization, offset: float
) -> None:
    new = carol(org, timestamp=now().add(offset))
    async with await org.alice.connect() as conn:
        assert await conn.cmd("user_create", **new.request()) == {"status": "ok"}


async def test_user_create_checks_same_timestamp_before_the_ballpark(org: Organization) -> None:
    new = carol(org, timestamp=now().add(-7200))
    device = msgspec.structs.replace(new.device, timestamp=new.device.timestamp.add(1))
    fields = new.request(
        device_certificate=device,
        redacted_device_certificate=msgspec.structs.replace(device, device_label=None),
    )
    await assert_create_refused(
        org, fields, invalid_data("Device and User certificates must have the same timestamp.")
    )


def _other_user_device(new: NewUser) -> dict[str, DeviceCertificate]:
    device = msgspec.structs.replace(new.device, device_id="dave@pc")
    return {
        "device_certificate": device,
        "redacted_device_certificate": msgspec.structs.replace(device, device_label=None),
    }


async def test_user_create_with_different_user_ids_is_invalid_data(org: Organization) -> None:
    new = carol(org)
    fields = new.request(**_other_user_device(new))
    await assert_create_refused(
        org, fields, invalid_data("Device and User must have the same user ID.")
    )


async def test_user_create_checks_the_ballpark_before_the_user_ids(org: Organization) -> None:
    new = carol(org, timestamp=now().add(-7200))
    fields = new.request(**_other_user_device(new))
    await assert_create_refused(
        org,
        fields,
        {"status": "invalid_certification", "reason": "Invalid timestamp in certificate."},
    )


@pytest.mark.parametrize(
    "change",
    [
        {"public_key": bytes(32)},
        {"user_id": "dave"},
        {"profile": UserProfile.ADMIN, "is_admin": True},
        {"profile": UserProfile.OUTSIDER},
        "timestamp",
    ],
)
async def test_user_create_redacted_user_differing_is_invalid_data(
    org: Organization, change: dict[str, Any] | str
) -> None:
    new = carol(org)
    if change == "timestamp":
        change = {"timestamp": new.user.timestamp.add(-1)}
    assert isinstance(change, dict)
    redacted = msgspec.structs.replace(new.redacted_user, **change)
    await assert_create_refused(
        org, new.request(redacted_user_certificate=redacted), REDACTED_USER_DIFFERS
    )


@pytest.mark.parametrize("handle", [("carol@example.com", "Carol"), ("other@example.com", "Other")])
async def test_user_create_redacted_user_with_human_handle_is_invalid_data(
    org: Organization, handle: tuple[str, str]
) -> None:
    new = carol(org)
    redacted = msgspec.structs.replace(new.user, human_handle=handle)
    await assert_create_refused(
        org, new.request(redacted_user_certificate=redacted), REDACTED_USER_HAS_HANDLE
    )


@pytest.mark.parametrize("change", [{"verify_key": bytes(32)}, {"device_id": "carol@other"}])
async def test_user_create_redacted_device_differing_is_invalid_data(
    org: Organization, change: dict[str, Any]
) -> None:
    new = carol(org)
    redacted = msgspec.structs.replace(new.redacted_device, **change)
    await assert_create_refused(
        org, new.request(redacted_device_certificate=redacted), REDACTED_DEVICE_DIFFERS
    )


@pytest.mark.parametrize("label", ["Carol's pc", "Other label"])
async def test_user_create_redacted_device_with_label_is_invalid_data(
    org: Organization, label: str
) -> None:
    new = carol(org)
    redacted = msgspec.structs.replace(new.device, device_label=label)
    await assert_create_refused(
        org, new.request(redacted_device_certificate=redacted), REDACTED_DEVICE_HAS_LABEL
    )


async def test_user_create_checks_the_redacted_user_before_the_redacted_device(
    org: Organization,
) -> None:
    new = carol(org)
    fields = new.request(redacted_user_certificate=new.user, redacted_device_certificate=new.device)
    await assert_create_refused(org, fields, REDACTED_USER_HAS_HANDLE)


async def test_user_create_with_existing_user_id_is_already_exists(org: Organization) -> None:
    new = new_user_by(org.alice, "bob", human_handle=("bob2@example.com", "Bob 2"))
    async with await org.alice.connect() as conn:
        rep = await conn.cmd("user_create", **new.request())
    assert rep == {"status": "already_exists", "reason": "User `bob` already exists"}


async def test_user_create_reports_the_user_id_before_the_human_handle(
    org: Organization,
) -> None:
    new = new_user_by(org.alice, "bob", human_handle=("alice@example.com", "Alice 2"))
    async with await org.alice.connect() as conn:
        rep = await conn.cmd("user_create", **new.request())
    assert rep == {"status": "already_exists", "reason": "User `bob` already exists"}


async def test_user_create_with_email_of_a_non_revoked_user_is_already_exists(
    org: Organization,
) -> None:
    new = carol(org, human_handle=("bob@example.com", "Bobby"))
    await assert_create_refused(
        org,
        new.request(),
        {
            "status": "already_exists",
            "reason": "Human handle `Bobby <bob@example.com>` already corresponds to a "
            "non-revoked user",
        },
    )


async def test_user_create_compares_emails_case_sensitively(org: Organization) -> None:
    new = carol(org, human_handle=("Bob@example.com", "Bob"))
    async with await org.alice.connect() as conn:
        assert await conn.cmd("user_create", **new.request()) == {"status": "ok"}


async def test_user_create_reuses_the_email_of_a_revoked_user(org: Organization) -> None:
    async with await org.alice.connect() as conn:
        await revoke(conn, org.alice, "bob")
        new = carol(org, human_handle=("bob@example.com", "Bob again"))
        assert await conn.cmd("user_create", **new.request()) == {"status": "ok"}


async def test_each_user_of_a_reused_email_keeps_its_own_label(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """In the connection's context, human_find, invite_info and the invitation e-mails."""
    mails = MockedEmailConfig(sender="no-reply@parsec.test", tmpdir=tmp_path)
    async with server_factory(email=mails) as server:
        org = await create_org(server)
        address = "bob@example.com"
        async with await org.alice.connect() as conn:
            await revoke(conn, org.alice, "bob")
            bob2, _ = await create_user_by(
                conn,
                org.alice,
                "bob2",
                human_handle=(address, "Bob Two"),
                profile=UserProfile.ADMIN,
            )
        identity = await server.app.user.get_identity(org.organization_id, bob2.device_id)
        assert identity is not None and identity[1].human_handle == (address, "Bob Two")
        async with await bob2.connect() as conn:
            rep = await conn.cmd(
                "invite_new", type="USER", claimer_email="zack@example.com", send_email=True
            )
            assert rep["status"] == "ok"
            token = rep["token"]
        [mail] = list(tmp_path.glob("tmp-email-*.html"))  # noqa: ASYNC240
        message = email.message_from_bytes(mail.read_bytes(), policy=email.policy.default)
        assert message["Subject"] == f"[Parsec] Bob Two invited you to {org.organization_id}"
        async with await org.alice.connect() as conn:
            await revoke(conn, org.alice, "bob2")
            await create_user_by(conn, org.alice, "bob3", human_handle=(address, "Bob Three"))
        claimer = await invited_ws(server, org.organization_id, token)
        rep = await send_cmd(claimer, "invite_info")
        assert rep["greeter_user_id"] == "bob2"
        assert rep["greeter_human_handle"] == [address, "Bob Two"]
        await claimer.close()
        assert await human_find(org.alice, query="bob") == {
            "status": "ok",
            "results": [
                human("bob", (address, "Bob"), revoked=True),
                human("bob3", (address, "Bob Three")),
                human("bob2", (address, "Bob Two"), revoked=True),
            ],
            "page": 1,
            "per_page": 100,
            "total": 3,
        }


async def test_postgresql_labels_of_a_reused_email_come_from_the_certificates(
    migrated_postgresql_url: str,
) -> None:
    """Also on a database whose shared human row kept the first label (as written before
    the row took the latest user's label)."""
    async with running_server(make_config(migrated_postgresql_url)) as server:
        org = await create_org(server)
        address = "bob@example.com"
        async with await org.alice.connect() as conn:
            await revoke(conn, org.alice, "bob")
            bob2, _ = await create_user_by(
                conn, org.alice, "bob2", human_handle=(address, "Bob Two")
            )
        db = await asyncpg.connect(migrated_postgresql_url)
        try:
            await db.execute(
                "UPDATE human SET label = 'Bob' WHERE email = $2 AND organization = "
                "(SELECT _id FROM organization WHERE organization_id = $1)",
                org.organization_id,
                address,
            )
        finally:
            await db.close()
        identity = await server.app.user.get_identity(org.organization_id, bob2.device_id)
        assert identity is not None and identity[1].human_handle == (address, "Bob Two")
        assert (await human_find(org.alice, query="bob"))["results"] == [
            human("bob", (address, "Bob"), revoked=True),
            human("bob2", (address, "Bob Two")),
        ]


async def invited_ws(server: RunningServer, organization_id: str, token: ID) -> ClientConnection:
    ws = await raw_connect(server.addr)
    await ws.recv()  # the challenge
    answer = InvitedAnswer(
        organization_id=organization_id, invitation_type=InvitationType.USER, token=token
    )
    await ws.send(build_answer(API_V2, answer))
    assert await recv_map(ws) == {"handshake": "result", "result": "ok"}
    return ws


async def test_user_create_allows_several_users_without_human_handle(org: Organization) -> None:
    async with await org.alice.connect() as conn:
        for user_id in ("anon1", "anon2"):
            new = new_user_by(org.alice, user_id)
            assert await conn.cmd("user_create", **new.request()) == {"status": "ok"}


async def test_user_create_grants_the_profile_of_the_certificate(org: Organization) -> None:
    async with await org.alice.connect() as conn:
        dave, _ = await create_user_by(conn, org.alice, "dave", profile=UserProfile.ADMIN)
        olga, _ = await create_user_by(conn, org.alice, "olga", profile=UserProfile.OUTSIDER)
    async with await dave.connect() as conn:
        erin, _ = await create_user_by(conn, dave, "erin")
    async with await olga.connect() as conn:
        rep = await conn.cmd("human_find")
        assert rep == {
            "status": "not_allowed",
            "reason": "Not allowed for user with OUTSIDER profile.",
        }
    async with await erin.connect() as conn:
        rep = await conn.cmd("user_create", **new_user_by(erin, "fred").request())
        assert rep == {"status": "not_allowed", "reason": "User `erin` is not admin"}


async def test_user_create_takes_the_admin_profile_from_legacy_is_admin(
    org: Organization,
) -> None:
    new = new_user_by(org.alice, "dave")
    legacy = msgspec.structs.replace(new.user, is_admin=True, profile=msgspec.UNSET)
    fields = new.request(user_certificate=legacy, redacted_user_certificate=legacy)
    async with await org.alice.connect() as conn:
        assert await conn.cmd("user_create", **fields) == {"status": "ok"}
    dave = new.local_device(org.alice)
    async with await dave.connect() as conn:
        assert (await conn.cmd("user_create", **new_user_by(dave, "erin").request())) == {
            "status": "ok"
        }


# user_get


async def test_user_get_returns_full_certificates_to_non_outsiders(org: Organization) -> None:
    new = carol(org)
    fields = new.request()
    async with await org.alice.connect() as conn:
        assert await conn.cmd("user_create", **fields) == {"status": "ok"}
    alice = await user_get(org.bob, "alice")
    for caller in (org.alice, org.bob):
        assert await user_get(caller, "carol") == {
            "status": "ok",
            "user_certificate": fields["user_certificate"],
            "revoked_user_certificate": None,
            "device_certificates": [fields["device_certificate"]],
            "trustchain": {
                "devices": alice["device_certificates"],
                "users": [alice["user_certificate"]],
                "revoked_users": [],
            },
        }
    assert decoded_user(alice["user_certificate"]).human_handle == ("alice@example.com", "Alice")
    assert decoded_device(alice["device_certificates"][0]).device_label == "Alice's laptop"


async def test_user_get_returns_redacted_certificates_to_outsiders(org: Organization) -> None:
    new = carol(org)
    fields = new.request()
    async with await org.alice.connect() as conn:
        assert await conn.cmd("user_create", **fields) == {"status": "ok"}
    rep = await user_get(org.mallory, "carol")
    assert rep["user_certificate"] == fields["redacted_user_certificate"]
    assert rep["device_certificates"] == [fields["redacted_device_certificate"]]
    assert rep["revoked_user_certificate"] is None
    # The trustchain is redacted too.
    full_alice = await user_get(org.bob, "alice")
    [alice_user] = rep["trustchain"]["users"]
    [alice_device] = rep["trustchain"]["devices"]
    assert alice_user != full_alice["user_certificate"]
    assert decoded_user(alice_user) == msgspec.structs.replace(
        decoded_user(full_alice["user_certificate"]), human_handle=None
    )
    assert decoded_device(alice_device) == msgspec.structs.replace(
        decoded_device(full_alice["device_certificates"][0]), device_label=None
    )
    assert rep["trustchain"]["revoked_users"] == []


async def test_user_get_trustchain_goes_back_to_the_bootstrap_user(org: Organization) -> None:
    async with await org.alice.connect() as conn:
        dave, dave_certs = await create_user_by(conn, org.alice, "dave", profile=UserProfile.ADMIN)
    async with await dave.connect() as conn:
        _, erin_certs = await create_user_by(conn, dave, "erin")
    alice = await user_get(org.bob, "alice")
    rep = await user_get(org.bob, "erin")
    assert rep["user_certificate"] == erin_certs["user_certificate"]
    assert rep["device_certificates"] == [erin_certs["device_certificate"]]
    trustchain = rep["trustchain"]
    assert set(trustchain) == {"devices", "users", "revoked_users"}
    assert sorted(trustchain["devices"]) == sorted(
        [dave_certs["device_certificate"], *alice["device_certificates"]]
    )
    assert sorted(trustchain["users"]) == sorted(
        [dave_certs["user_certificate"], alice["user_certificate"]]
    )
    assert trustchain["revoked_users"] == []


async def test_user_get_trustchain_of_the_bootstrap_user_is_empty(org: Organization) -> None:
    rep = await user_get(org.bob, "alice")
    assert rep["trustchain"] == {"devices": [], "users": [], "revoked_users": []}


async def test_user_get_trustchain_includes_the_certifiers_of_each_device(
    org: Organization,
) -> None:
    async with await org.bob.connect() as conn:
        await create_device(conn, org.bob, "laptop")
    bob = await user_get(org.alice, "bob")
    alice = await user_get(org.alice, "alice")
    assert len(bob["device_certificates"]) == 2
    desktop = next(
        c for c in bob["device_certificates"] if decoded_device(c).device_id == "bob@desktop"
    )
    # bob@laptop was certified by bob@desktop: its chain brings bob's own certificates.
    assert sorted(bob["trustchain"]["devices"]) == sorted([desktop, *alice["device_certificates"]])
    assert sorted(bob["trustchain"]["users"]) == sorted(
        [bob["user_certificate"], alice["user_certificate"]]
    )


async def test_user_get_returns_the_revoked_user_certificate(org: Organization) -> None:
    async with await org.alice.connect() as conn:
        certificate = await revoke(conn, org.alice, "bob")
        rep = await conn.cmd("user_get", user_id="bob")
    assert rep["revoked_user_certificate"] == certificate
    assert rep["trustchain"]["revoked_users"] == []


async def test_user_get_trustchain_includes_the_revoker(org: Organization) -> None:
    async with await org.alice.connect() as conn:
        dave, dave_certs = await create_user_by(conn, org.alice, "dave", profile=UserProfile.ADMIN)
    async with await dave.connect() as conn:
        certificate = await revoke(conn, dave, "bob")
    rep = await user_get(org.alice, "bob")
    assert rep["revoked_user_certificate"] == certificate
    assert dave_certs["device_certificate"] in rep["trustchain"]["devices"]
    assert dave_certs["user_certificate"] in rep["trustchain"]["users"]


async def test_user_get_trustchain_includes_revoked_certifiers(org: Organization) -> None:
    async with await org.alice.connect() as conn:
        dave, _ = await create_user_by(conn, org.alice, "dave", profile=UserProfile.ADMIN)
    async with await dave.connect() as conn:
        await create_user_by(conn, dave, "erin")
    async with await org.alice.connect() as conn:
        dave_revocation = await revoke(conn, org.alice, "dave")
        rep = await conn.cmd("user_get", user_id="erin")
    assert rep["trustchain"]["revoked_users"] == [dave_revocation]


async def test_user_get_of_an_unknown_user_is_not_found(org: Organization) -> None:
    assert await user_get(org.bob, "nobody") == {"status": "not_found"}


async def test_user_get_of_a_user_of_another_organization_is_not_found(
    server: RunningServer, org: Organization
) -> None:
    other_id = new_organization_id()
    token = await create_organization(server.addr, ADMINISTRATION_TOKEN, other_id)
    await bootstrap_organization(server.addr, other_id, token, None, None, user_id="zoe")
    assert await user_get(org.bob, "zoe") == {"status": "not_found"}


@pytest.mark.parametrize("user_id", [OMIT, "bad id", "bob@desktop", 42, None])
async def test_user_get_with_invalid_user_id_is_bad_message(
    org: Organization, user_id: object
) -> None:
    fields = {} if user_id is OMIT else {"user_id": user_id}
    async with await org.bob.connect() as conn:
        rep = await conn.cmd("user_get", **fields)
    assert rep["status"] == "bad_message"
    assert set(rep["errors"]) == {"user_id"}


# user_revoke


@pytest.mark.parametrize("caller", ["bob", "mallory"])
@pytest.mark.parametrize("fields", [{}, {"revoked_user_certificate": 42}])
async def test_user_revoke_by_non_admin_is_not_allowed_before_validation(
    org: Organization, caller: str, fields: dict[str, Any]
) -> None:
    async with await getattr(org, caller).connect() as conn:
        rep = await conn.cmd("user_revoke", **fields)
    assert rep == {"status": "not_allowed", "reason": f"User `{caller}` is not admin"}


async def test_user_revoke_by_non_admin_with_a_valid_certificate_is_not_allowed(
    org: Organization,
) -> None:
    async with await org.bob.connect() as conn:
        rep = await conn.cmd("user_revoke", revoked_user_certificate=revocation(org.bob, "alice"))
    assert rep == {"status": "not_allowed", "reason": "User `bob` is not admin"}


@pytest.mark.parametrize("value", [OMIT, "not bytes", None])
async def test_user_revoke_with_missing_or_ill_typed_certificate_is_bad_message(
    org: Organization, value: object
) -> None:
    fields = {} if value is OMIT else {"revoked_user_certificate": value}
    async with await org.alice.connect() as conn:
        rep = await conn.cmd("user_revoke", **fields)
    assert rep["status"] == "bad_message"
    assert set(rep["errors"]) == {"revoked_user_certificate"}


async def test_user_revoke_succeeds(org: Organization) -> None:
    async with await org.alice.connect() as conn:
        rep = await conn.cmd("user_revoke", revoked_user_certificate=revocation(org.alice, "bob"))
        assert rep == {"status": "ok"}


async def test_user_revoke_of_self_is_not_allowed(org: Organization) -> None:
    async with await org.alice.connect() as conn:
        rep = await conn.cmd("user_revoke", revoked_user_certificate=revocation(org.alice, "alice"))
    assert rep == {"status": "not_allowed", "reason": "Cannot do self-revocation"}


async def test_user_revoke_of_an_unknown_user_is_not_found(org: Organization) -> None:
    async with await org.alice.connect() as conn:
        rep = await conn.cmd(
            "user_revoke", revoked_user_certificate=revocation(org.alice, "nobody")
        )
    assert rep == {"status": "not_found"}


async def test_user_revoke_twice_is_already_revoked(org: Organization) -> None:
    async with await org.alice.connect() as conn:
        await revoke(conn, org.alice, "bob")
        rep = await conn.cmd("user_revoke", revoked_user_certificate=revocation(org.alice, "bob"))
    assert rep == {"status": "already_revoked", "reason": "User `bob` already revoked"}


async def test_user_revoke_with_future_date_then_again_is_already_revoked(
    org: Organization,
) -> None:
    async with await org.alice.connect() as conn:
        future = revocation(org.alice, "bob", timestamp=now().add(1200))
        assert await conn.cmd("user_revoke", revoked_user_certificate=future) == {"status": "ok"}
        rep = await conn.cmd("user_revoke", revoked_user_certificate=revocation(org.alice, "bob"))
    assert rep == {"status": "already_revoked", "reason": "User `bob` already revoked"}


async def test_user_revoke_certificate_signed_by_another_key_is_invalid_certification(
    org: Organization,
) -> None:
    certificate = unsecure_load(RevokedUserCertificate, revocation(org.alice, "bob"))
    forged = sign_certificate(certificate, SigningKey.generate())
    async with await org.alice.connect() as conn:
        rep = await conn.cmd("user_revoke", revoked_user_certificate=forged)
    assert rep == FORGED


async def test_user_revoke_certificate_of_another_author_is_invalid_certification(
    org: Organization,
) -> None:
    async with await org.alice.connect() as conn:
        certificate = RevokedUserCertificate(author="bob@desktop", timestamp=now(), user_id="bob")
        # Signed by alice's key, but claiming another author.
        rep = await conn.cmd(
            "user_revoke",
            revoked_user_certificate=sign_certificate(certificate, org.alice.signing_key),
        )
    assert rep == wrong_author("alice@laptop", "bob@desktop")


@pytest.mark.parametrize("offset", [-1801, 1801])
async def test_user_revoke_outside_the_ballpark_is_invalid_certification(
    org: Organization, offset: float
) -> None:
    async with await org.alice.connect() as conn:
        certificate = revocation(org.alice, "bob", timestamp=now().add(offset))
        rep = await conn.cmd("user_revoke", revoked_user_certificate=certificate)
        assert rep == BAD_TIMESTAMP
        # Not revoked.
        assert (await conn.cmd("user_get", user_id="bob"))["revoked_user_certificate"] is None


async def test_user_revoke_checks_the_ballpark_before_self_revocation(org: Organization) -> None:
    async with await org.alice.connect() as conn:
        certificate = revocation(org.alice, "alice", timestamp=now().add(-7200))
        rep = await conn.cmd("user_revoke", revoked_user_certificate=certificate)
    assert rep == BAD_TIMESTAMP


async def test_user_revoke_closes_every_connection_of_the_revoked_user(
    org: Organization,
) -> None:
    async with await org.bob.connect() as conn:
        bob2 = await create_device(conn, org.bob, "laptop")
    bob_ws = await authenticated_ws(org.bob)
    bob2_v1_ws = await authenticated_ws(bob2, API_V1)
    mallory_ws = await authenticated_ws(org.mallory)
    # A pending request gets no reply.
    await bob_ws.send(codec.encode({"cmd": "events_listen"}))
    async with await org.alice.connect() as conn:
        await revoke(conn, org.alice, "bob")
    assert await assert_closed_without_reply(bob_ws) == 1000
    assert await assert_closed_without_reply(bob2_v1_ws) == 1000
    await assert_still_open(mallory_ws)
    await mallory_ws.close()


async def test_user_revoke_with_future_date_closes_connections_but_handshakes_still_work(
    org: Organization,
) -> None:
    bob_ws = await authenticated_ws(org.bob)
    async with await org.alice.connect() as conn:
        certificate = revocation(org.alice, "bob", timestamp=now().add(1200))
        assert await conn.cmd("user_revoke", revoked_user_certificate=certificate) == {
            "status": "ok"
        }
    assert await assert_closed_without_reply(bob_ws) == 1000
    async with await org.bob.connect() as conn:
        assert (await conn.cmd("ping", ping="x"))["status"] == "ok"


async def test_user_revoke_of_an_admin_by_an_admin_is_allowed(org: Organization) -> None:
    async with await org.alice.connect() as conn:
        dave, _ = await create_user_by(conn, org.alice, "dave", profile=UserProfile.ADMIN)
    alice_ws = await authenticated_ws(org.alice)
    async with await dave.connect() as conn:
        assert await conn.cmd(
            "user_revoke", revoked_user_certificate=revocation(dave, "alice")
        ) == {"status": "ok"}
    assert await assert_closed_without_reply(alice_ws) == 1000


# device_create


@pytest.mark.parametrize("caller", ["alice", "bob", "mallory"])
async def test_device_create_is_allowed_for_any_profile(org: Organization, caller: str) -> None:
    device: LocalDevice = getattr(org, caller)
    async with await device.connect() as conn:
        new = await create_device(conn, device, "new", device_label="New one")
    async with await new.connect() as conn:
        assert await conn.cmd("ping", ping="x") == {"status": "ok", "pong": "x"}


async def test_device_create_takes_a_label_of_254_characters(
    server: RunningServer, org: Organization
) -> None:
    label = "é" * DEVICE_LABEL_MAX_LENGTH
    rep = await device_create(org.bob, device_request(org.bob, "bob@long", label))
    assert rep == {"status": "ok"}
    identity = await server.app.user.get_identity(org.organization_id, "bob@long")
    assert identity is not None and identity[2].device_label == label


async def test_device_create_with_a_label_longer_than_254_characters_is_invalid_certification(
    org: Organization,
) -> None:
    label = "x" * (DEVICE_LABEL_MAX_LENGTH + 1)
    rep = await device_create(org.bob, device_request(org.bob, "bob@long", label))
    assert rep["status"] == "invalid_certification"
    assert len((await user_get(org.bob, "bob"))["device_certificates"]) == 1


def device_request(
    creator: LocalDevice,
    device_id: str,
    label: str | None = None,
    key: SigningKey | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """device_create's fields for a new device certified by `creator` (`changes` alter
    the certificate before signing)."""
    full = device_certificate(creator, device_id, label)
    full = msgspec.structs.replace(full, **changes)
    redacted = msgspec.structs.replace(full, device_label=None)
    k = key or creator.signing_key
    return {
        "device_certificate": sign_certificate(full, k),
        "redacted_device_certificate": sign_certificate(redacted, k),
    }


async def device_create(device: LocalDevice, fields: dict[str, Any]) -> dict[str, Any]:
    async with await device.connect() as conn:
        return await conn.cmd("device_create", **fields)


async def test_device_create_validates_before_anything_else(org: Organization) -> None:
    rep = await device_create(org.mallory, {"device_certificate": 42})
    assert rep["status"] == "bad_message"
    assert set(rep["errors"]) == {"device_certificate"}


@pytest.mark.parametrize("field_name", ["device_certificate", "redacted_device_certificate"])
@pytest.mark.parametrize("value", [OMIT, "not bytes", None])
async def test_device_create_with_missing_or_ill_typed_field_is_bad_message(
    org: Organization, field_name: str, value: object
) -> None:
    fields = device_request(org.bob, "bob@laptop")
    if value is OMIT:
        del fields[field_name]
    else:
        fields[field_name] = value
    rep = await device_create(org.bob, fields)
    assert rep["status"] == "bad_message"
    assert set(rep["errors"]) == {field_name}


async def test_device_create_for_another_user_is_bad_user_id(org: Organization) -> None:
    rep = await device_create(org.bob, device_request(org.bob, "alice@evil"))
    assert rep == BAD_USER_ID
    assert len((await user_get(org.bob, "alice"))["device_certificates"]) == 1


async def test_device_create_checks_the_ballpark_before_the_user(org: Organization) -> None:
    fields = device_request(org.bob, "alice@evil", timestamp=now().add(-7200))
    assert await device_create(org.bob, fields) == BAD_TIMESTAMP


async def test_device_create_checks_the_user_before_the_redacted_certificate(
    org: Organization,
) -> None:
    fields = device_request(org.bob, "alice@evil", label="Evil")
    fields["redacted_device_certificate"] = fields["device_certificate"]
    assert await device_create(org.bob, fields) == BAD_USER_ID


async def test_device_create_with_empty_redacted_certificate_stores_the_full_one(
    org: Organization,
) -> None:
    fields = device_request(org.bob, "bob@laptop", label="Bob's laptop")
    fields["redacted_device_certificate"] = b""
    assert await device_create(org.bob, fields) == {"status": "ok"}
    rep = await user_get(org.mallory, "bob")
    assert fields["device_certificate"] in rep["device_certificates"]


async def test_device_create_stores_the_redacted_certificate_for_outsiders(
    org: Organization,
) -> None:
    fields = device_request(org.bob, "bob@laptop", label="Bob's laptop")
    assert await device_create(org.bob, fields) == {"status": "ok"}
    assert (
        fields["redacted_device_certificate"]
        in (await user_get(org.mallory, "bob"))["device_certificates"]
    )
    assert fields["device_certificate"] in (await user_get(org.alice, "bob"))["device_certificates"]


async def test_device_create_of_an_existing_device_is_already_exists(org: Organization) -> None:
    rep = await device_create(org.bob, device_request(org.bob, "bob@desktop"))
    assert rep == {"status": "already_exists", "reason": "Device `bob@desktop` already exists"}


@pytest.mark.parametrize("field_name", ["device_certificate", "redacted_device_certificate"])
async def test_device_create_certificate_signed_by_another_key_is_invalid_certification(
    org: Organization, field_name: str
) -> None:
    fields = device_request(org.bob, "bob@laptop")
    forged = device_request(org.bob, "bob@laptop", key=SigningKey.generate())
    fields[field_name] = forged[field_name]
    assert await device_create(org.bob, fields) == FORGED


async def test_device_create_certificate_of_another_author_is_invalid_certification(
    org: Organization,
) -> None:
    fields = device_request(org.bob, "bob@laptop", author="alice@laptop")
    assert await device_create(org.bob, fields) == wrong_author("bob@desktop", "alice@laptop")


@pytest.mark.parametrize("offset", [-1801, 1801])
async def test_device_create_outside_the_ballpark_is_invalid_certification(
    org: Organization, offset: float
) -> None:
    fields = device_request(org.bob, "bob@laptop", timestamp=now().add(offset))
    assert await device_create(org.bob, fields) == BAD_TIMESTAMP


async def test_device_create_redacted_differing_is_invalid_data(org: Organization) -> None:
    fields = device_request(org.bob, "bob@laptop")
    other = device_request(org.bob, "bob@laptop")  # another verify key
    fields["redacted_device_certificate"] = other["redacted_device_certificate"]
    assert await device_create(org.bob, fields) == REDACTED_DEVICE_DIFFERS


async def test_device_create_redacted_with_label_is_invalid_data(org: Organization) -> None:
    fields = device_request(org.bob, "bob@laptop", label="Bob's laptop")
    fields["redacted_device_certificate"] = fields["device_certificate"]
    assert await device_create(org.bob, fields) == REDACTED_DEVICE_HAS_LABEL


# human_find


def human(user_id: str, handle: tuple[str, str] | None, revoked: bool = False) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "human_handle": list(handle) if handle else None,
        "revoked": revoked,
    }


ALICE = human("alice", ("alice@example.com", "Alice"))
BOB = human("bob", ("bob@example.com", "Bob"))
MALLORY = human("mallory", None)


async def human_find(device: LocalDevice, **fields: Any) -> dict[str, Any]:
    async with await device.connect() as conn:
        return await conn.cmd("human_find", **fields)


@pytest.mark.parametrize("fields", [{}, {"page": 0}, {"per_page": "garbage"}])
async def test_human_find_by_outsider_is_not_allowed_before_validation(
    org: Organization, fields: dict[str, Any]
) -> None:
    assert await human_find(org.mallory, **fields) == {
        "status": "not_allowed",
        "reason": "Not allowed for user with OUTSIDER profile.",
    }


@pytest.mark.parametrize("query", [OMIT, None, ""])
async def test_human_find_without_query_lists_everybody(org: Organization, query: object) -> None:
    fields = {} if query is OMIT else {"query": query}
    assert await human_find(org.bob, **fields) == {
        "status": "ok",
        "results": [ALICE, BOB, MALLORY],
        "page": 1,
        "per_page": 100,
        "total": 3,
    }


async def _create_search_population(org: Organization) -> None:
    async with await org.alice.connect() as conn:
        await create_user_by(conn, org.alice, "c1", human_handle=("carol@corp.test", "Carol Smith"))
        await create_user_by(conn, org.alice, "d2", human_handle=("dan@home.test", "Dan Smithers"))
        await create_user_by(conn, org.alice, "smi")


C1 = human("c1", ("carol@corp.test", "Carol Smith"))
D2 = human("d2", ("dan@home.test", "Dan Smithers"))
SMI = human("smi", None)


@pytest.mark.parametrize(
    "query, expected",
    [
        ("smi", [C1, D2, SMI]),  # label words and user id
        ("smith", [C1, D2]),
        ("SMITH", [C1, D2]),  # case-insensitive
        ("carol@", [C1]),  # email
        ("c1", [C1]),  # user id
        ("mallory", [MALLORY]),
        ("zzz", []),
    ],
)
async def test_human_find_query_matches_labels_emails_and_user_ids(
    org: Organization, query: str, expected: list[dict[str, Any]]
) -> None:
    await _create_search_population(org)
    rep = await human_find(org.bob, query=query)
    assert rep == {
        "status": "ok",
        "results": expected,
        "page": 1,
        "per_page": 100,
        "total": len(expected),
    }


@pytest.mark.parametrize(
    "query, expected",
    [
        ("corp", []),  # not a prefix of the email
        ("ith", []),  # not a prefix of any word
        ("car smi", [C1]),  # every term prefixes a word
        ("smi car", [C1]),
        ("dan carol", []),  # no single user matches both terms
        ("alice@example.com", [ALICE]),
        ("   ", [ALICE, BOB, C1, D2, MALLORY, SMI]),  # no term at all
    ],
)
# The spec lets a PostgreSQL storage search with a regular expression instead; ours shares
# the memory storage's prefix semantics (backend/user.py find_humans), so both run these.
async def test_human_find_query_terms_are_word_prefixes(
    org: Organization, query: str, expected: list[dict[str, Any]]
) -> None:
    await _create_search_population(org)
    rep = await human_find(org.bob, query=query)
    assert (rep["results"], rep["total"]) == (expected, len(expected))


async def test_human_find_orders_humans_by_label_then_non_humans_by_user_id(
    org: Organization,
) -> None:
    async with await org.alice.connect() as conn:
        await create_user_by(conn, org.alice, "u9", human_handle=("a2@example.com", "alice"))
        await create_user_by(conn, org.alice, "Zed", human_handle=("z@example.com", "Aaron"))
        await create_user_by(conn, org.alice, "Xavier", human_handle=("x@example.com", "bob"))
        await create_user_by(conn, org.alice, "B0")
        await create_user_by(conn, org.alice, "zz")
    rep = await human_find(org.bob)
    assert [r["user_id"] for r in rep["results"]] == [
        "Zed",  # aaron
        "alice",  # alice, then by user id
        "u9",  # alice
        "bob",  # bob
        "Xavier",  # bob, user ids compared in lower case
        "B0",  # then the users without human handle, by lowercased user id
        "mallory",
        "zz",
    ]
    assert rep["total"] == 8


async def test_human_find_reports_revoked_users(org: Organization) -> None:
    async with await org.alice.connect() as conn:
        await revoke(conn, org.alice, "bob")
    rep = await human_find(org.alice)
    assert rep["results"] == [ALICE, {**BOB, "revoked": True}, MALLORY]


async def test_human_find_omit_revoked_drops_revoked_users(org: Organization) -> None:
    async with await org.alice.connect() as conn:
        await revoke(conn, org.alice, "bob")
    rep = await human_find(org.alice, omit_revoked=True)
    assert (rep["results"], rep["total"]) == ([ALICE, MALLORY], 2)


async def test_human_find_reports_a_future_revocation_as_not_revoked_yet(
    org: Organization,
) -> None:
    async with await org.alice.connect() as conn:
        certificate = revocation(org.alice, "bob", timestamp=now().add(1200))
        assert await conn.cmd("user_revoke", revoked_user_certificate=certificate) == {
            "status": "ok"
        }
    rep = await human_find(org.alice, omit_revoked=True)
    assert rep["results"] == [ALICE, BOB, MALLORY]


async def test_human_find_omit_non_human_drops_users_without_human_handle(
    org: Organization,
) -> None:
    rep = await human_find(org.bob, omit_non_human=True)
    assert (rep["results"], rep["total"]) == ([ALICE, BOB], 2)


@pytest.mark.parametrize(
    "page, per_page, expected",
    [
        (1, 1, [ALICE]),
        (2, 1, [BOB]),
        (3, 1, [MALLORY]),
        (4, 1, []),
        (1, 2, [ALICE, BOB]),
        (2, 2, [MALLORY]),
        (1, 100, [ALICE, BOB, MALLORY]),
        (2, 100, []),
    ],
)
async def test_human_find_paginates_and_counts_the_total(
    org: Organization, page: int, per_page: int, expected: list[dict[str, Any]]
) -> None:
    rep = await human_find(org.bob, page=page, per_page=per_page)
    assert rep == {
        "status": "ok",
        "results": expected,
        "page": page,
        "per_page": per_page,
        "total": 3,
    }


@pytest.mark.parametrize(
    "fields, field_name",
    [
        ({"per_page": 0}, "per_page"),
        ({"per_page": 101}, "per_page"),
        ({"per_page": -1}, "per_page"),
        ({"per_page": "10"}, "per_page"),
        ({"page": 0}, "page"),
        ({"page": -1}, "page"),
        ({"page": None}, "page"),
        ({"query": 42}, "query"),
        ({"omit_revoked": "yes"}, "omit_revoked"),
        ({"omit_non_human": None}, "omit_non_human"),
    ],
)
async def test_human_find_with_invalid_field_is_bad_message(
    org: Organization, fields: dict[str, Any], field_name: str
) -> None:
    rep = await human_find(org.bob, **fields)
    assert rep["status"] == "bad_message"
    assert rep["reason"] == "Invalid message."
    assert set(rep["errors"]) == {field_name}


# API 1 authenticated variants


async def test_apiv1_user_create_with_two_certificates(org: Organization) -> None:
    new = new_user_by(org.alice, "dave")
    signed = new.signed()
    fields = {k: signed[k] for k in ("user_certificate", "device_certificate")}
    async with await org.alice.connect(api_version=API_V1) as conn:
        assert await conn.cmd("user_create", **fields) == {"status": "ok"}
    # The full certificates also serve as the redacted ones.
    rep = await user_get(org.mallory, "dave")
    assert rep["user_certificate"] == fields["user_certificate"]
    assert rep["device_certificates"] == [fields["device_certificate"]]
    async with await new.local_device(org.alice).connect(api_version=API_V1) as conn:
        assert (await conn.cmd("ping", ping="x"))["status"] == "ok"


async def test_apiv1_user_create_refuses_a_human_handle(org: Organization) -> None:
    new = new_user_by(org.alice, "dave", human_handle=("dave@example.com", "Dave"))
    signed = new.signed()
    async with await org.alice.connect(api_version=API_V1) as conn:
        rep = await conn.cmd(
            "user_create",
            user_certificate=signed["user_certificate"],
            device_certificate=signed["device_certificate"],
        )
    assert rep == REDACTED_USER_HAS_HANDLE


async def test_apiv1_user_create_refuses_a_device_label(org: Organization) -> None:
    new = new_user_by(org.alice, "dave", device_label="Dave's pc")
    signed = new.signed()
    async with await org.alice.connect(api_version=API_V1) as conn:
        rep = await conn.cmd(
            "user_create",
            user_certificate=signed["user_certificate"],
            device_certificate=signed["device_certificate"],
        )
    assert rep == REDACTED_DEVICE_HAS_LABEL


async def test_apiv1_user_create_by_non_admin_is_not_allowed_before_validation(
    org: Organization,
) -> None:
    async with await org.bob.connect(api_version=API_V1) as conn:
        rep = await conn.cmd("user_create", user_certificate=42)
    assert rep == {"status": "not_allowed", "reason": "User `bob` is not admin"}


async def test_apiv1_user_create_without_device_certificate_is_bad_message(
    org: Organization,
) -> None:
    signed = new_user_by(org.alice, "dave").signed()
    async with await org.alice.connect(api_version=API_V1) as conn:
        rep = await conn.cmd("user_create", user_certificate=signed["user_certificate"])
    assert rep == {
        "status": "bad_message",
        "reason": "Invalid message.",
        "errors": {"device_certificate": ["Missing data for required field."]},
    }


async def test_apiv1_device_create_with_encrypted_answer(org: Organization) -> None:
    full = sign_certificate(device_certificate(org.bob, "bob@laptop"), org.bob.signing_key)
    async with await org.bob.connect(api_version=API_V1) as conn:
        rep = await conn.cmd(
            "device_create", device_certificate=full, encrypted_answer=b"opaque answer"
        )
    assert rep == {"status": "ok"}
    assert full in (await user_get(org.mallory, "bob"))["device_certificates"]


async def test_apiv1_device_create_without_encrypted_answer_is_bad_message(
    org: Organization,
) -> None:
    fields = device_request(org.bob, "bob@laptop")  # the API 2 fields
    async with await org.bob.connect(api_version=API_V1) as conn:
        rep = await conn.cmd("device_create", **fields)
    assert rep == {
        "status": "bad_message",
        "reason": "Invalid message.",
        "errors": {"encrypted_answer": ["Missing data for required field."]},
    }


async def test_apiv1_device_create_refuses_a_device_label(org: Organization) -> None:
    full = sign_certificate(
        device_certificate(org.bob, "bob@laptop", "Bob's laptop"), org.bob.signing_key
    )
    async with await org.bob.connect(api_version=API_V1) as conn:
        rep = await conn.cmd("device_create", device_certificate=full, encrypted_answer=b"")
    assert rep == REDACTED_DEVICE_HAS_LABEL


async def test_apiv1_device_create_checks_the_label_before_the_user(org: Organization) -> None:
    full = sign_certificate(device_certificate(org.bob, "alice@evil", "Evil"), org.bob.signing_key)
    async with await org.bob.connect(api_version=API_V1) as conn:
        rep = await conn.cmd("device_create", device_certificate=full, encrypted_answer=b"")
    assert rep == REDACTED_DEVICE_HAS_LABEL


async def test_apiv1_device_create_for_another_user_is_bad_user_id(org: Organization) -> None:
    full = sign_certificate(device_certificate(org.bob, "alice@evil"), org.bob.signing_key)
    async with await org.bob.connect(api_version=API_V1) as conn:
        rep = await conn.cmd("device_create", device_certificate=full, encrypted_answer=b"")
    assert rep == BAD_USER_ID


async def test_apiv1_device_create_of_an_existing_device_is_already_exists(
    org: Organization,
) -> None:
    full = sign_certificate(device_certificate(org.bob, "bob@desktop"), org.bob.signing_key)
    async with await org.bob.connect(api_version=API_V1) as conn:
        rep = await conn.cmd("device_create", device_certificate=full, encrypted_answer=b"")
    assert rep == {"status": "already_exists", "reason": "Device `bob@desktop` already exists"}


async def user_find(device: LocalDevice, **fields: Any) -> dict[str, Any]:
    async with await device.connect(api_version=API_V1) as conn:
        return await conn.cmd("user_find", **fields)


async def test_apiv1_user_find_lists_user_ids(org: Organization) -> None:
    async with await org.alice.connect() as conn:
        await create_user_by(conn, org.alice, "carl")
    assert await user_find(org.bob) == {
        "status": "ok",
        "results": ["alice", "bob", "carl", "mallory"],
        "page": 1,
        "per_page": 100,
        "total": 4,
    }


async def test_apiv1_user_find_sorts_user_ids_case_insensitively(org: Organization) -> None:
    async with await org.alice.connect() as conn:
        await create_user_by(conn, org.alice, "Bea")
        await create_user_by(conn, org.alice, "Zoe")
    rep = await user_find(org.bob)
    assert rep["results"] == ["alice", "Bea", "bob", "mallory", "Zoe"]


@pytest.mark.parametrize(
    "query, expected",
    [
        ("b", ["Bea", "bob"]),
        ("B", ["Bea", "bob"]),
        ("al", ["alice"]),
        ("li", []),
        ("alice@example.com", []),  # not a valid user id
        ("a b", []),  # idem
    ],
)
async def test_apiv1_user_find_query_is_a_case_insensitive_user_id_prefix(
    org: Organization, query: str, expected: list[str]
) -> None:
    async with await org.alice.connect() as conn:
        await create_user_by(conn, org.alice, "Bea")
    rep = await user_find(org.bob, query=query)
    assert (rep["results"], rep["total"]) == (expected, len(expected))


async def test_apiv1_user_find_omit_revoked(org: Organization) -> None:
    async with await org.alice.connect() as conn:
        await revoke(conn, org.alice, "bob")
    assert (await user_find(org.alice))["results"] == ["alice", "bob", "mallory"]
    rep = await user_find(org.alice, omit_revoked=True)
    assert (rep["results"], rep["total"]) == (["alice", "mallory"], 2)


async def test_apiv1_user_find_paginates(org: Organization) -> None:
    rep = await user_find(org.bob, page=2, per_page=2)
    assert rep == {"status": "ok", "results": ["mallory"], "page": 2, "per_page": 2, "total": 3}


async def test_apiv1_user_find_by_outsider_is_not_allowed_before_validation(
    org: Organization,
) -> None:
    assert await user_find(org.mallory, page=0) == {
        "status": "not_allowed",
        "reason": "Not allowed for user with OUTSIDER profile.",
    }


@pytest.mark.parametrize("fields", [{"page": 0}, {"per_page": 101}, {"query": 42}])
async def test_apiv1_user_find_with_invalid_field_is_bad_message(
    org: Organization, fields: dict[str, Any]
) -> None:
    rep = await user_find(org.bob, **fields)
    assert rep["status"] == "bad_message"
    assert set(rep["errors"]) == set(fields)


async def test_apiv1_shared_commands_work(org: Organization) -> None:
    async with await org.alice.connect(api_version=API_V1) as conn:
        rep = await conn.cmd("user_get", user_id="bob")
        assert rep["status"] == "ok"
        assert (await conn.cmd("human_find", query="bob"))["results"] == [BOB]
        rep = await conn.cmd("user_revoke", revoked_user_certificate=revocation(org.alice, "bob"))
        assert rep == {"status": "ok"}


@pytest.mark.parametrize(
    "cmd",
    [
        "invite_new",
        "invite_list",
        "invite_delete",
        "invite_1_greeter_wait_peer",
        "invite_info",
        "organization_bootstrap",
        "organization_create",
    ],
)
async def test_apiv2_only_commands_are_unknown_on_api_1(org: Organization, cmd: str) -> None:
    async with await org.alice.connect(api_version=API_V1) as conn:
        assert await conn.cmd(cmd) == {"status": "unknown_command", "reason": "Unknown command"}
        assert (await conn.cmd("ping", ping="x"))["status"] == "ok"


@pytest.mark.parametrize(
    "cmd",
    [
        "user_find",
        "user_invite",
        "user_cancel_invitation",
        "device_invite",
        "device_cancel_invitation",
        "user_claim",
        "device_claim",
        "user_get_invitation_creator",
        "organization_bootstrap",
        "organization_status",
    ],
)
async def test_apiv1_only_commands_are_unknown_on_api_2(org: Organization, cmd: str) -> None:
    async with await org.alice.connect() as conn:
        assert await conn.cmd(cmd, user_id="bob") == {
            "status": "unknown_command",
            "reason": "Unknown command",
        }
        assert (await conn.cmd("ping", ping="x"))["status"] == "ok"
