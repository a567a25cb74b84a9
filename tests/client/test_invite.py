"""Both sides of the API 2 invitation rendezvous (client/invite*.py) against our server,
on the memory storage and on PostgreSQL; the SAS and payload crypto against the vectors."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from nacl.public import PrivateKey

from parsec_server.api.addr import BackendInvitationAddr
from parsec_server.api.codec import ID
from parsec_server.api.ids import InvitationType, UserProfile
from parsec_server.client import invite_payloads
from parsec_server.client.connection import BackendConnection, HandshakeRefused
from parsec_server.client.device import LocalDevice
from parsec_server.client.invite import (
    DeviceClaimerInitial,
    DeviceGreeterInitial,
    InvalidPeerDataError,
    InvitationNotFoundError,
    InviteCommandFailed,
    InvitePeerResetError,
    UserClaimerInitial,
    UserGreeterInitial,
    cancel_invitation,
    claimer_retrieve_info,
    connect_as_claimer,
    greeter_for_invitation,
    invitation_addr,
    list_invitations,
    new_device_invitation,
    new_user_invitation,
)
from parsec_server.client.invite_crypto import (
    compute_sas_codes,
    hash_nonce,
    sas_code_candidates,
    sas_code_from_int,
    shared_secret_key,
)
from tests.fixtures import VECTORS_DIR
from tests.fixtures.servers import Organization, RunningServer

VECTORS = VECTORS_DIR / "data.json"
TIMEOUT = 20


def _invite_vectors() -> dict[str, Any]:
    vectors: dict[str, Any] = json.loads(VECTORS.read_text())["invite"]
    return vectors


# --- crypto -------------------------------------------------------------------------------


def test_sas_codes_match_the_vectors() -> None:
    sas = _invite_vectors()["sas"]
    claimer_key = PrivateKey(bytes.fromhex(sas["claimer_private_key"]))
    greeter_key = PrivateKey(bytes.fromhex(sas["greeter_private_key"]))
    assert bytes(claimer_key.public_key).hex() == sas["claimer_public_key"]
    shared = shared_secret_key(claimer_key, bytes(greeter_key.public_key))
    assert shared == shared_secret_key(greeter_key, bytes(claimer_key.public_key))
    assert shared.hex() == sas["shared_secret_key_x25519_raw"]
    claimer_nonce = bytes.fromhex(sas["claimer_nonce"])
    assert hash_nonce(claimer_nonce).hex() == sas["claimer_hashed_nonce_sha256"]

    codes = compute_sas_codes(claimer_nonce, bytes.fromhex(sas["greeter_nonce"]), shared)

    assert codes == (sas["claimer_sas"], sas["greeter_sas"])
    assert sas_code_from_int(sas["claimer_sas_int"]) == sas["claimer_sas"]
    assert sas_code_from_int(sas["greeter_sas_int"]) == sas["greeter_sas"]


def test_sas_code_writes_the_least_significant_symbol_first() -> None:
    assert sas_code_from_int(0) == "AAAA"
    assert sas_code_from_int(1) == "BAAA"
    assert sas_code_from_int(32) == "ABAA"
    assert sas_code_from_int((1 << 20) - 1) == "9999"
    with pytest.raises(ValueError):
        sas_code_from_int(1 << 20)


def test_sas_candidates_are_three_distinct_codes_including_the_right_one() -> None:
    for seed in range(50):
        candidates = sas_code_candidates("RZRZ", 3, random.Random(seed))
        assert len(candidates) == len(set(candidates)) == 3
        assert "RZRZ" in candidates
    positions = {sas_code_candidates("RZRZ", 3, random.Random(s)).index("RZRZ") for s in range(50)}
    assert positions == {0, 1, 2}


@pytest.mark.parametrize("index", range(4))
def test_payload_vectors_decrypt_and_round_trip(index: int) -> None:
    vectors = _invite_vectors()
    vector = vectors["payloads"][index]
    shared = bytes.fromhex(vectors["sas"]["shared_secret_key_x25519_raw"])
    cls = getattr(invite_payloads, vector["type"])

    payload = invite_payloads.decrypt_payload(
        cls, bytes.fromhex(vector["encrypted_with_shared_secret_key_hex"]), shared
    )

    fields = vector["decoded_fields"]
    for name, expected in fields.items():
        if name == "type":
            continue
        value = getattr(payload, name)
        if isinstance(expected, dict) and "bin_hex" in expected:
            assert value == bytes.fromhex(expected["bin_hex"])
        elif isinstance(expected, dict) and "uuid" in expected:
            assert value == ID.from_hex(expected["uuid"])
        elif isinstance(expected, list):
            assert list(value) == expected
        else:
            assert value == expected
    again = invite_payloads.encrypt_payload(payload, shared)
    assert invite_payloads.decrypt_payload(cls, again, shared) == payload


def test_payload_with_the_wrong_key_or_type_is_refused() -> None:
    vectors = _invite_vectors()
    vector = vectors["payloads"][0]
    shared = bytes.fromhex(vectors["sas"]["shared_secret_key_x25519_raw"])
    encrypted = bytes.fromhex(vector["encrypted_with_shared_secret_key_hex"])
    with pytest.raises(invite_payloads.InvalidPayload):
        invite_payloads.decrypt_payload(invite_payloads.InviteUserData, encrypted, b"k" * 32)
    with pytest.raises(invite_payloads.InvalidPayload):
        invite_payloads.decrypt_payload(invite_payloads.InviteDeviceData, encrypted, shared)


# --- helpers ------------------------------------------------------------------------------


@asynccontextmanager
async def claimer_connection(
    device: LocalDevice, invitation_type: InvitationType, token: ID
) -> AsyncIterator[tuple[BackendConnection, BackendInvitationAddr]]:
    addr = invitation_addr(device, invitation_type, token)
    conn = await connect_as_claimer(addr)
    try:
        yield conn, addr
    finally:
        await conn.close()


async def greet_user(
    initial: UserGreeterInitial, author: LocalDevice, profile: UserProfile
) -> tuple[str, str, str]:
    """(greeter SAS, claimer SAS, new device id), granting what was requested."""
    step1 = await initial.wait_peer()
    step2 = await step1.wait_peer_trust()
    assert step2.claimer_sas in step2.claimer_sas_choices()
    step3 = await step2.signify_trust()
    step4 = await step3.get_claim_requests()
    device_id = await step4.create_new_user(
        author, step4.requested_human_handle, step4.requested_device_label, profile
    )
    return step1.greeter_sas, step2.claimer_sas, device_id


async def claim_user(initial: UserClaimerInitial, label: str) -> tuple[str, str, LocalDevice]:
    step1 = await initial.wait_peer()
    assert step1.greeter_sas in step1.greeter_sas_choices()
    step2 = await step1.signify_trust()
    step3 = await step2.wait_peer_trust()
    device = await step3.claim_user("Zack's phone", (initial.claimer_email, label))
    return step1.greeter_sas, step2.claimer_sas, device


# --- user invitation ----------------------------------------------------------------------


async def test_user_invitation_creates_a_user_who_can_connect(
    server: RunningServer, org: Organization
) -> None:
    async with await org.alice.connect() as alice:
        token = await new_user_invitation(alice, "zack@example.com")
        greeter = await greeter_for_invitation(alice, token)
        assert isinstance(greeter, UserGreeterInitial)
        async with claimer_connection(org.alice, InvitationType.USER, token) as (conn, addr):
            claimer = await claimer_retrieve_info(conn, addr)
            assert isinstance(claimer, UserClaimerInitial)
            assert claimer.claimer_email == "zack@example.com"
            assert claimer.greeter_user_id == "alice"
            assert claimer.greeter_human_handle == ("alice@example.com", "Alice")
            async with asyncio.timeout(TIMEOUT):
                greeted, claimed = await asyncio.gather(
                    greet_user(greeter, org.alice, UserProfile.OUTSIDER),
                    claim_user(claimer, "Zack"),
                )
        # Each side computed the same two codes.
        assert greeted[:2] == claimed[:2]
        assert greeted[0] != greeted[1]
        new_device = claimed[2]
        assert new_device.device_id == greeted[2]
        assert new_device.human_handle == ("zack@example.com", "Zack")
        assert new_device.device_label == "Zack's phone"
        assert new_device.profile is UserProfile.OUTSIDER
        assert new_device.root_verify_key == org.alice.root_verify_key
        assert new_device.organization_id == org.organization_id
        # The invitation is over.
        assert await list_invitations(alice) == []

        async with await new_device.connect() as zack:
            assert (await zack.cmd("ping", ping="hi"))["status"] == "ok"
        reply = await alice.cmd("user_get", user_id=new_device.user_id)
        assert reply["status"] == "ok"


async def test_greeter_grants_its_own_choices_over_the_requested_ones(
    server: RunningServer, org: Organization
) -> None:
    async with await org.alice.connect() as alice:
        token = await new_user_invitation(alice, "zack@example.com")
        greeter = await greeter_for_invitation(alice, token)
        assert isinstance(greeter, UserGreeterInitial)

        async def greet() -> str:
            step3 = await (await (await greeter.wait_peer()).wait_peer_trust()).signify_trust()
            step4 = await step3.get_claim_requests()
            assert step4.requested_human_handle == ("zack@example.com", "Zack")
            assert step4.requested_device_label == "Zack's phone"
            return await step4.create_new_user(
                org.alice,
                ("zachary@example.com", "Zachary"),
                "Work phone",
                UserProfile.ADMIN,
                user_id="zack",
                device_name="phone",
            )

        async with claimer_connection(org.alice, InvitationType.USER, token) as (conn, addr):
            claimer = await claimer_retrieve_info(conn, addr)
            assert isinstance(claimer, UserClaimerInitial)
            async with asyncio.timeout(TIMEOUT):
                device_id, (_, _, device) = await asyncio.gather(
                    greet(), claim_user(claimer, "Zack")
                )
    assert device_id == device.device_id == "zack@phone"
    assert device.human_handle == ("zachary@example.com", "Zachary")
    assert device.device_label == "Work phone"
    assert device.profile is UserProfile.ADMIN


async def test_user_creation_refused_by_the_server_is_reported(
    server: RunningServer, org: Organization
) -> None:
    async with await org.alice.connect() as alice:
        token = await new_user_invitation(alice, "zack@example.com")
        greeter = await greeter_for_invitation(alice, token)
        assert isinstance(greeter, UserGreeterInitial)

        async def greet() -> None:
            step3 = await (await (await greeter.wait_peer()).wait_peer_trust()).signify_trust()
            step4 = await step3.get_claim_requests()
            # Bob already has this email.
            await step4.create_new_user(
                org.alice, ("bob@example.com", "Bob"), None, UserProfile.STANDARD
            )

        async def claim(claimer: UserClaimerInitial) -> None:
            step3 = await (await (await claimer.wait_peer()).signify_trust()).wait_peer_trust()
            await step3.claim_user(None, None)

        async with claimer_connection(org.alice, InvitationType.USER, token) as (conn, addr):
            claimer = await claimer_retrieve_info(conn, addr)
            assert isinstance(claimer, UserClaimerInitial)
            claim_task = asyncio.create_task(claim(claimer))
            async with asyncio.timeout(TIMEOUT):
                with pytest.raises(InviteCommandFailed) as exc_info:
                    await greet()
            claim_task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await claim_task
    assert exc_info.value.reply["status"] == "already_exists"


# --- device invitation --------------------------------------------------------------------


async def test_device_invitation_creates_a_device_of_the_same_user(
    server: RunningServer, org: Organization
) -> None:
    bob = org.bob
    async with await bob.connect() as conn_bob:
        token = await new_device_invitation(conn_bob)
        [summary] = await list_invitations(conn_bob)
        assert summary.token == token
        assert summary.type is InvitationType.DEVICE
        greeter = await greeter_for_invitation(conn_bob, token)
        assert isinstance(greeter, DeviceGreeterInitial)

        async def greet() -> str:
            step1 = await greeter.wait_peer()
            step2 = await step1.wait_peer_trust()
            step4 = await (await step2.signify_trust()).get_claim_requests()
            assert step4.requested_device_label == "Bob's tablet"
            return await step4.create_new_device(bob, step4.requested_device_label)

        async def claim(claimer: DeviceClaimerInitial) -> LocalDevice:
            step3 = await (await (await claimer.wait_peer()).signify_trust()).wait_peer_trust()
            return await step3.claim_device("Bob's tablet")

        async with claimer_connection(bob, InvitationType.DEVICE, token) as (conn, addr):
            claimer = await claimer_retrieve_info(conn, addr)
            assert isinstance(claimer, DeviceClaimerInitial)
            assert claimer.greeter_user_id == "bob"
            async with asyncio.timeout(TIMEOUT):
                device_id, device = await asyncio.gather(greet(), claim(claimer))

    assert device.device_id == device_id
    assert device.user_id == "bob"
    assert device.device_label == "Bob's tablet"
    assert device.human_handle == bob.human_handle
    assert device.profile is UserProfile.STANDARD
    assert bytes(device.private_key) == bytes(bob.private_key)
    assert device.user_manifest_id == bob.user_manifest_id
    assert device.user_manifest_key == bob.user_manifest_key
    assert device.local_symkey != bob.local_symkey
    assert bytes(device.signing_key) != bytes(bob.signing_key)
    async with await device.connect() as conn_new:
        reply = await conn_new.cmd("user_get", user_id="bob")
    assert reply["status"] == "ok"
    assert len(reply["device_certificates"]) == 2


# --- failures -----------------------------------------------------------------------------


async def test_peer_reset_is_reported_and_both_sides_can_restart(
    server: RunningServer, org: Organization
) -> None:
    async with await org.alice.connect() as alice:
        token = await new_user_invitation(alice, "zack@example.com")
        greeter = await greeter_for_invitation(alice, token)
        assert isinstance(greeter, UserGreeterInitial)
        async with claimer_connection(org.alice, InvitationType.USER, token) as (conn, addr):
            claimer = await claimer_retrieve_info(conn, addr)
            assert isinstance(claimer, UserClaimerInitial)

            async def claimer_until_blocked() -> None:
                step2 = await (await claimer.wait_peer()).signify_trust()
                await step2.wait_peer_trust()  # blocked until the greeter signifies trust

            async with asyncio.timeout(TIMEOUT):
                claimer_task = asyncio.create_task(claimer_until_blocked())
                step1 = await greeter.wait_peer()
                await step1.wait_peer_trust()
                # The human picked a wrong code: the greeter restarts, resetting the claimer.
                restarted = asyncio.create_task(
                    greet_user(greeter, org.alice, UserProfile.STANDARD)
                )
                with pytest.raises(InvitePeerResetError):
                    await claimer_task
                greeted, claimed = await asyncio.gather(restarted, claim_user(claimer, "Zack"))
    assert greeted[:2] == claimed[:2]
    assert claimed[2].device_id == greeted[2]


async def test_claimer_nonce_not_matching_its_hash_is_detected(
    server: RunningServer, org: Organization
) -> None:
    async with await org.alice.connect() as alice:
        token = await new_user_invitation(alice, "zack@example.com")
        greeter = await greeter_for_invitation(alice, token)
        async with claimer_connection(org.alice, InvitationType.USER, token) as (conn, _):

            async def cheating_claimer() -> None:
                public_key = bytes(PrivateKey.generate().public_key)
                await conn.cmd("invite_1_claimer_wait_peer", claimer_public_key=public_key)
                await conn.cmd(
                    "invite_2a_claimer_send_hashed_nonce", claimer_hashed_nonce=b"h" * 32
                )
                await conn.cmd("invite_2b_claimer_send_nonce", claimer_nonce=b"n" * 64)

            async with asyncio.timeout(TIMEOUT):
                results = await asyncio.gather(
                    greeter.wait_peer(), cheating_claimer(), return_exceptions=True
                )
    assert isinstance(results[0], InvalidPeerDataError)
    assert results[1] is None


async def test_unknown_or_cancelled_invitation_is_not_found(
    server: RunningServer, org: Organization
) -> None:
    async with await org.alice.connect() as alice:
        with pytest.raises(InvitationNotFoundError):
            await greeter_for_invitation(alice, ID.new())
        token = await new_user_invitation(alice, "zack@example.com")
        await cancel_invitation(alice, token)
        with pytest.raises(InvitationNotFoundError):
            await greeter_for_invitation(alice, token)
        with pytest.raises(InvitationNotFoundError):
            await cancel_invitation(alice, ID.new())
    with pytest.raises(HandshakeRefused) as exc_info:
        await connect_as_claimer(invitation_addr(org.alice, InvitationType.USER, token))
    assert exc_info.value.result == "bad_identity"


async def test_another_users_invitation_cannot_be_greeted(
    server: RunningServer, org: Organization
) -> None:
    async with await org.alice.connect() as alice:
        token = await new_user_invitation(alice, "zack@example.com")
    async with await org.bob.connect() as bob:
        with pytest.raises(InvitationNotFoundError):
            await greeter_for_invitation(bob, token)
        with pytest.raises(InviteCommandFailed) as exc_info:
            await new_user_invitation(bob, "zack@example.com")
    assert exc_info.value.reply["status"] == "not_allowed"
