"""API 2 invitations on the client side: creating, listing and cancelling them, and both
sides of the rendezvous (greeter: `invite_greeter`, claimer: `invite_claimer`; the
crypto in `invite_crypto`, the payloads in `invite_payloads`).

Typical greeter (authenticated connection of the inviting user)::

    initial = await greeter_for_invitation(conn, token)
    in_progress1 = await initial.wait_peer()          # show in_progress1.greeter_sas
    in_progress2 = await in_progress1.wait_peer_trust()
    # the human picks the claimer's code in in_progress2.claimer_sas_choices()
    in_progress3 = await in_progress2.signify_trust()
    in_progress4 = await in_progress3.get_claim_requests()
    await in_progress4.create_new_user(author, human_handle, device_label, profile)

Typical claimer::

    conn = await connect_as_claimer(addr)
    initial = await claimer_retrieve_info(conn, addr)
    in_progress1 = await initial.wait_peer()          # pick in in_progress1.greeter_sas_choices()
    in_progress2 = await in_progress1.signify_trust() # show in_progress2.claimer_sas
    in_progress3 = await in_progress2.wait_peer_trust()
    device = await in_progress3.claim_user(device_label, human_handle)

`InvitePeerResetError` at any step: restart with `initial.wait_peer()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from parsec_server.api.addr import BackendInvitationAddr, InvitationAction
from parsec_server.api.codec import ID, DateTime
from parsec_server.api.ids import InvitationType
from parsec_server.client.connection import BackendConnection
from parsec_server.client.device import LocalDevice
from parsec_server.client.invite_claimer import (
    ClaimerInitial,
    ClaimerInProgress1,
    ClaimerInProgress2,
    DeviceClaimerInitial,
    DeviceClaimerInProgress3,
    UserClaimerInitial,
    UserClaimerInProgress3,
    claimer_retrieve_info,
    connect_as_claimer,
)
from parsec_server.client.invite_common import (
    InvalidPeerDataError,
    InvitationAlreadyUsedError,
    InvitationNotFoundError,
    InviteCommandFailed,
    InviteError,
    InvitePeerResetError,
    check_reply,
)
from parsec_server.client.invite_crypto import compute_sas_codes, sas_code_candidates
from parsec_server.client.invite_greeter import (
    DeviceGreeterInitial,
    DeviceGreeterInProgress4,
    GreeterInitial,
    GreeterInProgress1,
    GreeterInProgress2,
    GreeterInProgress3,
    UserGreeterInitial,
    UserGreeterInProgress4,
    device_greeter,
    greeter_for_invitation,
    user_greeter,
)

__all__ = [
    "ClaimerInProgress1",
    "ClaimerInProgress2",
    "ClaimerInitial",
    "DeviceClaimerInProgress3",
    "DeviceClaimerInitial",
    "DeviceGreeterInProgress4",
    "DeviceGreeterInitial",
    "GreeterInProgress1",
    "GreeterInProgress2",
    "GreeterInProgress3",
    "GreeterInitial",
    "InvalidPeerDataError",
    "InvitationAlreadyUsedError",
    "InvitationNotFoundError",
    "InvitationSummary",
    "InviteCommandFailed",
    "InviteError",
    "InvitePeerResetError",
    "UserClaimerInProgress3",
    "UserClaimerInitial",
    "UserGreeterInProgress4",
    "UserGreeterInitial",
    "cancel_invitation",
    "claimer_retrieve_info",
    "compute_sas_codes",
    "connect_as_claimer",
    "device_greeter",
    "greeter_for_invitation",
    "invitation_addr",
    "list_invitations",
    "new_device_invitation",
    "new_user_invitation",
    "sas_code_candidates",
    "user_greeter",
]


def invitation_addr(
    device: LocalDevice, invitation_type: InvitationType, token: ID
) -> BackendInvitationAddr:
    """The `parsec://.../ORG?action=claim_user|claim_device&token=...` URL to give out."""
    return BackendInvitationAddr.build(
        device.backend_addr,
        device.organization_id,
        InvitationAction.for_type(invitation_type),
        token,
    )


def _token_of(reply: dict[str, Any], step: str) -> ID:
    token = reply.get("token")
    if not isinstance(token, ID):
        raise InviteCommandFailed(step, reply)
    return token


async def new_user_invitation(
    conn: BackendConnection, claimer_email: str, send_email: bool = False
) -> ID:
    """`invite_new` USER (ADMIN only); the server reuses a pending invitation of the same
    greeter for the same email."""
    step = "user invitation creation"
    reply = await conn.cmd(
        "invite_new", type="USER", claimer_email=claimer_email, send_email=send_email
    )
    return _token_of(check_reply(reply, step), step)


async def new_device_invitation(conn: BackendConnection, send_email: bool = False) -> ID:
    """`invite_new` DEVICE; `send_email` needs a human handle (`not_available` otherwise)."""
    step = "device invitation creation"
    reply = await conn.cmd("invite_new", type="DEVICE", send_email=send_email)
    return _token_of(check_reply(reply, step), step)


@dataclass(frozen=True)
class InvitationSummary:
    token: ID
    type: InvitationType
    status: str  # IDLE or READY
    created_on: DateTime | None
    claimer_email: str | None


async def list_invitations(conn: BackendConnection) -> list[InvitationSummary]:
    """Our pending invitations (`invite_list`), oldest first."""
    step = "invitation listing"
    reply = check_reply(await conn.cmd("invite_list"), step)
    summaries = []
    for item in reply.get("invitations", []):
        try:
            invitation_type = InvitationType(item["type"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InviteCommandFailed(step, reply) from exc
        created_on = item.get("created_on")
        summaries.append(
            InvitationSummary(
                token=_token_of(item, step),
                type=invitation_type,
                status=str(item.get("status")),
                created_on=created_on if isinstance(created_on, DateTime) else None,
                claimer_email=item.get("claimer_email"),
            )
        )
    return summaries


async def cancel_invitation(conn: BackendConnection, token: ID) -> None:
    """`invite_delete` with reason CANCELLED; closes the claimer's connections."""
    reply = await conn.cmd("invite_delete", token=token, reason="CANCELLED")
    check_reply(reply, "invitation cancellation")
