"""The rendezvous of greeter and claimer, step by step, as the 2.0.0 client runs it."""

from __future__ import annotations

import asyncio
from typing import Any

from parsec_server.api.codec import ID
from parsec_server.api.ids import InvitationType
from parsec_server.client.connection import BackendConnection, InvitedAuth
from tests.fixtures.servers import (
    Organization,
    RunningServer,
    create_org,
    make_config,
    running_server,
)


async def _greeter(conn: BackendConnection, token: ID) -> list[dict[str, Any]]:
    return [
        await conn.cmd("invite_1_greeter_wait_peer", token=token, greeter_public_key=b"G" * 32),
        await conn.cmd("invite_2a_greeter_get_hashed_nonce", token=token),
        await conn.cmd("invite_2b_greeter_send_nonce", token=token, greeter_nonce=b"gn"),
        await conn.cmd("invite_3a_greeter_wait_peer_trust", token=token),
        await conn.cmd("invite_3b_greeter_signify_trust", token=token),
        await conn.cmd("invite_4_greeter_communicate", token=token, payload=b""),
        await conn.cmd("invite_4_greeter_communicate", token=token, payload=b"confirmation"),
    ]


async def _claimer(conn: BackendConnection) -> list[dict[str, Any]]:
    return [
        await conn.cmd("invite_1_claimer_wait_peer", claimer_public_key=b"C" * 32),
        await conn.cmd("invite_2a_claimer_send_hashed_nonce", claimer_hashed_nonce=b"hn"),
        await conn.cmd("invite_2b_claimer_send_nonce", claimer_nonce=b"cn"),
        await conn.cmd("invite_3a_claimer_signify_trust"),
        await conn.cmd("invite_3b_claimer_wait_peer_trust"),
        await conn.cmd("invite_4_claimer_communicate", payload=b"request"),
        await conn.cmd("invite_4_claimer_communicate", payload=b""),
    ]


EXPECTED_GREETER = [
    {"status": "ok", "claimer_public_key": b"C" * 32},
    {"status": "ok", "claimer_hashed_nonce": b"hn"},
    {"status": "ok", "claimer_nonce": b"cn"},
    {"status": "ok"},
    {"status": "ok"},
    {"status": "ok", "payload": b"request"},
    {"status": "ok", "payload": b""},
]
EXPECTED_CLAIMER = [
    {"status": "ok", "greeter_public_key": b"G" * 32},
    {"status": "ok", "greeter_nonce": b"gn"},
    {"status": "ok"},
    {"status": "ok"},
    {"status": "ok"},
    {"status": "ok", "payload": b""},
    {"status": "ok", "payload": b"confirmation"},
]


async def _run_rendezvous(
    greeter_server: RunningServer, claimer_server: RunningServer, org: Organization
) -> None:
    async with await org.alice.connect() as alice:
        rep = await alice.cmd(
            "invite_new", type="USER", claimer_email="zack@example.com", send_email=False
        )
        token = rep["token"]
        auth = InvitedAuth(org.organization_id, InvitationType.USER, token)
        async with await BackendConnection.connect(claimer_server.addr, auth) as claimer:
            info = await claimer.cmd("invite_info")
            assert info == {
                "status": "ok",
                "type": "USER",
                "claimer_email": "zack@example.com",
                "greeter_user_id": "alice",
                "greeter_human_handle": ["alice@example.com", "Alice"],
            }
            async with asyncio.timeout(20):
                greeter_replies, claimer_replies = await asyncio.gather(
                    _greeter(alice, token), _claimer(claimer)
                )
    assert greeter_replies == EXPECTED_GREETER
    assert claimer_replies == EXPECTED_CLAIMER


async def test_full_rendezvous_exchanges_every_payload(
    server: RunningServer, org: Organization
) -> None:
    await _run_rendezvous(server, server, org)


async def test_rendezvous_works_across_two_servers_on_one_database(
    migrated_postgresql_url: str,
) -> None:
    async with (
        running_server(make_config(migrated_postgresql_url)) as greeter_server,
        running_server(make_config(migrated_postgresql_url)) as claimer_server,
    ):
        org = await create_org(greeter_server)
        await _run_rendezvous(greeter_server, claimer_server, org)
