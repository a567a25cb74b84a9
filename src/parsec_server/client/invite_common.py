"""What both sides of the invitation rendezvous share: errors and reply checks.

Exceptions (all `InviteError`):

    InviteError
    +-- InvitePeerResetError        `invalid_state`: the peer restarted, restart from step 1
    +-- InvitationNotFoundError     `not_found`
    +-- InvitationAlreadyUsedError  `already_deleted`
    +-- InviteCommandFailed         any other non-ok reply (`reply` holds it)
    +-- InvalidPeerDataError        the peer sent something that does not check out

Connection failures stay `BackendConnectionError` (from `client.connection`).
"""

from __future__ import annotations

from typing import Any


class InviteError(Exception):
    """The invitation process failed."""


class InvitePeerResetError(InviteError):
    def __init__(self) -> None:
        super().__init__("The peer reset the invitation process")


class InvitationNotFoundError(InviteError):
    def __init__(self) -> None:
        super().__init__("Invitation not found")


class InvitationAlreadyUsedError(InviteError):
    def __init__(self) -> None:
        super().__init__("Invitation already used")


class InviteCommandFailed(InviteError):
    def __init__(self, step: str, reply: dict[str, Any]) -> None:
        reason = reply.get("reason")
        detail = f"{reply.get('status')}" + (f": {reason}" if reason else "")
        super().__init__(f"Server refused {step} ({detail})")
        self.step = step
        self.reply = reply


class InvalidPeerDataError(InviteError):
    pass


def check_reply(reply: dict[str, Any], step: str) -> dict[str, Any]:
    """`reply` when ok; else the matching exception."""
    match reply.get("status"):
        case "ok":
            return reply
        case "invalid_state":
            raise InvitePeerResetError()
        case "not_found":
            raise InvitationNotFoundError()
        case "already_deleted":
            raise InvitationAlreadyUsedError()
        case _:
            raise InviteCommandFailed(step, reply)


def bytes_field(reply: dict[str, Any], name: str, step: str, size: int | None = None) -> bytes:
    value = reply.get(name)
    if not isinstance(value, bytes) or (size is not None and len(value) != size):
        raise InviteCommandFailed(step, reply)
    return value
