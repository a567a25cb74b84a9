from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from nacl.signing import SigningKey
from websockets.exceptions import ConnectionClosed

from parsec_server.api import codec
from parsec_server.api.codec import DateTime
from parsec_server.api.crypto import sign
from parsec_server.api.handshake import challenge_decoder
from parsec_server.client.connection import (
    AnonymousAuth,
    BackendConnection,
    HandshakeRefused,
)
from parsec_server.client.device import LocalDevice
from parsec_server.client.organization import create_organization
from tests.fixtures.raw import raw_connect, raw_handshake, recv_map
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


def authenticated_answer(device: LocalDevice, **overrides: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "handshake": "answer",
        "type": "AUTHENTICATED",
        "client_api_version": [2, 0],
        "organization_id": device.organization_id,
        "device_id": device.device_id,
        "rvk": device.root_verify_key,
        "answer": lambda challenge: sign(device.signing_key, challenge),
    }
    answer.update(overrides)
    return answer


async def test_challenge_announces_api_2_0_and_1_2(server: RunningServer) -> None:
    async with await raw_connect(server.addr) as ws:
        challenge = challenge_decoder.decode(await ws.recv())  # type: ignore[arg-type]
    assert len(challenge.challenge) == 48
    assert challenge.supported_api_versions == [(2, 0), (1, 2)]


async def test_authenticated_handshake_succeeds(server: RunningServer, org: Organization) -> None:
    result = await raw_handshake(server.addr, authenticated_answer(org.alice))
    assert result == {"handshake": "result", "result": "ok"}


async def test_apiv1_authenticated_handshake_succeeds(
    server: RunningServer, org: Organization
) -> None:
    answer = authenticated_answer(org.alice, type="authenticated", client_api_version=[1, 2])
    assert (await raw_handshake(server.addr, answer))["result"] == "ok"


@pytest.mark.parametrize(
    "overrides",
    [
        {"organization_id": "UnknownOrg"},
        {"device_id": "alice@unknown"},
        {"device_id": "nobody@laptop"},
    ],
)
async def test_unknown_identity_is_bad_identity_even_with_garbage_signature(
    server: RunningServer, org: Organization, overrides: dict[str, Any]
) -> None:
    answer = authenticated_answer(org.alice, answer=b"garbage", **overrides)
    result = await raw_handshake(server.addr, answer)
    assert result == {
        "handshake": "result",
        "result": "bad_identity",
        "help": "Invalid handshake information",
    }


async def test_wrong_root_verify_key_is_rvk_mismatch(
    server: RunningServer, org: Organization
) -> None:
    answer = authenticated_answer(org.alice, rvk=bytes(SigningKey.generate().verify_key))
    result = await raw_handshake(server.addr, answer)
    assert result["result"] == "rvk_mismatch"
    assert result["help"] == "Root verify key for organization differs between client and server"


async def test_signature_by_another_key_is_refused(
    server: RunningServer, org: Organization
) -> None:
    other = SigningKey.generate()
    answer = authenticated_answer(org.alice, answer=lambda c: sign(other, c))
    result = await raw_handshake(server.addr, answer)
    assert result == {
        "handshake": "result",
        "result": "bad_protocol",
        "help": "Invalid answer signature",
    }


async def test_signature_over_another_challenge_is_refused(
    server: RunningServer, org: Organization
) -> None:
    answer = authenticated_answer(org.alice, answer=sign(org.alice.signing_key, b"x" * 48))
    result = await raw_handshake(server.addr, answer)
    assert result["help"] == "Invalid returned challenge"


async def test_detached_signature_is_refused(server: RunningServer, org: Organization) -> None:
    answer = authenticated_answer(org.alice, answer=lambda c: sign(org.alice.signing_key, c)[:64])
    assert (await raw_handshake(server.addr, answer))["result"] == "bad_protocol"


async def test_revoked_user_is_refused(server: RunningServer, org: Organization) -> None:
    from parsec_server.client.certificates import revoked_user_certificate

    async with await org.alice.connect() as conn:
        cert = revoked_user_certificate(
            org.alice.signing_key, org.alice.device_id, DateTime.now(), "bob"
        )
        assert (await conn.cmd("user_revoke", revoked_user_certificate=cert))["status"] == "ok"
    with pytest.raises(HandshakeRefused) as exc:
        await org.bob.connect()
    assert exc.value.result == "revoked_device"
    assert exc.value.help == "Device has been revoked"


async def test_expired_organization_is_refused(server: RunningServer, org: Organization) -> None:
    async with await server.admin() as admin:
        rep = await admin.cmd(
            "organization_update",
            organization_id=org.organization_id,
            expiration_date=DateTime.now().add(-1),
        )
        assert rep == {"status": "ok"}
    with pytest.raises(HandshakeRefused) as exc:
        await org.alice.connect()
    assert (exc.value.result, exc.value.help) == (
        "organization_expired",
        "Trial organization has expired",
    )
    with pytest.raises(HandshakeRefused):
        await BackendConnection.connect(server.addr, AnonymousAuth(org.organization_id))


