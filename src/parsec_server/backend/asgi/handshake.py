"""Server side of the handshake (protocol/20-handshake.md): who is this connection?

Every refusal is an audit line (docs/audit-log.md): `handshake.refused` with a reason
(fixed words, below), or `administration.token_refused`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from parsec_server.api.codec import CodecError, DateTime
from parsec_server.api.crypto import CryptoError, secrets_equal, verify_signed
from parsec_server.api.handshake import (
    Answer,
    AnswerProbe,
    APIV1AdministrationAnswer,
    APIV1AnonymousAnswer,
    APIV1AuthenticatedAnswer,
    AuthenticatedAnswer,
    HandshakeResult,
    InvitedAnswer,
    probe_decoder,
    result_frame,
    v1_answer_decoder,
    v2_answer_decoder,
)
from parsec_server.api.ids import user_id_of
from parsec_server.backend.asgi.dispatch import check_message, field_names
from parsec_server.backend.audit import NO_TARGET, REFUSED, Action, Actor, AuditLog, Target
from parsec_server.backend.client_context import (
    AdministrationClientContext,
    AnonymousClientContext,
    AuthenticatedClientContext,
    ClientContext,
    HandshakeRefusal,
)
from parsec_server.backend.events import OrganizationExpiredEvent

if TYPE_CHECKING:
    from parsec_server.backend.app import BackendApp


# Reasons of refusals (besides those of `HandshakeRefusal`s from the domain).
UNDECODABLE_ANSWER = "undecodable_answer"
UNSUPPORTED_API_VERSION = "unsupported_api_version"
INVALID_MESSAGE_FORMAT = "invalid_message_format"  # a text frame
UNKNOWN_DEVICE = "unknown_device"
UNKNOWN_ORGANIZATION = "unknown_organization"
ROOT_VERIFY_KEY_MISMATCH = "root_verify_key_mismatch"
ORGANIZATION_EXPIRED = "organization_expired"
REVOKED_DEVICE = "revoked_device"
FROZEN_USER = "frozen_user"
BAD_SIGNATURE = "bad_signature"
BAD_CHALLENGE = "bad_challenge"
BAD_ADMINISTRATION_TOKEN = "bad_administration_token"


@dataclass(frozen=True, slots=True)
class HandshakeOutcome:
    """`client` is set when the result is ok; `frame` is the result message to send. A
    refusal has its `reason` and the identity the peer claimed (`claimed`)."""

    frame: bytes
    client: ClientContext | None = None
    result: HandshakeResult = HandshakeResult.OK
    reason: str | None = None
    claimed: Target = NO_TARGET


def _failed(
    result: HandshakeResult, reason: str, claimed: Target = NO_TARGET, help: str | None = None
) -> HandshakeOutcome:
    return HandshakeOutcome(result_frame(result, help), None, result, reason, claimed)


def record_refusal(audit: AuditLog, peer_address: str | None, outcome: HandshakeOutcome) -> None:
    """The audit line of a refused handshake."""
    if outcome.result is HandshakeResult.BAD_ADMIN_TOKEN:
        action = Action.ADMINISTRATION_TOKEN_REFUSED
    else:
        action = Action.HANDSHAKE_REFUSED
    audit.record(
        action,
        Actor.peer(peer_address),
        outcome.claimed,
        REFUSED,
        outcome.reason,
        result=outcome.result.value,
    )


def _errors_text(exc: Exception) -> str:
    return f"{{'_schema': [{str(exc)!r}]}}"


def parse_answer(raw: bytes) -> tuple[Answer, int] | HandshakeOutcome:
    """`raw` has passed `codec.check`."""
    try:
        probe = probe_decoder.decode(raw)
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:
        return _failed(HandshakeResult.BAD_PROTOCOL, UNDECODABLE_ANSWER, help=_errors_text(exc))
    major, minor = probe.client_api_version
    if major not in (1, 2):
        return _failed(
            HandshakeResult.BAD_PROTOCOL,
            UNSUPPORTED_API_VERSION,
            help=f"No overlap between client API versions {{{major}.{minor}}} and backend API "
            "versions {2.0, 1.2}",
        )
    decoder = v2_answer_decoder if major == 2 else v1_answer_decoder
    try:
        return decoder.decode(raw), major
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:
        return _failed(HandshakeResult.BAD_PROTOCOL, UNDECODABLE_ANSWER, help=_errors_text(exc))


def _answer_fields(raw: bytes) -> tuple[bytes, ...]:
    return ANSWER_FIELDS


ANSWER_FIELDS = field_names(
    AnswerProbe,
    AuthenticatedAnswer,
    InvitedAnswer,
    APIV1AuthenticatedAnswer,
    APIV1AnonymousAnswer,
    APIV1AdministrationAnswer,
)


async def do_handshake(
    app: BackendApp, challenge: bytes, raw: bytes, peer_address: str | None = None
) -> HandshakeOutcome:
    """Who the peer is; a refusal is recorded in the audit log."""
    outcome = await _identify(app, challenge, raw, peer_address)
    if outcome.client is None:
        record_refusal(app.audit, peer_address, outcome)
    return outcome


async def _identify(
    app: BackendApp, challenge: bytes, raw: bytes, peer_address: str | None
) -> HandshakeOutcome:
    # The whole answer is checked as any request is (limits, UTF-8, ext payloads).
    try:
        raw = await check_message(raw, _answer_fields, app.message_check_threads)
    except CodecError as exc:
        return _failed(HandshakeResult.BAD_PROTOCOL, UNDECODABLE_ANSWER, help=_errors_text(exc))
    parsed = parse_answer(raw)
    if isinstance(parsed, HandshakeOutcome):
        return parsed
    answer, major = parsed
    match answer:
        case AuthenticatedAnswer() | APIV1AuthenticatedAnswer():
            return await _authenticated(app, challenge, answer, major, peer_address)
        case InvitedAnswer():
            claimer = await app.invite.handshake(answer)
            if isinstance(claimer, HandshakeRefusal):
                claimed = Target(organization=answer.organization_id)
                return _failed(claimer.result, claimer.reason, claimed, claimer.help)
            return HandshakeOutcome(result_frame(HandshakeResult.OK), claimer)
        case APIV1AnonymousAnswer():
            return await _anonymous(app, answer)
        case APIV1AdministrationAnswer():
            if not secrets_equal(answer.token, app.config.administration_token):
                return _failed(HandshakeResult.BAD_ADMIN_TOKEN, BAD_ADMINISTRATION_TOKEN)
            client = AdministrationClientContext(peer_address=peer_address)
            return HandshakeOutcome(result_frame(HandshakeResult.OK), client)
    raise AssertionError(answer)


async def _authenticated(
    app: BackendApp,
    challenge: bytes,
    answer: AuthenticatedAnswer | APIV1AuthenticatedAnswer,
    major: int,
    peer_address: str | None,
) -> HandshakeOutcome:
    claimed = Target(
        organization=answer.organization_id,
        user=user_id_of(answer.device_id),
        device=answer.device_id,
    )
    identity = await app.user.get_identity(answer.organization_id, answer.device_id)
    if identity is None:
        return _failed(HandshakeResult.BAD_IDENTITY, UNKNOWN_DEVICE, claimed)
    organization, user, device = identity
    if organization.root_verify_key != answer.rvk:
        return _failed(HandshakeResult.RVK_MISMATCH, ROOT_VERIFY_KEY_MISMATCH, claimed)
    now = DateTime.now()
    if organization.is_expired(now):
        await app.event_bus.send(OrganizationExpiredEvent(organization_id=answer.organization_id))
        return _failed(HandshakeResult.ORGANIZATION_EXPIRED, ORGANIZATION_EXPIRED, claimed)
    if user.is_revoked(now):
        return _failed(HandshakeResult.REVOKED_DEVICE, REVOKED_DEVICE, claimed)
    # A frozen user gets the revoked user's refusal: the 2.0.0 client knows it.
    if user.frozen:
        return _failed(HandshakeResult.REVOKED_DEVICE, FROZEN_USER, claimed)
    try:
        returned = verify_signed(device.verify_key, answer.answer)
    except CryptoError:
        return _failed(
            HandshakeResult.BAD_PROTOCOL, BAD_SIGNATURE, claimed, "Invalid answer signature"
        )
    if returned != challenge:
        return _failed(
            HandshakeResult.BAD_PROTOCOL, BAD_CHALLENGE, claimed, "Invalid returned challenge"
        )
    client = AuthenticatedClientContext(
        organization_id=answer.organization_id,
        device_id=answer.device_id,
        user_id=user_id_of(answer.device_id),
        profile=user.profile,
        human_handle=user.human_handle,
        verify_key=device.verify_key,
        api_major=major,
        peer_address=peer_address,
    )
    return HandshakeOutcome(result_frame(HandshakeResult.OK), client)


async def _anonymous(app: BackendApp, answer: APIV1AnonymousAnswer) -> HandshakeOutcome:
    claimed = Target(organization=answer.organization_id)
    organization = await app.organization.get(answer.organization_id)
    if organization is None:
        if not app.config.spontaneous_organization_bootstrap:
            return _failed(HandshakeResult.BAD_IDENTITY, UNKNOWN_ORGANIZATION, claimed)
        await app.organization.create_if_missing(answer.organization_id, "")
        organization = await app.organization.get(answer.organization_id)
        assert organization is not None
    if organization.is_expired(DateTime.now()):
        await app.event_bus.send(OrganizationExpiredEvent(organization_id=answer.organization_id))
        return _failed(HandshakeResult.ORGANIZATION_EXPIRED, ORGANIZATION_EXPIRED, claimed)
    if answer.rvk is not None and organization.root_verify_key != answer.rvk:
        return _failed(HandshakeResult.RVK_MISMATCH, ROOT_VERIFY_KEY_MISMATCH, claimed)
    client = AnonymousClientContext(organization_id=answer.organization_id)
    return HandshakeOutcome(result_frame(HandshakeResult.OK), client)
