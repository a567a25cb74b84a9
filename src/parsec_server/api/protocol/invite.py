"""API 2 invitations: management by the greeter, and the rendezvous steps of both sides."""

from __future__ import annotations

from enum import StrEnum

from msgspec import UNSET, UnsetType

from parsec_server.api.codec import ID
from parsec_server.api.ids import ClaimerEmail, InvitationType, PublicKeyBytes
from parsec_server.api.protocol.base import Req


class InvitationDeletedReason(StrEnum):
    FINISHED = "FINISHED"
    CANCELLED = "CANCELLED"
    ROTTEN = "ROTTEN"


class InviteNewReq(Req, frozen=True, tag="invite_new"):
    """A union on `type` in the spec: `claimer_email` is required for USER only."""

    type: InvitationType
    send_email: bool
    claimer_email: ClaimerEmail | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.type is InvitationType.USER and self.claimer_email is UNSET:
            raise ValueError("Field `claimer_email`: Missing data for required field.")
        super().__post_init__()


class InviteDeleteReq(Req, frozen=True, tag="invite_delete"):
    token: ID
    reason: InvitationDeletedReason


class InviteListReq(Req, frozen=True, tag="invite_list"):
    pass


class InviteInfoReq(Req, frozen=True, tag="invite_info"):
    pass


class Invite1GreeterWaitPeerReq(Req, frozen=True, tag="invite_1_greeter_wait_peer"):
    token: ID
    greeter_public_key: PublicKeyBytes


class Invite1ClaimerWaitPeerReq(Req, frozen=True, tag="invite_1_claimer_wait_peer"):
    claimer_public_key: PublicKeyBytes


class Invite2aClaimerSendHashedNonceReq(
    Req, frozen=True, tag="invite_2a_claimer_send_hashed_nonce"
):
    claimer_hashed_nonce: bytes


class Invite2aGreeterGetHashedNonceReq(Req, frozen=True, tag="invite_2a_greeter_get_hashed_nonce"):
    token: ID


class Invite2bGreeterSendNonceReq(Req, frozen=True, tag="invite_2b_greeter_send_nonce"):
    token: ID
    greeter_nonce: bytes


class Invite2bClaimerSendNonceReq(Req, frozen=True, tag="invite_2b_claimer_send_nonce"):
    claimer_nonce: bytes


class Invite3aGreeterWaitPeerTrustReq(Req, frozen=True, tag="invite_3a_greeter_wait_peer_trust"):
    token: ID


class Invite3aClaimerSignifyTrustReq(Req, frozen=True, tag="invite_3a_claimer_signify_trust"):
    pass


class Invite3bClaimerWaitPeerTrustReq(Req, frozen=True, tag="invite_3b_claimer_wait_peer_trust"):
    pass


class Invite3bGreeterSignifyTrustReq(Req, frozen=True, tag="invite_3b_greeter_signify_trust"):
    token: ID


class Invite4GreeterCommunicateReq(Req, frozen=True, tag="invite_4_greeter_communicate"):
    token: ID
    payload: bytes


class Invite4ClaimerCommunicateReq(Req, frozen=True, tag="invite_4_claimer_communicate"):
    payload: bytes
