"""API 1 (legacy) invitations: a user or device id invited, claimed anonymously."""

from __future__ import annotations

from parsec_server.api.ids import DeviceID, DeviceName, UserID
from parsec_server.api.protocol.base import Req


class APIV1UserInviteReq(Req, frozen=True, tag="user_invite"):
    user_id: UserID


class APIV1UserGetInvitationCreatorReq(Req, frozen=True, tag="user_get_invitation_creator"):
    invited_user_id: UserID


class APIV1UserClaimReq(Req, frozen=True, tag="user_claim"):
    invited_user_id: UserID
    encrypted_claim: bytes


class APIV1UserCancelInvitationReq(Req, frozen=True, tag="user_cancel_invitation"):
    user_id: UserID


class APIV1DeviceInviteReq(Req, frozen=True, tag="device_invite"):
    invited_device_name: DeviceName


class APIV1DeviceGetInvitationCreatorReq(Req, frozen=True, tag="device_get_invitation_creator"):
    invited_device_id: DeviceID


class APIV1DeviceClaimReq(Req, frozen=True, tag="device_claim"):
    invited_device_id: DeviceID
    encrypted_claim: bytes


class APIV1DeviceCancelInvitationReq(Req, frozen=True, tag="device_cancel_invitation"):
    invited_device_name: DeviceName
