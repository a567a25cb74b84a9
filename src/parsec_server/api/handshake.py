"""Handshake messages (see protocol/20-handshake.md), shared by server and client."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

import msgspec

from parsec_server.api import codec
from parsec_server.api.codec import ID
from parsec_server.api.ids import DeviceID, InvitationType, OrganizationID, VerifyKeyBytes

API_V2 = (2, 0)
API_V1 = (1, 2)
SUPPORTED_API_VERSIONS = (API_V2, API_V1)

ApiVersion = tuple[Annotated[int, msgspec.Meta(ge=0)], Annotated[int, msgspec.Meta(ge=0)]]


class HandshakeResult(StrEnum):
    OK = "ok"
    BAD_PROTOCOL = "bad_protocol"
    BAD_IDENTITY = "bad_identity"
    ORGANIZATION_EXPIRED = "organization_expired"
    RVK_MISMATCH = "rvk_mismatch"
    REVOKED_DEVICE = "revoked_device"
    BAD_ADMIN_TOKEN = "bad_admin_token"


DEFAULT_HELP = {
    HandshakeResult.BAD_IDENTITY: "Invalid handshake information",
    HandshakeResult.ORGANIZATION_EXPIRED: "Trial organization has expired",
    HandshakeResult.RVK_MISMATCH: (
        "Root verify key for organization differs between client and server"
    ),
    HandshakeResult.REVOKED_DEVICE: "Device has been revoked",
    HandshakeResult.BAD_ADMIN_TOKEN: "Invalid administration token",
}
HELP_INVITATION_NOT_FOUND = "Invalid handshake: Invitation not found"
HELP_INVITATION_DELETED = "Invalid handshake: Invitation already deleted"


class Challenge(msgspec.Struct, frozen=True):
    challenge: bytes
    supported_api_versions: list[ApiVersion]
    handshake: Literal["challenge"] = "challenge"


class AnswerProbe(msgspec.Struct, frozen=True):
    """First pass over an answer: only what selects the schema of the second pass."""

    handshake: Literal["answer"]
    client_api_version: ApiVersion


class AuthenticatedAnswer(msgspec.Struct, frozen=True, tag_field="type", tag="AUTHENTICATED"):
    organization_id: OrganizationID
    device_id: DeviceID
    rvk: VerifyKeyBytes
    answer: bytes


class InvitedAnswer(msgspec.Struct, frozen=True, tag_field="type", tag="INVITED"):
    organization_id: OrganizationID
    invitation_type: InvitationType
    token: ID


class APIV1AuthenticatedAnswer(msgspec.Struct, frozen=True, tag_field="type", tag="authenticated"):
    organization_id: OrganizationID
    device_id: DeviceID
    rvk: VerifyKeyBytes
    answer: bytes


class APIV1AnonymousAnswer(msgspec.Struct, frozen=True, tag_field="type", tag="anonymous"):
    organization_id: OrganizationID
    rvk: VerifyKeyBytes | None = None


class APIV1AdministrationAnswer(
    msgspec.Struct, frozen=True, tag_field="type", tag="administration"
):
    token: str


APIV2Answer = AuthenticatedAnswer | InvitedAnswer
APIV1Answer = APIV1AuthenticatedAnswer | APIV1AnonymousAnswer | APIV1AdministrationAnswer
Answer = APIV2Answer | APIV1Answer

challenge_decoder = codec.decoder(Challenge)
probe_decoder = codec.decoder(AnswerProbe)
v2_answer_decoder: msgspec.msgpack.Decoder[APIV2Answer] = msgspec.msgpack.Decoder(
    APIV2Answer, ext_hook=codec.ext_hook
)
v1_answer_decoder: msgspec.msgpack.Decoder[APIV1Answer] = msgspec.msgpack.Decoder(
    APIV1Answer, ext_hook=codec.ext_hook
)


def build_answer(client_api_version: tuple[int, int], answer: Answer) -> bytes:
    """Client side: the answer frame (the `type` tag comes from the struct)."""
    fields = msgspec.structs.asdict(answer)
    fields["type"] = answer.__struct_config__.tag
    fields["handshake"] = "answer"
    fields["client_api_version"] = list(client_api_version)
    return codec.encode(fields)


def result_frame(result: HandshakeResult, help: str | None = None) -> bytes:
    if result is HandshakeResult.OK:
        return codec.encode({"handshake": "result", "result": "ok"})
    return codec.encode(
        {"handshake": "result", "result": result.value, "help": help or DEFAULT_HELP[result]}
    )


def challenge_frame(challenge: bytes) -> bytes:
    return codec.encode(
        Challenge(
            challenge=challenge,
            supported_api_versions=[list(v) for v in SUPPORTED_API_VERSIONS],  # type: ignore[misc]
        )
    )
