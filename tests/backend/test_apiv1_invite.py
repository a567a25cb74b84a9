"""API 1 (legacy) invitations: invite, get the creator, claim, create, cancel."""

from __future__ import annotations

import asyncio

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from parsec_server.api import codec
from parsec_server.api.certificates import DeviceCertificate, UserCertificate, unsecure_load
from parsec_server.api.codec import DateTime
from parsec_server.api.handshake import API_V1
from parsec_server.api.ids import UserProfile
from parsec_server.client.certificates import device_certificates, user_certificates
from parsec_server.client.connection import AnonymousAuth, BackendConnection
from tests.fixtures.servers import Organization, RunningServer


async def _wait_until_registered(anon: BackendConnection, cmd: str, **fields: str) -> None:
    """The inviter's invitation must exist before the claimer shows up."""
    async with asyncio.timeout(10):
        while (await anon.cmd(cmd, **fields))["status"] != "ok":  # noqa: ASYNC110 (remote state)
            await asyncio.sleep(0.02)


async def test_user_invitation_relays_claim_and_certificates(
    server: RunningServer, org: Organization
) -> None:
    async with (
        await org.alice.connect(api_version=API_V1) as alice,
        await BackendConnection.connect(server.addr, AnonymousAuth(org.organization_id)) as anon,
    ):
        invite = asyncio.create_task(alice.cmd("user_invite", user_id="zack"))
        await _wait_until_registered(anon, "user_get_invitation_creator", invited_user_id="zack")
        creator = await anon.cmd("user_get_invitation_creator", invited_user_id="zack")
        assert creator["status"] == "ok"
        device_cert = unsecure_load(DeviceCertificate, creator["device_certificate"])
        assert device_cert.device_id == org.alice.device_id
        assert unsecure_load(UserCertificate, creator["user_certificate"]).user_id == "alice"
        assert creator["trustchain"] == {"devices": [], "users": [], "revoked_users": []}
        claim = asyncio.create_task(
            anon.cmd("user_claim", invited_user_id="zack", encrypted_claim=b"secret claim")
        )
        async with asyncio.timeout(10):
            assert await invite == {"status": "ok", "encrypted_claim": b"secret claim"}
        now = DateTime.now()
        user, _ = user_certificates(
            org.alice.signing_key,
            org.alice.device_id,
            now,
            "zack",
            None,
            PrivateKey.generate().public_key,
            UserProfile.STANDARD,
        )
        device, _ = device_certificates(
            org.alice.signing_key,
            org.alice.device_id,
            now,
            "zack@pc",
            None,
            SigningKey.generate().verify_key,
        )
        rep = await alice.cmd("user_create", user_certificate=user, device_certificate=device)
        assert rep == {"status": "ok"}
        async with asyncio.timeout(10):
            assert await claim == {
                "status": "ok",
                "user_certificate": user,
                "device_certificate": device,
            }


async def test_cancelled_user_invitation_denies_the_waiting_claimer(
    server: RunningServer, org: Organization
) -> None:
    async with (
        await org.alice.connect(api_version=API_V1) as alice,
        await org.alice.connect(api_version=API_V1) as alice2,
        await BackendConnection.connect(server.addr, AnonymousAuth(org.organization_id)) as anon,
    ):
        invite = asyncio.create_task(alice.cmd("user_invite", user_id="zack"))
        await _wait_until_registered(anon, "user_get_invitation_creator", invited_user_id="zack")
        claim = asyncio.create_task(
            anon.cmd("user_claim", invited_user_id="zack", encrypted_claim=b"c")
        )
        await invite
        await asyncio.sleep(0.1)
        assert await alice2.cmd("user_cancel_invitation", user_id="zack") == {"status": "ok"}
        async with asyncio.timeout(10):
            assert await claim == {"status": "denied", "reason": "Invitation creator rejected us."}
        rep = await anon.cmd("user_get_invitation_creator", invited_user_id="zack")
        assert rep == {"status": "not_found"}


async def test_user_invite_of_an_existing_user_is_refused(org: Organization) -> None:
    async with await org.alice.connect(api_version=API_V1) as alice:
        rep = await alice.cmd("user_invite", user_id="bob")
    assert rep == {"status": "already_exists", "reason": "User `bob` already exists"}


async def test_user_invite_needs_admin(org: Organization) -> None:
    async with await org.bob.connect(api_version=API_V1) as bob:
        rep = await bob.cmd("user_invite", user_id="zack")
    assert rep == {"status": "not_allowed", "reason": "Only allowed for user with ADMIN profile."}


async def test_claim_without_invitation_is_not_found(
    server: RunningServer, org: Organization
) -> None:
    async with await BackendConnection.connect(
        server.addr, AnonymousAuth(org.organization_id)
    ) as anon:
        assert await anon.cmd("user_claim", invited_user_id="nobody", encrypted_claim=b"x") == {
            "status": "not_found"
        }
        assert await anon.cmd(
            "device_claim", invited_device_id="alice@new", encrypted_claim=b"x"
        ) == {"status": "not_found"}


async def test_device_invitation_relays_claim_and_encrypted_answer(
    server: RunningServer, org: Organization
) -> None:
    async with (
        await org.bob.connect(api_version=API_V1) as bob,
        await BackendConnection.connect(server.addr, AnonymousAuth(org.organization_id)) as anon,
    ):
        invite = asyncio.create_task(bob.cmd("device_invite", invited_device_name="tablet"))
        await _wait_until_registered(
            anon, "device_get_invitation_creator", invited_device_id="bob@tablet"
        )
        creator = await anon.cmd("device_get_invitation_creator", invited_device_id="bob@tablet")
        assert creator["status"] == "ok"
        claim = asyncio.create_task(
            anon.cmd("device_claim", invited_device_id="bob@tablet", encrypted_claim=b"claim")
        )
        async with asyncio.timeout(10):
            assert await invite == {"status": "ok", "encrypted_claim": b"claim"}
        device, _ = device_certificates(
            org.bob.signing_key,
            org.bob.device_id,
            DateTime.now(),
            "bob@tablet",
            None,
            SigningKey.generate().verify_key,
        )
        rep = await bob.cmd("device_create", device_certificate=device, encrypted_answer=b"answer")
        assert rep == {"status": "ok"}
        async with asyncio.timeout(10):
            assert await claim == {
                "status": "ok",
                "device_certificate": device,
                "encrypted_answer": b"answer",
            }


async def test_new_request_abandons_a_waiting_user_invite(org: Organization) -> None:
    async with await org.alice.connect(api_version=API_V1) as alice:
        # A user_invite whose reply never comes: the ping abandons it.
        await alice._send_raw(codec.encode({"cmd": "user_invite", "user_id": "zack"}))
        assert await alice.cmd("ping", ping="next") == {"status": "ok", "pong": "next"}