@pytest.mark.parametrize("version", [[3, 0], [0, 1]])
async def test_unsupported_major_version_is_bad_protocol(
    server: RunningServer, org: Organization, version: list[int]
) -> None:
    result = await raw_handshake(
        server.addr, authenticated_answer(org.alice, client_api_version=version)
    )
    assert result["result"] == "bad_protocol"
    assert result["help"] == (
        f"No overlap between client API versions {{{version[0]}.{version[1]}}} and backend "
        "API versions {2.0, 1.2}"
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"handshake": "foo"},
        {"client_api_version": None},
        {"client_api_version": [2]},
        {"client_api_version": [2, -1]},
        {"type": "administration"},
        {"type": "FOO"},
        {"type": None},
        {"device_id": "not a device id"},
        {"rvk": b"short"},
        {"answer": "not bytes"},
    ],
)
async def test_malformed_answer_is_bad_protocol(
    server: RunningServer, org: Organization, overrides: dict[str, Any]
) -> None:
    result = await raw_handshake(server.addr, authenticated_answer(org.alice, **overrides))
    assert result["result"] == "bad_protocol"
    assert isinstance(result["help"], str)


async def test_undecodable_answer_is_bad_protocol(server: RunningServer) -> None:
    async with await raw_connect(server.addr) as ws:
        await ws.recv()
        await ws.send(b"\xc1\xc1")
        result = await recv_map(ws)
    assert result["result"] == "bad_protocol"


async def test_text_frame_as_answer_gets_invalid_msg_format(server: RunningServer) -> None:
    async with await raw_connect(server.addr) as ws:
        await ws.recv()
        await ws.send("hello")
        assert await recv_map(ws) == {
            "status": "invalid_msg_format",
            "reason": "Invalid message format",
        }


async def test_administration_with_wrong_token_is_refused(server: RunningServer) -> None:
    answer = {
        "handshake": "answer",
        "type": "administration",
        "client_api_version": [1, 2],
        "token": "wrong",
    }
    result = await raw_handshake(server.addr, answer)
    assert result == {
        "handshake": "result",
        "result": "bad_admin_token",
        "help": "Invalid administration token",
    }
    answer["token"] = ADMINISTRATION_TOKEN
    assert (await raw_handshake(server.addr, answer))["result"] == "ok"


@pytest.mark.parametrize("minor", [0, 2, 99])
async def test_any_api_1_revision_is_accepted(server: RunningServer, minor: int) -> None:
    answer = {
        "handshake": "answer",
        "type": "administration",
        "client_api_version": [1, minor],
        "token": ADMINISTRATION_TOKEN,
    }
    assert (await raw_handshake(server.addr, answer))["result"] == "ok"


async def test_anonymous_on_unknown_organization_is_bad_identity(server: RunningServer) -> None:
    with pytest.raises(HandshakeRefused) as exc:
        await BackendConnection.connect(server.addr, AnonymousAuth(new_organization_id()))
    assert exc.value.result == "bad_identity"


async def test_anonymous_with_wrong_rvk_is_rvk_mismatch(
    server: RunningServer, org: Organization
) -> None:
    auth = AnonymousAuth(org.organization_id, bytes(SigningKey.generate().verify_key))
    with pytest.raises(HandshakeRefused) as exc:
        await BackendConnection.connect(server.addr, auth)
    assert exc.value.result == "rvk_mismatch"
    auth = AnonymousAuth(org.organization_id, org.alice.root_verify_key)
    async with await BackendConnection.connect(server.addr, auth) as conn:
        assert (await conn.cmd("ping", ping="x"))["status"] == "ok"


async def test_anonymous_on_not_bootstrapped_organization_with_rvk_is_rvk_mismatch(
    server: RunningServer,
) -> None:
    organization_id = new_organization_id()
    await create_organization(server.addr, ADMINISTRATION_TOKEN, organization_id)
    auth = AnonymousAuth(organization_id, bytes(SigningKey.generate().verify_key))
    with pytest.raises(HandshakeRefused) as exc:
        await BackendConnection.connect(server.addr, auth)
    assert exc.value.result == "rvk_mismatch"


async def test_spontaneous_bootstrap_creates_organization_on_anonymous_handshake(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(spontaneous_organization_bootstrap=True) as server:
        organization_id = new_organization_id()
        async with await BackendConnection.connect(server.addr, AnonymousAuth(organization_id)):
            pass
        async with await server.admin() as admin:
            rep = await admin.cmd("organization_status", organization_id=organization_id)
        assert rep == {"status": "ok", "is_bootstrapped": False, "expiration_date": None}


async def test_invited_handshake_with_unknown_token_says_invitation_not_found(
    server: RunningServer, org: Organization
) -> None:
    answer = {
        "handshake": "answer",
        "type": "INVITED",
        "client_api_version": [2, 0],
        "organization_id": org.organization_id,
        "invitation_type": "USER",
        "token": codec.ID.new(),
    }
    result = await raw_handshake(server.addr, answer)
    assert result == {
        "handshake": "result",
        "result": "bad_identity",
        "help": "Invalid handshake: Invitation not found",
    }


# Handshake timeout


def test_handshake_timeout_defaults_to_10_seconds() -> None:
    assert make_config().handshake_timeout == 10.0


async def test_connection_not_answering_the_challenge_is_closed_after_the_timeout() -> None:
    """A peer that completes the websocket upgrade, then never answers the challenge."""
    async with running_server(make_config(handshake_timeout=0.5)) as server:
        async with await raw_connect(server.addr) as ws:
            challenge_decoder.decode(await ws.recv())  # type: ignore[arg-type]
            started = time.monotonic()
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            elapsed = time.monotonic() - started
        assert ws.close_code == 1008
        assert 0.4 < elapsed < 3


async def test_handshake_timeout_does_not_bound_an_established_connection() -> None:
    async with running_server(make_config(handshake_timeout=0.5)) as server:
        org = await create_org(server)
        async with await org.alice.connect() as conn:
            await asyncio.sleep(1)
            assert await conn.cmd("ping", ping="later") == {"status": "ok", "pong": "later"}
