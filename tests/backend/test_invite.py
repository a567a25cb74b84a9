"""API 2 invitations (protocol/30-commands-org-user-invite.md §7, 20-handshake.md §4.2):
invite_new, invite_list, invite_delete, invite_info, the INVITED handshake, the status
events, and the rendezvous state machine's corner cases (the happy path is in
test_invite_rendezvous.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from parsec_server.api import codec
from parsec_server.api.addr import BackendAddr
from parsec_server.api.codec import ID, DateTime
from parsec_server.api.handshake import API_V2, InvitedAnswer, build_answer
from parsec_server.api.ids import CLAIMER_EMAIL_MAX_LENGTH, InvitationType, UserProfile
from parsec_server.api.protocol.invite import InvitationDeletedReason
from parsec_server.backend.events import Event, InviteConduitUpdatedEvent, InviteStatusChangedEvent
from parsec_server.backend.invite_conduit import ConduitState, Talked, claimer_left, talk
from parsec_server.client.device import LocalDevice
from parsec_server.client.user import create_user
from tests.backend.common import (
    assert_closed_without_reply,
    assert_server_serves,
    assert_still_open,
    authenticated_ws,
    recv_reply,
    send_cmd,
    wait_set,
    watch_events,
)
from tests.fixtures.raw import raw_connect, raw_handshake, recv_map
from tests.fixtures.servers import (
    Organization,
    RunningServer,
    create_org,
    make_config,
    running_server,
)

ZACK = "zack@example.com"
G_KEY = b"G" * 32
C_KEY = b"C" * 32
NOT_FOUND = {"status": "not_found"}
ALREADY_DELETED = {"status": "already_deleted"}
INVALID_STATE = {"status": "invalid_state"}
UNKNOWN_COMMAND = {"status": "unknown_command", "reason": "Unknown command"}

# Each step command with valid fields (the greeter's also take `token`).
GREETER_STEPS: list[tuple[str, dict[str, Any]]] = [
    ("invite_1_greeter_wait_peer", {"greeter_public_key": G_KEY}),
    ("invite_2a_greeter_get_hashed_nonce", {}),
    ("invite_2b_greeter_send_nonce", {"greeter_nonce": b"gn"}),
    ("invite_3a_greeter_wait_peer_trust", {}),
    ("invite_3b_greeter_signify_trust", {}),
    ("invite_4_greeter_communicate", {"payload": b"to claimer"}),
]
CLAIMER_STEPS: list[tuple[str, dict[str, Any]]] = [
    ("invite_1_claimer_wait_peer", {"claimer_public_key": C_KEY}),
    ("invite_2a_claimer_send_hashed_nonce", {"claimer_hashed_nonce": b"hn"}),
    ("invite_2b_claimer_send_nonce", {"claimer_nonce": b"cn"}),
    ("invite_3a_claimer_signify_trust", {}),
    ("invite_3b_claimer_wait_peer_trust", {}),
    ("invite_4_claimer_communicate", {"payload": b"to greeter"}),
]
GREETER_COMMANDS = ["invite_new", "invite_delete", "invite_list"] + [c for c, _ in GREETER_STEPS]
CLAIMER_COMMANDS = ["invite_info"] + [c for c, _ in CLAIMER_STEPS]


# Sessions


class Sessions:
    """Raw websocket sessions of a test, all closed at its end."""

    def __init__(self, addr: BackendAddr) -> None:
        self.addr = addr
        self._open: list[ClientConnection] = []

    async def greeter(self, device: LocalDevice, subscribed: bool = False) -> ClientConnection:
        ws = await authenticated_ws(device)
        self._open.append(ws)
        if subscribed:
            assert await send_cmd(ws, "events_subscribe") == {"status": "ok"}
        return ws

    async def claimer(
        self,
        organization_id: str,
        token: ID,
        invitation_type: InvitationType = InvitationType.USER,
    ) -> ClientConnection:
        ws = await raw_connect(self.addr)
        self._open.append(ws)
        await ws.recv()  # the challenge, unused by INVITED answers
        answer = InvitedAnswer(
            organization_id=organization_id, invitation_type=invitation_type, token=token
        )
        await ws.send(build_answer(API_V2, answer))
        assert await recv_map(ws) == {"handshake": "result", "result": "ok"}
        return ws

    async def close_all(self) -> None:
        for ws in self._open:
            await ws.close()


@pytest.fixture
async def sessions(server: RunningServer) -> AsyncIterator[Sessions]:
    opened = Sessions(server.addr)
    yield opened
    await opened.close_all()


async def invite_user(ws: ClientConnection, email: str = ZACK) -> ID:
    rep = await send_cmd(ws, "invite_new", type="USER", claimer_email=email, send_email=False)
    assert rep["status"] == "ok", rep
    token: ID = rep["token"]
    return token


async def invite_device(ws: ClientConnection) -> ID:
    rep = await send_cmd(ws, "invite_new", type="DEVICE", send_email=False)
    assert rep["status"] == "ok", rep
    token: ID = rep["token"]
    return token


async def list_tokens(ws: ClientConnection) -> list[ID]:
    rep = await send_cmd(ws, "invite_list")
    assert rep["status"] == "ok", rep
    return [item["token"] for item in rep["invitations"]]


def status_changed(token: ID, status: str) -> dict[str, Any]:
    return {
        "status": "ok",
        "event": "invite.status_changed",
        "token": token,
        "invitation_status": status,
    }


async def next_event(ws: ClientConnection) -> dict[str, Any]:
    return await send_cmd(ws, "events_listen")


def invited_answer(organization_id: str, invitation_type: str, token: Any) -> dict[str, Any]:
    return {
        "handshake": "answer",
        "type": "INVITED",
        "client_api_version": [2, 0],
        "organization_id": organization_id,
        "invitation_type": invitation_type,
        "token": token,
    }


def bad_identity(help: str = "Invalid handshake information") -> dict[str, Any]:
    return {"handshake": "result", "result": "bad_identity", "help": help}


# The rendezvous


def conduit_updated(token: ID) -> Callable[[Event], bool]:
    return lambda event: isinstance(event, InviteConduitUpdatedEvent) and event.token == token.uuid


async def start_step(
    server: RunningServer, ws: ClientConnection, invitation: ID, cmd: str, **fields: Any
) -> None:
    """Send a step command and return once its payload is deposited in the conduit of
    `invitation` (the command then waits for the peer; read its reply with `recv_reply`)."""
    deposited = watch_events(server, conduit_updated(invitation))
    await ws.send(codec.encode({"cmd": cmd, **fields}))
    await wait_set(deposited)


async def greeter_steps_1_to_3(ws: ClientConnection, token: ID) -> None:
    for cmd, fields in GREETER_STEPS[:5]:
        rep = await send_cmd(ws, cmd, token=token, **fields)
        assert rep["status"] == "ok", (cmd, rep)


async def claimer_steps_1_to_3(ws: ClientConnection) -> None:
    for cmd, fields in CLAIMER_STEPS[:5]:
        rep = await send_cmd(ws, cmd, **fields)
        assert rep["status"] == "ok", (cmd, rep)


async def step_1(greeter: ClientConnection, claimer: ClientConnection, token: ID) -> None:
    """Both sides through step 1 (the conduit then waits for the claimer's hashed nonce)."""
    await greeter.send(
        codec.encode(
            {"cmd": "invite_1_greeter_wait_peer", "token": token, "greeter_public_key": G_KEY}
        )
    )
    assert await send_cmd(claimer, "invite_1_claimer_wait_peer", claimer_public_key=C_KEY) == {
        "status": "ok",
        "greeter_public_key": G_KEY,
    }
    assert await recv_reply(greeter) == {"status": "ok", "claimer_public_key": C_KEY}


# invite_new: USER


async def test_invite_new_user_by_admin_returns_a_token(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    rep = await send_cmd(alice, "invite_new", type="USER", claimer_email=ZACK, send_email=False)
    assert rep == {"status": "ok", "token": rep["token"]}
    assert isinstance(rep["token"], ID)
    assert await list_tokens(alice) == [rep["token"]]


@pytest.mark.parametrize("who", ["bob", "mallory"])
async def test_invite_new_user_by_non_admin_is_not_allowed_without_reason(
    sessions: Sessions, org: Organization, who: str
) -> None:
    ws = await sessions.greeter(getattr(org, who))
    rep = await send_cmd(ws, "invite_new", type="USER", claimer_email=ZACK, send_email=False)
    assert rep == {"status": "not_allowed"}
    assert await list_tokens(ws) == []


async def test_invite_new_user_without_claimer_email_is_bad_message(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    assert await send_cmd(alice, "invite_new", type="USER", send_email=False) == {
        "status": "bad_message",
        "reason": "Invalid message.",
        "errors": {"claimer_email": ["Missing data for required field."]},
    }


async def test_invite_new_user_with_a_claimer_email_of_255_characters_is_stored(
    sessions: Sessions, org: Organization
) -> None:
    # Characters, not bytes: the column of Parsec 2.0.0's layout is a VARCHAR(255).
    email = "é" * 243 + "@example.com"
    assert len(email) == CLAIMER_EMAIL_MAX_LENGTH
    alice = await sessions.greeter(org.alice)
    token = await invite_user(alice, email)
    rep = await send_cmd(alice, "invite_list")
    assert [i["claimer_email"] for i in rep["invitations"] if i["token"] == token] == [email]


async def test_invite_new_with_a_claimer_email_longer_than_255_characters_is_bad_message(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    email = "z" * 244 + "@example.com"
    rep = await send_cmd(alice, "invite_new", type="USER", claimer_email=email, send_email=False)
    assert (rep["status"], list(rep["errors"])) == ("bad_message", ["claimer_email"])
    assert await list_tokens(alice) == []


async def test_invite_new_validates_fields_before_checking_the_profile(
    sessions: Sessions, org: Organization
) -> None:
    bob = await sessions.greeter(org.bob)
    rep = await send_cmd(bob, "invite_new", type="USER", send_email=False)
    assert rep["status"] == "bad_message"


async def test_invite_new_with_unknown_type_is_bad_message(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    rep = await send_cmd(alice, "invite_new", type="FOO", send_email=False)
    # The reference words the error `Unsupported value: FOO`; only the field is checked.
    assert (rep["status"], rep["reason"], list(rep["errors"])) == (
        "bad_message",
        "Invalid message.",
        ["type"],
    )


async def test_invite_new_without_send_email_is_bad_message(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    assert await send_cmd(alice, "invite_new", type="DEVICE") == {
        "status": "bad_message",
        "reason": "Invalid message.",
        "errors": {"send_email": ["Missing data for required field."]},
    }


async def test_invite_new_user_reuses_the_open_invitation_for_the_same_email(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    token = await invite_user(alice)
    assert await invite_user(alice) == token
    assert await list_tokens(alice) == [token]


async def test_invite_new_user_for_another_email_creates_a_new_invitation(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    zack = await invite_user(alice, ZACK)
    yvonne = await invite_user(alice, "yvonne@example.com")
    assert yvonne != zack
    assert await list_tokens(alice) == [zack, yvonne]


async def test_invite_new_user_after_deletion_creates_a_new_invitation(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    first = await invite_user(alice)
    assert await send_cmd(alice, "invite_delete", token=first, reason="CANCELLED") == {
        "status": "ok"
    }
    second = await invite_user(alice)
    assert second != first
    assert await list_tokens(alice) == [second]


async def test_invite_new_user_reuse_is_per_greeter(sessions: Sessions, org: Organization) -> None:
    async with await org.alice.connect() as conn:
        admin2 = await create_user(conn, org.alice, "admin2", "pc", None, UserProfile.ADMIN)
    alice = await sessions.greeter(org.alice)
    other_admin = await sessions.greeter(admin2)
    assert await invite_user(alice) != await invite_user(other_admin)


# invite_new: DEVICE


@pytest.mark.parametrize("who", ["alice", "bob", "mallory"])
async def test_invite_new_device_is_allowed_for_any_profile(
    sessions: Sessions, org: Organization, who: str
) -> None:
    ws = await sessions.greeter(getattr(org, who))
    rep = await send_cmd(ws, "invite_new", type="DEVICE", send_email=False)
    assert rep == {"status": "ok", "token": rep["token"]}
    assert await list_tokens(ws) == [rep["token"]]


async def test_invite_new_device_reuses_the_greeters_open_invitation(
    sessions: Sessions, org: Organization
) -> None:
    bob = await sessions.greeter(org.bob)
    token = await invite_device(bob)
    assert await invite_device(bob) == token
    assert await list_tokens(bob) == [token]


async def test_invite_new_device_ignores_claimer_email(
    sessions: Sessions, org: Organization
) -> None:
    bob = await sessions.greeter(org.bob)
    rep = await send_cmd(
        bob, "invite_new", type="DEVICE", claimer_email="ignored@example.com", send_email=False
    )
    token = rep["token"]
    assert rep == {"status": "ok", "token": token}
    listed = await send_cmd(bob, "invite_list")
    assert [set(item) for item in listed["invitations"]] == [
        {"type", "token", "created_on", "status"}
    ]
    claimer = await sessions.claimer(org.organization_id, token, InvitationType.DEVICE)
    assert "claimer_email" not in await send_cmd(claimer, "invite_info")


async def test_invite_new_device_and_user_invitations_are_distinct(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    user = await invite_user(alice)
    device = await invite_device(alice)
    assert user != device
    assert await list_tokens(alice) == [user, device]


async def test_invite_new_device_with_email_without_human_handle_is_not_available(
    sessions: Sessions, org: Organization
) -> None:
    mallory = await sessions.greeter(org.mallory)
    assert await send_cmd(mallory, "invite_new", type="DEVICE", send_email=True) == {
        "status": "not_available"
    }
    assert await list_tokens(mallory) == []


# invite.status_changed events


async def test_invite_new_emits_idle_to_the_greeter(sessions: Sessions, org: Organization) -> None:
    alice = await sessions.greeter(org.alice, subscribed=True)
    token = await invite_user(alice)
    assert await next_event(alice) == status_changed(token, "IDLE")


async def test_claimer_connection_emits_ready_to_the_greeter(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice, subscribed=True)
    token = await invite_user(alice)
    assert await next_event(alice) == status_changed(token, "IDLE")
    await sessions.claimer(org.organization_id, token)
    assert await next_event(alice) == status_changed(token, "READY")


async def test_claimer_disconnection_emits_idle_to_the_greeter(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice, subscribed=True)
    token = await invite_user(alice)
    claimer = await sessions.claimer(org.organization_id, token)
    await claimer.close()
    assert [await next_event(alice) for _ in range(3)] == [
        status_changed(token, "IDLE"),
        status_changed(token, "READY"),
        status_changed(token, "IDLE"),
    ]


async def test_invite_delete_emits_deleted_to_the_greeter(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice, subscribed=True)
    token = await invite_user(alice)
    assert await send_cmd(alice, "invite_delete", token=token, reason="CANCELLED") == {
        "status": "ok"
    }
    assert await next_event(alice) == status_changed(token, "IDLE")
    assert await next_event(alice) == status_changed(token, "DELETED")


async def test_claimer_closed_by_deletion_emits_idle_after_deleted(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice, subscribed=True)
    token = await invite_user(alice)
    claimer = await sessions.claimer(org.organization_id, token)
    assert await send_cmd(alice, "invite_delete", token=token, reason="CANCELLED") == {
        "status": "ok"
    }
    await assert_closed_without_reply(claimer)
    assert [(await next_event(alice))["invitation_status"] for _ in range(4)] == [
        "IDLE",
        "READY",
        "DELETED",
        "IDLE",
    ]


async def test_invitation_events_go_to_the_greeter_only(
    sessions: Sessions, org: Organization
) -> None:
    bob = await sessions.greeter(org.bob, subscribed=True)
    alice = await sessions.greeter(org.alice)
    alice_token = await invite_user(alice)
    await sessions.claimer(org.organization_id, alice_token)
    # Events are delivered in order: bob's first one is about his own invitation.
    bob_token = await invite_device(bob)
    assert await next_event(bob) == status_changed(bob_token, "IDLE")


# invite_list


async def test_invite_list_without_invitations_is_empty(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    assert await send_cmd(alice, "invite_list") == {"status": "ok", "invitations": []}


async def test_invite_list_returns_the_callers_open_invitations_in_creation_order(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    bob = await sessions.greeter(org.bob)
    before = DateTime.now()
    first = await invite_user(alice, "first@example.com")
    device = await invite_device(alice)
    await invite_device(bob)  # another greeter's
    deleted = await invite_user(alice, "deleted@example.com")
    last = await invite_user(alice, "last@example.com")
    assert await send_cmd(alice, "invite_delete", token=deleted, reason="CANCELLED") == {
        "status": "ok"
    }
    after = DateTime.now()
    rep = await send_cmd(alice, "invite_list")
    created = [item["created_on"] for item in rep["invitations"]]
    assert rep == {
        "status": "ok",
        "invitations": [
            {
                "type": "USER",
                "token": first,
                "created_on": created[0],
                "claimer_email": "first@example.com",
                "status": "IDLE",
            },
            {"type": "DEVICE", "token": device, "created_on": created[1], "status": "IDLE"},
            {
                "type": "USER",
                "token": last,
                "created_on": created[2],
                "claimer_email": "last@example.com",
                "status": "IDLE",
            },
        ],
    }
    assert all(isinstance(c, DateTime) for c in created)
    assert before <= created[0] <= created[1] <= created[2] <= after


async def test_invite_list_says_ready_while_a_claimer_is_connected(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice, subscribed=True)
    ready = await invite_user(alice, "ready@example.com")
    idle = await invite_device(alice)
    await sessions.claimer(org.organization_id, ready)
    assert await next_event(alice) == status_changed(ready, "IDLE")
    assert await next_event(alice) == status_changed(idle, "IDLE")
    assert await next_event(alice) == status_changed(ready, "READY")
    rep = await send_cmd(alice, "invite_list")
    assert [(item["token"], item["status"]) for item in rep["invitations"]] == [
        (ready, "READY"),
        (idle, "IDLE"),
    ]


async def test_invite_list_says_idle_again_once_the_claimer_left(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice, subscribed=True)
    token = await invite_user(alice)
    claimer = await sessions.claimer(org.organization_id, token)
    await claimer.close()
    assert [(await next_event(alice))["invitation_status"] for _ in range(3)] == [
        "IDLE",
        "READY",
        "IDLE",
    ]
    rep = await send_cmd(alice, "invite_list")
    assert [(item["token"], item["status"]) for item in rep["invitations"]] == [(token, "IDLE")]


# invite_delete


@pytest.mark.parametrize("reason", ["FINISHED", "CANCELLED", "ROTTEN"])
async def test_invite_delete_removes_the_invitation(
    sessions: Sessions, org: Organization, reason: str
) -> None:
    alice = await sessions.greeter(org.alice)
    token = await invite_user(alice)
    assert await send_cmd(alice, "invite_delete", token=token, reason=reason) == {"status": "ok"}
    assert await list_tokens(alice) == []


async def test_invite_delete_of_unknown_token_is_not_found(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    rep = await send_cmd(alice, "invite_delete", token=ID.new(), reason="CANCELLED")
    assert rep == NOT_FOUND


async def test_invite_delete_of_another_greeters_invitation_is_not_found_even_for_admin(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    bob = await sessions.greeter(org.bob)
    token = await invite_device(bob)
    assert await send_cmd(alice, "invite_delete", token=token, reason="CANCELLED") == NOT_FOUND
    assert await list_tokens(bob) == [token]


async def test_invite_delete_twice_is_already_deleted(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    token = await invite_user(alice)
    assert await send_cmd(alice, "invite_delete", token=token, reason="FINISHED") == {
        "status": "ok"
    }
    rep = await send_cmd(alice, "invite_delete", token=token, reason="CANCELLED")
    assert rep == ALREADY_DELETED


async def test_invite_delete_with_unknown_reason_is_bad_message(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    token = await invite_user(alice)
    rep = await send_cmd(alice, "invite_delete", token=token, reason="BORED")
    assert rep["status"] == "bad_message"
    assert set(rep["errors"]) == {"reason"}
    assert await list_tokens(alice) == [token]


async def test_invite_delete_closes_every_connection_of_the_claimer(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    token = await invite_user(alice)
    claimers = [await sessions.claimer(org.organization_id, token) for _ in range(2)]
    assert await send_cmd(alice, "invite_delete", token=token, reason="CANCELLED") == {
        "status": "ok"
    }
    for claimer in claimers:
        assert await assert_closed_without_reply(claimer) == 1000


async def test_invite_delete_leaves_other_invitations_claimers_connected(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice, subscribed=True)
    deleted = await invite_user(alice, "deleted@example.com")
    kept = await invite_user(alice, "kept@example.com")
    kept_claimer = await sessions.claimer(org.organization_id, kept)
    deleted_claimer = await sessions.claimer(org.organization_id, deleted)
    assert await send_cmd(alice, "invite_delete", token=deleted, reason="CANCELLED") == {
        "status": "ok"
    }
    await assert_closed_without_reply(deleted_claimer)
    await assert_still_open(kept_claimer)


# The INVITED handshake


async def test_invited_handshake_with_unknown_token_is_invitation_not_found(
    server: RunningServer, org: Organization
) -> None:
    answer = invited_answer(org.organization_id, "USER", ID.new())
    assert await raw_handshake(server.addr, answer) == bad_identity(
        "Invalid handshake: Invitation not found"
    )


async def test_invited_handshake_with_a_token_of_another_organization_is_not_found(
    server: RunningServer, sessions: Sessions, org: Organization
) -> None:
    other = await create_org(server)
    alice = await sessions.greeter(org.alice)
    token = await invite_user(alice)
    answer = invited_answer(other.organization_id, "USER", token)
    assert await raw_handshake(server.addr, answer) == bad_identity(
        "Invalid handshake: Invitation not found"
    )


async def test_invited_handshake_with_deleted_invitation_is_already_deleted(
    server: RunningServer, sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    token = await invite_user(alice)
    assert await send_cmd(alice, "invite_delete", token=token, reason="FINISHED") == {
        "status": "ok"
    }
    answer = invited_answer(org.organization_id, "USER", token)
    assert await raw_handshake(server.addr, answer) == bad_identity(
        "Invalid handshake: Invitation already deleted"
    )


@pytest.mark.parametrize(("created", "claimed"), [("USER", "DEVICE"), ("DEVICE", "USER")])
async def test_invited_handshake_with_wrong_invitation_type_is_bad_identity(
    server: RunningServer, sessions: Sessions, org: Organization, created: str, claimed: str
) -> None:
    alice = await sessions.greeter(org.alice)
    token = await (invite_user(alice) if created == "USER" else invite_device(alice))
    answer = invited_answer(org.organization_id, claimed, token)
    assert await raw_handshake(server.addr, answer) == bad_identity()


async def test_invited_handshake_on_unknown_organization_is_bad_identity(
    server: RunningServer,
) -> None:
    answer = invited_answer("NoSuchOrganization", "USER", ID.new())
    assert await raw_handshake(server.addr, answer) == bad_identity()


async def test_invited_handshake_on_expired_organization_is_organization_expired(
    server: RunningServer, sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    token = await invite_user(alice)
    async with await server.admin() as admin:
        rep = await admin.cmd(
            "organization_update",
            organization_id=org.organization_id,
            expiration_date=DateTime.now().add(-1),
        )
        assert rep == {"status": "ok"}
    answer = invited_answer(org.organization_id, "USER", token)
    assert await raw_handshake(server.addr, answer) == {
        "handshake": "result",
        "result": "organization_expired",
        "help": "Trial organization has expired",
    }


async def test_invited_handshake_with_a_str_token_is_bad_protocol(
    server: RunningServer, sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    token = await invite_user(alice)
    answer = invited_answer(org.organization_id, "USER", token.hex)
    result = await raw_handshake(server.addr, answer)
    # The help text is informative (the client does not parse it).
    assert (result["handshake"], result["result"], sorted(result)) == (
        "result",
        "bad_protocol",
        ["handshake", "help", "result"],
    )


# invite_info


async def test_invite_info_of_user_invitation(sessions: Sessions, org: Organization) -> None:
    alice = await sessions.greeter(org.alice)
    token = await invite_user(alice)
    claimer = await sessions.claimer(org.organization_id, token)
    assert await send_cmd(claimer, "invite_info") == {
        "status": "ok",
        "type": "USER",
        "claimer_email": ZACK,
        "greeter_user_id": "alice",
        "greeter_human_handle": ["alice@example.com", "Alice"],
    }


async def test_invite_info_of_device_invitation(sessions: Sessions, org: Organization) -> None:
    bob = await sessions.greeter(org.bob)
    token = await invite_device(bob)
    claimer = await sessions.claimer(org.organization_id, token, InvitationType.DEVICE)
    assert await send_cmd(claimer, "invite_info") == {
        "status": "ok",
        "type": "DEVICE",
        "greeter_user_id": "bob",
        "greeter_human_handle": ["bob@example.com", "Bob"],
    }


async def test_invite_info_of_greeter_without_human_handle(
    sessions: Sessions, org: Organization
) -> None:
    mallory = await sessions.greeter(org.mallory)
    token = await invite_device(mallory)
    claimer = await sessions.claimer(org.organization_id, token, InvitationType.DEVICE)
    assert await send_cmd(claimer, "invite_info") == {
        "status": "ok",
        "type": "DEVICE",
        "greeter_user_id": "mallory",
        "greeter_human_handle": None,
    }


# Command sets


async def test_greeter_commands_are_unknown_on_an_invited_connection(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    claimer = await sessions.claimer(org.organization_id, await invite_user(alice))
    for cmd in [*GREETER_COMMANDS, "events_subscribe", "user_get"]:
        assert await send_cmd(claimer, cmd) == UNKNOWN_COMMAND, cmd


async def test_claimer_commands_are_unknown_on_an_authenticated_connection(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    for cmd in CLAIMER_COMMANDS:
        assert await send_cmd(alice, cmd) == UNKNOWN_COMMAND, cmd


async def test_invite_commands_are_unknown_on_api_1_connections(org: Organization) -> None:
    ws = await authenticated_ws(org.alice, (1, 2))
    for cmd in GREETER_COMMANDS + CLAIMER_COMMANDS:
        assert await send_cmd(ws, cmd) == UNKNOWN_COMMAND, cmd
    await ws.close()


async def test_ping_answers_on_an_invited_connection(sessions: Sessions, org: Organization) -> None:
    alice = await sessions.greeter(org.alice)
    claimer = await sessions.claimer(org.organization_id, await invite_user(alice))
    assert await send_cmd(claimer, "ping", ping="claimer") == {"status": "ok", "pong": "claimer"}


# The rendezvous state machine (§7.6 "Consequences worth testing")


async def test_claimer_step_out_of_order_is_invalid_state_at_once(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    claimer = await sessions.claimer(org.organization_id, await invite_user(alice))
    for cmd, fields in CLAIMER_STEPS[1:]:
        assert await send_cmd(claimer, cmd, **fields) == INVALID_STATE, cmd


async def test_greeter_step_out_of_order_is_invalid_state_at_once(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    token = await invite_user(alice)
    await sessions.claimer(org.organization_id, token)
    for cmd, fields in GREETER_STEPS[1:]:
        assert await send_cmd(alice, cmd, token=token, **fields) == INVALID_STATE, cmd


async def test_step_skipped_after_step_1_is_invalid_state_at_once(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    token = await invite_user(alice)
    claimer = await sessions.claimer(org.organization_id, token)
    await step_1(alice, claimer, token)
    assert await send_cmd(claimer, "invite_2b_claimer_send_nonce", claimer_nonce=b"cn") == (
        INVALID_STATE
    )
    assert await send_cmd(alice, "invite_3a_greeter_wait_peer_trust", token=token) == (
        INVALID_STATE
    )


async def test_repeated_claimer_step_is_invalid_state_and_the_first_keeps_waiting(
    server: RunningServer, sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    token = await invite_user(alice)
    claimer = await sessions.claimer(org.organization_id, token)
    await step_1(alice, claimer, token)
    await start_step(
        server, claimer, token, "invite_2a_claimer_send_hashed_nonce", claimer_hashed_nonce=b"hn"
    )
    retry = await sessions.claimer(org.organization_id, token)
    rep = await send_cmd(retry, "invite_2a_claimer_send_hashed_nonce", claimer_hashed_nonce=b"hn")
    assert rep == INVALID_STATE
    # The first call goes on as if nothing happened.
    assert await send_cmd(alice, "invite_2a_greeter_get_hashed_nonce", token=token) == {
        "status": "ok",
        "claimer_hashed_nonce": b"hn",
    }
    await alice.send(
        codec.encode(
            {"cmd": "invite_2b_greeter_send_nonce", "token": token, "greeter_nonce": b"gn"}
        )
    )
    assert await recv_reply(claimer) == {"status": "ok", "greeter_nonce": b"gn"}
    assert await send_cmd(claimer, "invite_2b_claimer_send_nonce", claimer_nonce=b"cn") == {
        "status": "ok"
    }
    assert await recv_reply(alice) == {"status": "ok", "claimer_nonce": b"cn"}


async def test_repeated_greeter_step_with_empty_payload_is_invalid_state(
    server: RunningServer, sessions: Sessions, org: Organization
) -> None:
    """The greeter's step 2a deposits an empty payload: it is present all the same."""
    alice = await sessions.greeter(org.alice)
    token = await invite_user(alice)
    claimer = await sessions.claimer(org.organization_id, token)
    await step_1(alice, claimer, token)
    await start_step(server, alice, token, "invite_2a_greeter_get_hashed_nonce", token=token)
    retry = await sessions.greeter(org.alice)
    rep = await send_cmd(retry, "invite_2a_greeter_get_hashed_nonce", token=token)
    assert rep == INVALID_STATE
    await claimer.send(
        codec.encode({"cmd": "invite_2a_claimer_send_hashed_nonce", "claimer_hashed_nonce": b"hn"})
    )
    assert await recv_reply(alice) == {"status": "ok", "claimer_hashed_nonce": b"hn"}


async def test_empty_payloads_are_exchanged_in_step_4(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    token = await invite_user(alice)
    claimer = await sessions.claimer(org.organization_id, token)
    await asyncio.gather(greeter_steps_1_to_3(alice, token), claimer_steps_1_to_3(claimer))
    await alice.send(
        codec.encode({"cmd": "invite_4_greeter_communicate", "token": token, "payload": b""})
    )
    assert await send_cmd(claimer, "invite_4_claimer_communicate", payload=b"") == {
        "status": "ok",
        "payload": b"",
    }
    assert await recv_reply(alice) == {"status": "ok", "payload": b""}


async def test_claimer_step_1_resets_and_the_blocked_greeter_gets_invalid_state(
    server: RunningServer, sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    token = await invite_user(alice)
    claimer = await sessions.claimer(org.organization_id, token)
    await step_1(alice, claimer, token)
    await start_step(server, alice, token, "invite_2a_greeter_get_hashed_nonce", token=token)
    await claimer.send(
        codec.encode({"cmd": "invite_1_claimer_wait_peer", "claimer_public_key": b"N" * 32})
    )
    assert await recv_reply(alice) == INVALID_STATE
    # As the 2.0.0 client does, the greeter restarts from step 1, which the claimer awaits.
    rep = await send_cmd(alice, "invite_1_greeter_wait_peer", token=token, greeter_public_key=G_KEY)
    assert rep == {"status": "ok", "claimer_public_key": b"N" * 32}
    assert await recv_reply(claimer) == {"status": "ok", "greeter_public_key": G_KEY}


async def test_greeter_step_1_resets_and_the_blocked_claimer_gets_invalid_state(
    server: RunningServer, sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    token = await invite_user(alice)
    claimer = await sessions.claimer(org.organization_id, token)
    await step_1(alice, claimer, token)
    await start_step(
        server, claimer, token, "invite_2a_claimer_send_hashed_nonce", claimer_hashed_nonce=b"hn"
    )
    await alice.send(
        codec.encode(
            {"cmd": "invite_1_greeter_wait_peer", "token": token, "greeter_public_key": b"N" * 32}
        )
    )
    assert await recv_reply(claimer) == INVALID_STATE
    rep = await send_cmd(claimer, "invite_1_claimer_wait_peer", claimer_public_key=C_KEY)
    assert rep == {"status": "ok", "greeter_public_key": b"N" * 32}
    assert await recv_reply(alice) == {"status": "ok", "claimer_public_key": C_KEY}


async def test_step_1_while_the_peer_waits_in_step_1_does_not_reset(
    server: RunningServer, sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    token = await invite_user(alice)
    claimer = await sessions.claimer(org.organization_id, token)
    await start_step(server, claimer, token, "invite_1_claimer_wait_peer", claimer_public_key=C_KEY)
    rep = await send_cmd(alice, "invite_1_greeter_wait_peer", token=token, greeter_public_key=G_KEY)
    assert rep == {"status": "ok", "claimer_public_key": C_KEY}
    assert await recv_reply(claimer) == {"status": "ok", "greeter_public_key": G_KEY}


async def test_greeter_step_by_another_user_is_not_found(
    sessions: Sessions, org: Organization
) -> None:
    bob = await sessions.greeter(org.bob)
    token = await invite_device(bob)
    await sessions.claimer(org.organization_id, token, InvitationType.DEVICE)
    alice = await sessions.greeter(org.alice)  # an ADMIN, still not the greeter
    for cmd, fields in GREETER_STEPS:
        assert await send_cmd(alice, cmd, token=token, **fields) == NOT_FOUND, cmd


async def test_greeter_step_with_unknown_token_is_not_found(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    rep = await send_cmd(
        alice, "invite_1_greeter_wait_peer", token=ID.new(), greeter_public_key=G_KEY
    )
    assert rep == NOT_FOUND


async def test_greeter_step_on_deleted_invitation_is_already_deleted(
    sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    token = await invite_user(alice)
    assert await send_cmd(alice, "invite_delete", token=token, reason="CANCELLED") == {
        "status": "ok"
    }
    for cmd, fields in GREETER_STEPS:
        assert await send_cmd(alice, cmd, token=token, **fields) == ALREADY_DELETED, cmd


async def test_claimer_step_on_deleted_invitation_closes_the_connection_without_reply(
    server: RunningServer, sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    for cmd, fields in CLAIMER_STEPS:
        token = await invite_user(alice, f"{cmd}@example.com")
        claimer = await sessions.claimer(org.organization_id, token)
        # Deleted in storage only: no event closes the claimer's connection first, so
        # the step itself finds the invitation deleted.
        outcome = await server.app.invite.delete(
            org.organization_id,
            "alice",
            token.uuid,
            DateTime.now(),
            InvitationDeletedReason.CANCELLED,
        )
        assert outcome is None
        await claimer.send(codec.encode({"cmd": cmd, **fields}))
        assert await assert_closed_without_reply(claimer) == 1000, cmd
    await assert_still_open(alice)


async def test_deletion_closes_a_claimer_blocked_in_a_step_without_reply(
    server: RunningServer, sessions: Sessions, org: Organization
) -> None:
    alice = await sessions.greeter(org.alice)
    token = await invite_user(alice)
    claimer = await sessions.claimer(org.organization_id, token)
    await start_step(server, claimer, token, "invite_1_claimer_wait_peer", claimer_public_key=C_KEY)
    assert await send_cmd(alice, "invite_delete", token=token, reason="CANCELLED") == {
        "status": "ok"
    }
    assert await assert_closed_without_reply(claimer) == 1000


async def test_deletion_does_not_wake_a_greeter_blocked_in_a_step(
    server: RunningServer, sessions: Sessions, org: Organization
) -> None:
    greeter = await sessions.greeter(org.alice)
    token = await invite_user(greeter)
    claimer = await sessions.claimer(org.organization_id, token)
    await start_step(
        server, greeter, token, "invite_1_greeter_wait_peer", token=token, greeter_public_key=G_KEY
    )
    alice = await sessions.greeter(org.alice)
    assert await send_cmd(alice, "invite_delete", token=token, reason="CANCELLED") == {
        "status": "ok"
    }
    await assert_closed_without_reply(claimer)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(greeter.recv(), 0.3)
    await assert_server_serves(org.alice)


async def test_greeter_keeps_waiting_when_a_claimer_disconnects(
    server: RunningServer, sessions: Sessions, org: Organization
) -> None:
    watcher = await sessions.greeter(org.alice, subscribed=True)
    greeter = await sessions.greeter(org.alice)
    token = await invite_user(greeter)
    await start_step(
        server, greeter, token, "invite_1_greeter_wait_peer", token=token, greeter_public_key=G_KEY
    )
    gone = await sessions.claimer(org.organization_id, token)
    await gone.close()
    assert [(await next_event(watcher))["invitation_status"] for _ in range(3)] == [
        "IDLE",
        "READY",
        "IDLE",
    ]
    claimer = await sessions.claimer(org.organization_id, token)
    rep = await send_cmd(claimer, "invite_1_claimer_wait_peer", claimer_public_key=C_KEY)
    assert rep == {"status": "ok", "greeter_public_key": G_KEY}
    assert await recv_reply(greeter) == {
        "status": "ok",
        "claimer_public_key": C_KEY,
    }


# A side leaving (its connection closing) in the middle of the rendezvous

N_KEY = b"N" * 32  # the key of a claimer coming after one that left


def abort(ws: ClientConnection) -> None:
    """Drop the TCP connection without a websocket Close (a client killed, a network cut
    noticed by the kernel)."""
    ws.transport.abort()


async def claimer_gone(watcher: ClientConnection) -> None:
    """Read the greeter's events up to the IDLE telling that the claimer has left (sent
    once the server has abandoned its wait and undone its part of the rendezvous)."""
    assert [(await next_event(watcher))["invitation_status"] for _ in range(3)] == [
        "IDLE",
        "READY",
        "IDLE",
    ]


async def assert_no_reply_yet(ws: ClientConnection) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), 0.3)


async def run_steps(
    ws: ClientConnection, steps: list[tuple[str, dict[str, Any]]], **extra: Any
) -> list[dict[str, Any]]:
    return [await send_cmd(ws, cmd, **extra, **fields) for cmd, fields in steps]


async def steps_2_to_4(greeter: ClientConnection, claimer: ClientConnection, token: ID) -> None:
    """The rest of the rendezvous, once both sides are through step 1."""
    greeter_replies, claimer_replies = await asyncio.gather(
        run_steps(greeter, GREETER_STEPS[1:], token=token), run_steps(claimer, CLAIMER_STEPS[1:])
    )
    assert greeter_replies == [
        {"status": "ok", "claimer_hashed_nonce": b"hn"},
        {"status": "ok", "claimer_nonce": b"cn"},
        {"status": "ok"},
        {"status": "ok"},
        {"status": "ok", "payload": b"to greeter"},
    ]
    assert claimer_replies == [
        {"status": "ok", "greeter_nonce": b"gn"},
        {"status": "ok"},
        {"status": "ok"},
        {"status": "ok"},
        {"status": "ok", "payload": b"to claimer"},
    ]


async def new_claimer_completes_the_rendezvous(
    sessions: Sessions, org: Organization, greeter: ClientConnection, token: ID
) -> None:
    """A new claimer connection runs the whole rendezvous with `greeter` (already waiting
    in step 1 with G_KEY)."""
    claimer = await sessions.claimer(org.organization_id, token)
    rep = await send_cmd(claimer, "invite_1_claimer_wait_peer", claimer_public_key=N_KEY)
    assert rep == {"status": "ok", "greeter_public_key": G_KEY}
    assert await recv_reply(greeter) == {"status": "ok", "claimer_public_key": N_KEY}
    await steps_2_to_4(greeter, claimer, token)


async def test_claimer_leaving_while_waiting_in_step_1_is_released(
    server: RunningServer, sessions: Sessions, org: Organization
) -> None:
    watcher = await sessions.greeter(org.alice, subscribed=True)
    greeter = await sessions.greeter(org.alice)
    token = await invite_user(greeter)
    gone = await sessions.claimer(org.organization_id, token)
    await start_step(server, gone, token, "invite_1_claimer_wait_peer", claimer_public_key=C_KEY)
    abort(gone)
    await claimer_gone(watcher)
    rep = await send_cmd(greeter, "invite_list")
    assert [(item["token"], item["status"]) for item in rep["invitations"]] == [(token, "IDLE")]
    # A greeter arriving now waits for a claimer: the dead one's key is gone.
    await start_step(
        server, greeter, token, "invite_1_greeter_wait_peer", token=token, greeter_public_key=G_KEY
    )
    await assert_no_reply_yet(greeter)
    await new_claimer_completes_the_rendezvous(sessions, org, greeter, token)


@pytest.mark.parametrize("claimer_waiting", [True, False], ids=["in_a_step", "between_steps"])
async def test_claimer_leaving_after_step_1_resets_the_rendezvous(
    server: RunningServer, sessions: Sessions, org: Organization, claimer_waiting: bool
) -> None:
    watcher = await sessions.greeter(org.alice, subscribed=True)
    greeter = await sessions.greeter(org.alice)
    token = await invite_user(greeter)
    gone = await sessions.claimer(org.organization_id, token)
    await step_1(greeter, gone, token)
    if claimer_waiting:
        await start_step(
            server, gone, token, "invite_2a_claimer_send_hashed_nonce", claimer_hashed_nonce=b"hn"
        )
        abort(gone)
        await claimer_gone(watcher)
        # Its hashed nonce went with the reset: the greeter learns the claimer is gone.
        rep = await send_cmd(greeter, "invite_2a_greeter_get_hashed_nonce", token=token)
        assert rep == INVALID_STATE
    else:
        await start_step(server, greeter, token, "invite_2a_greeter_get_hashed_nonce", token=token)
        abort(gone)
        # The greeter blocked in step 2 is woken at once: "peer reset".
        assert await recv_reply(greeter) == INVALID_STATE
        await claimer_gone(watcher)
    # As the 2.0.0 client, the greeter restarts from step 1, and the next claimer is served.
    await start_step(
        server, greeter, token, "invite_1_greeter_wait_peer", token=token, greeter_public_key=G_KEY
    )
    await assert_no_reply_yet(greeter)
    await new_claimer_completes_the_rendezvous(sessions, org, greeter, token)


async def test_greeter_leaving_while_waiting_in_step_1_withdraws_its_key(
    server: RunningServer, sessions: Sessions, org: Organization
) -> None:
    gone = await sessions.greeter(org.alice)
    token = await invite_user(gone)
    await start_step(
        server, gone, token, "invite_1_greeter_wait_peer", token=token, greeter_public_key=N_KEY
    )
    withdrawn = watch_events(server, conduit_updated(token))
    abort(gone)
    await wait_set(withdrawn)
    claimer = await sessions.claimer(org.organization_id, token)
    await start_step(server, claimer, token, "invite_1_claimer_wait_peer", claimer_public_key=C_KEY)
    await assert_no_reply_yet(claimer)
    greeter = await sessions.greeter(org.alice)
    rep = await send_cmd(
        greeter, "invite_1_greeter_wait_peer", token=token, greeter_public_key=G_KEY
    )
    assert rep == {"status": "ok", "claimer_public_key": C_KEY}
    assert await recv_reply(claimer) == {"status": "ok", "greeter_public_key": G_KEY}


async def test_greeter_holding_a_withdrawn_key_waits_for_the_next_claimer(
    server: RunningServer, sessions: Sessions, org: Organization
) -> None:
    """The greeter found a claimer's key in step 1, but that claimer left before taking the
    greeter's: the greeter neither pairs with the dead key nor fails, it waits."""
    greeter = await sessions.greeter(org.alice)
    token = await invite_user(greeter)
    invite = server.app.invite
    # A claimer's step 1 whose connection is gone before it could listen.
    deposit = partial(talk, is_greeter=False, state=ConduitState.STATE_1_WAIT_PEERS, payload=C_KEY)
    assert isinstance(
        await invite.conduit_update(org.organization_id, token.uuid, None, deposit), Talked
    )
    await start_step(
        server, greeter, token, "invite_1_greeter_wait_peer", token=token, greeter_public_key=G_KEY
    )
    left = partial(claimer_left, claimer_key=C_KEY)
    await invite.conduit_update(org.organization_id, token.uuid, None, left)
    await assert_no_reply_yet(greeter)
    await new_claimer_completes_the_rendezvous(sessions, org, greeter, token)


async def test_claimer_connection_outside_the_rendezvous_leaves_it_alone(
    server: RunningServer, sessions: Sessions, org: Organization
) -> None:
    """A second claimer connection (say the invitation link opened twice) that never took
    part in the rendezvous does not reset it when it closes."""
    greeter = await sessions.greeter(org.alice)
    token = await invite_user(greeter)
    claimer = await sessions.claimer(org.organization_id, token)
    await step_1(greeter, claimer, token)
    other = await sessions.claimer(org.organization_id, token)
    assert (await send_cmd(other, "invite_info"))["status"] == "ok"
    left = watch_events(server, lambda event: isinstance(event, InviteStatusChangedEvent))
    abort(other)
    await wait_set(left)
    await steps_2_to_4(greeter, claimer, token)


async def test_request_sent_during_a_step_is_answered_after_it(
    server: RunningServer, sessions: Sessions, org: Organization
) -> None:
    """The socket is read during a step (to see the peer leave), but a request sent
    meanwhile still waits for the step's reply (protocol/10-transport.md 5.3)."""
    greeter = await sessions.greeter(org.alice)
    token = await invite_user(greeter)
    claimer = await sessions.claimer(org.organization_id, token)
    await start_step(server, claimer, token, "invite_1_claimer_wait_peer", claimer_public_key=C_KEY)
    await claimer.send(codec.encode({"cmd": "ping", "ping": "queued"}))
    await assert_no_reply_yet(claimer)
    rep = await send_cmd(
        greeter, "invite_1_greeter_wait_peer", token=token, greeter_public_key=G_KEY
    )
    assert rep == {"status": "ok", "claimer_public_key": C_KEY}
    assert await recv_reply(claimer) == {"status": "ok", "greeter_public_key": G_KEY}
    assert await recv_reply(claimer) == {"status": "ok", "pong": "queued"}


# Several servers on one database


async def test_deletion_closes_a_claimer_connected_to_another_server(
    migrated_postgresql_url: str,
) -> None:
    async with (
        running_server(make_config(migrated_postgresql_url)) as greeter_server,
        running_server(make_config(migrated_postgresql_url)) as claimer_server,
    ):
        org = await create_org(greeter_server)
        greeters, claimers = Sessions(greeter_server.addr), Sessions(claimer_server.addr)
        alice = await greeters.greeter(org.alice)
        token = await invite_user(alice)
        claimer = await claimers.claimer(org.organization_id, token)
        assert await send_cmd(alice, "invite_delete", token=token, reason="CANCELLED") == {
            "status": "ok"
        }
        assert await assert_closed_without_reply(claimer) == 1000
        await greeters.close_all()
        await claimers.close_all()


async def test_invite_list_says_ready_for_a_claimer_connected_to_another_server(
    migrated_postgresql_url: str,
) -> None:
    async with (
        running_server(make_config(migrated_postgresql_url)) as greeter_server,
        running_server(make_config(migrated_postgresql_url)) as claimer_server,
    ):
        org = await create_org(greeter_server)
        greeters, claimers = Sessions(greeter_server.addr), Sessions(claimer_server.addr)
        alice = await greeters.greeter(org.alice, subscribed=True)
        token = await invite_user(alice)
        await claimers.claimer(org.organization_id, token)
        assert await next_event(alice) == status_changed(token, "IDLE")
        assert await next_event(alice) == status_changed(token, "READY")
        rep = await send_cmd(alice, "invite_list")
        assert [(item["token"], item["status"]) for item in rep["invitations"]] == [
            (token, "READY")
        ]
        await greeters.close_all()
        await claimers.close_all()


async def test_claimer_leaving_on_another_server_is_released(
    migrated_postgresql_url: str,
) -> None:
    async with (
        running_server(make_config(migrated_postgresql_url)) as greeter_server,
        running_server(make_config(migrated_postgresql_url)) as claimer_server,
    ):
        org = await create_org(greeter_server)
        greeters, claimers = Sessions(greeter_server.addr), Sessions(claimer_server.addr)
        watcher = await greeters.greeter(org.alice, subscribed=True)
        greeter = await greeters.greeter(org.alice)
        token = await invite_user(greeter)
        gone = await claimers.claimer(org.organization_id, token)
        await start_step(
            claimer_server, gone, token, "invite_1_claimer_wait_peer", claimer_public_key=C_KEY
        )
        abort(gone)
        await claimer_gone(watcher)
        rep = await send_cmd(greeter, "invite_list")
        assert [item["status"] for item in rep["invitations"]] == ["IDLE"]
        await start_step(
            greeter_server,
            greeter,
            token,
            "invite_1_greeter_wait_peer",
            token=token,
            greeter_public_key=G_KEY,
        )
        await assert_no_reply_yet(greeter)
        await new_claimer_completes_the_rendezvous(claimers, org, greeter, token)
        await greeters.close_all()
        await claimers.close_all()
