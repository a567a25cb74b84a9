"""The greeter side of the API 2 invitation rendezvous (protocol/30 §7.8).

One object per step; each `await`ed method runs the step's commands and returns the next
object:

    GreeterInitial ----wait_peer()-------> GreeterInProgress1  (greeter_sas: tell the claimer)
    GreeterInProgress1 --wait_peer_trust()-> GreeterInProgress2  (claimer_sas + 3 candidates)
    GreeterInProgress2 --signify_trust()---> GreeterInProgress3
    GreeterInProgress3 --get_claim_requests()-> UserGreeterInProgress4 | DeviceGreeterInProgress4
    UserGreeterInProgress4.create_new_user(...) / DeviceGreeterInProgress4.create_new_device(...)

`UserGreeterInitial` and `DeviceGreeterInitial` fix the kind of step 4. Between steps 2 and
3 the human compares the code the claimer reads to them with `claimer_sas` (the UI offers
`claimer_sas_choices()`); on a mismatch, do not call `signify_trust()`: restart instead.
An `InvitePeerResetError` at any step means the claimer restarted: call `wait_peer()` again
on the same `GreeterInitial` (which also resets the claimer when it restarts first).
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from nacl.public import PrivateKey, PublicKey
from nacl.signing import VerifyKey

from parsec_server.api.codec import ID, DateTime
from parsec_server.api.ids import HumanHandle, InvitationType, UserProfile, check_human_handle
from parsec_server.client.certificates import device_certificates, user_certificates
from parsec_server.client.connection import BackendConnection
from parsec_server.client.device import LocalDevice
from parsec_server.client.invite_common import (
    InvalidPeerDataError,
    InvitationNotFoundError,
    InviteCommandFailed,
    InviteError,
    bytes_field,
    check_reply,
)
from parsec_server.client.invite_crypto import (
    compute_sas_codes,
    hash_nonce,
    new_nonce,
    sas_code_candidates,
    shared_secret_key,
)
from parsec_server.client.invite_payloads import (
    InvalidPayload,
    InviteDeviceConfirmation,
    InviteDeviceData,
    InvitePayload,
    InviteUserConfirmation,
    InviteUserData,
    decrypt_payload,
    encrypt_payload,
)

_KEY_SIZE = 32
P = TypeVar("P", bound=InvitePayload)


@dataclass(frozen=True)
class _Link:
    """The greeter's authenticated connection and the invitation it greets."""

    conn: BackendConnection
    token: ID

    async def step(self, step: str, cmd: str, **fields: Any) -> dict[str, Any]:
        return check_reply(await self.conn.cmd(cmd, token=self.token, **fields), step)


@dataclass(frozen=True)
class _SecureLink:
    link: _Link
    shared_key: bytes = field(repr=False)


R = TypeVar("R")
_ReadRequest = Callable[[_SecureLink, bytes], R]


@dataclass(frozen=True)
class GreeterInitial(Generic[R]):
    invitation_type: ClassVar[InvitationType]
    _link: _Link
    _read_request: _ReadRequest[R] = field(repr=False)

    @property
    def token(self) -> ID:
        return self._link.token

    async def wait_peer(self) -> GreeterInProgress1[R]:
        """Steps 1 and 2: wait for the claimer, exchange keys and nonces."""
        link = self._link
        private_key = PrivateKey.generate()
        rep = await link.step(
            "step 1", "invite_1_greeter_wait_peer", greeter_public_key=bytes(private_key.public_key)
        )
        claimer_public_key = bytes_field(rep, "claimer_public_key", "step 1", _KEY_SIZE)
        shared_key = shared_secret_key(private_key, claimer_public_key)
        rep = await link.step("step 2a", "invite_2a_greeter_get_hashed_nonce")
        claimer_hashed_nonce = bytes_field(rep, "claimer_hashed_nonce", "step 2a")
        greeter_nonce = new_nonce()
        rep = await link.step(
            "step 2b", "invite_2b_greeter_send_nonce", greeter_nonce=greeter_nonce
        )
        claimer_nonce = bytes_field(rep, "claimer_nonce", "step 2b")
        # The claimer committed to its nonce before seeing ours: a mismatch means the
        # claimer (or someone in the middle) tried to choose the codes.
        if not hmac.compare_digest(hash_nonce(claimer_nonce), claimer_hashed_nonce):
            raise InvalidPeerDataError("The claimer's nonce does not match its hash")
        claimer_sas, greeter_sas = compute_sas_codes(claimer_nonce, greeter_nonce, shared_key)
        return GreeterInProgress1(
            greeter_sas, claimer_sas, _SecureLink(link, shared_key), self._read_request
        )


@dataclass(frozen=True)
class UserGreeterInitial(GreeterInitial["UserGreeterInProgress4"]):
    invitation_type: ClassVar[InvitationType] = InvitationType.USER


@dataclass(frozen=True)
class DeviceGreeterInitial(GreeterInitial["DeviceGreeterInProgress4"]):
    invitation_type: ClassVar[InvitationType] = InvitationType.DEVICE


@dataclass(frozen=True)
class GreeterInProgress1(Generic[R]):
    greeter_sas: str
    """The code to give the claimer."""
    _claimer_sas: str
    _secure: _SecureLink = field(repr=False)
    _read_request: _ReadRequest[R] = field(repr=False)

    async def wait_peer_trust(self) -> GreeterInProgress2[R]:
        """Step 3a: wait until the claimer has confirmed our code."""
        await self._secure.link.step("step 3a", "invite_3a_greeter_wait_peer_trust")
        return GreeterInProgress2(
            self._claimer_sas, self.greeter_sas, self._secure, self._read_request
        )


@dataclass(frozen=True)
class GreeterInProgress2(Generic[R]):
    claimer_sas: str
    """The code the claimer must give us (to compare with the human's choice)."""
    greeter_sas: str
    _secure: _SecureLink = field(repr=False)
    _read_request: _ReadRequest[R] = field(repr=False)

    def claimer_sas_choices(self, size: int = 3) -> list[str]:
        """`claimer_sas` among `size - 1` random codes, shuffled, for the human to pick."""
        return sas_code_candidates(self.claimer_sas, size)

    async def signify_trust(self) -> GreeterInProgress3[R]:
        """Step 3b: tell the claimer its code was confirmed."""
        await self._secure.link.step("step 3b", "invite_3b_greeter_signify_trust")
        return GreeterInProgress3(self._secure, self._read_request)


@dataclass(frozen=True)
class GreeterInProgress3(Generic[R]):
    _secure: _SecureLink = field(repr=False)
    _read_request: _ReadRequest[R] = field(repr=False)

    async def get_claim_requests(self) -> R:
        """Step 4, first exchange: receive the claimer's request."""
        rep = await self._secure.link.step(
            "step 4 (data exchange)", "invite_4_greeter_communicate", payload=b""
        )
        payload = bytes_field(rep, "payload", "step 4 (data exchange)")
        return self._read_request(self._secure, payload)


async def _send_confirmation(secure: _SecureLink, confirmation: bytes) -> None:
    """Step 4, second exchange, then close the invitation (reply not checked, as the
    reference: the claimer already has what it needs)."""
    link = secure.link
    await link.step(
        "step 4 (confirmation exchange)", "invite_4_greeter_communicate", payload=confirmation
    )
    await link.conn.cmd("invite_delete", token=link.token, reason="FINISHED")


def _decrypt_request(cls: type[P], secure: _SecureLink, payload: bytes) -> P:
    try:
        return decrypt_payload(cls, payload, secure.shared_key)
    except InvalidPayload as exc:
        raise InvalidPeerDataError(str(exc)) from exc


def _random_name() -> str:
    """User ids and device names are random, as the 2.0.0 client makes them."""
    return uuid.uuid4().hex


def _check_created(reply: dict[str, Any], step: str) -> None:
    if reply.get("status") != "ok":
        raise InviteCommandFailed(step, reply)


@dataclass(frozen=True)
class UserGreeterInProgress4:
    requested_human_handle: HumanHandle | None
    requested_device_label: str | None
    _public_key: bytes = field(repr=False)
    _verify_key: bytes = field(repr=False)
    _secure: _SecureLink = field(repr=False)

    @classmethod
    def _from_request(cls, secure: _SecureLink, payload: bytes) -> UserGreeterInProgress4:
        data = _decrypt_request(InviteUserData, secure, payload)
        return cls(
            data.requested_human_handle,
            data.requested_device_label,
            data.public_key,
            data.verify_key,
            secure,
        )

    async def create_new_user(
        self,
        author: LocalDevice,
        human_handle: HumanHandle | None,
        device_label: str | None,
        profile: UserProfile,
        user_id: str | None = None,
        device_name: str | None = None,
    ) -> str:
        """`user_create` with what the greeter granted, then the confirmation; returns
        the new device id."""
        if human_handle is not None:
            try:
                check_human_handle(human_handle)
            except ValueError as exc:
                raise InviteError(f"Invalid human handle: {human_handle!r}") from exc
        user_id = user_id or _random_name()
        device_id = f"{user_id}@{device_name or _random_name()}"
        now = DateTime.now()
        user, redacted_user = user_certificates(
            author.signing_key,
            author.device_id,
            now,
            user_id,
            human_handle,
            PublicKey(self._public_key),
            profile,
        )
        device, redacted_device = device_certificates(
            author.signing_key,
            author.device_id,
            now,
            device_id,
            device_label,
            VerifyKey(self._verify_key),
        )
        reply = await self._secure.link.conn.cmd(
            "user_create",
            user_certificate=user,
            device_certificate=device,
            redacted_user_certificate=redacted_user,
            redacted_device_certificate=redacted_device,
        )
        _check_created(reply, "user creation")
        confirmation = InviteUserConfirmation(
            device_id=device_id,
            profile=profile,
            root_verify_key=author.root_verify_key,
            device_label=device_label,
            human_handle=human_handle,
        )
        await _send_confirmation(
            self._secure, encrypt_payload(confirmation, self._secure.shared_key)
        )
        return device_id


@dataclass(frozen=True)
class DeviceGreeterInProgress4:
    requested_device_label: str | None
    _verify_key: bytes = field(repr=False)
    _secure: _SecureLink = field(repr=False)

    @classmethod
    def _from_request(cls, secure: _SecureLink, payload: bytes) -> DeviceGreeterInProgress4:
        data = _decrypt_request(InviteDeviceData, secure, payload)
        return cls(data.requested_device_label, data.verify_key, secure)

    async def create_new_device(
        self, author: LocalDevice, device_label: str | None, device_name: str | None = None
    ) -> str:
        """`device_create` for the author's user, then the confirmation (which hands the
        user's private key and user manifest access over); returns the new device id."""
        device_id = f"{author.user_id}@{device_name or _random_name()}"
        device, redacted_device = device_certificates(
            author.signing_key,
            author.device_id,
            DateTime.now(),
            device_id,
            device_label,
            VerifyKey(self._verify_key),
        )
        reply = await self._secure.link.conn.cmd(
            "device_create", device_certificate=device, redacted_device_certificate=redacted_device
        )
        _check_created(reply, "device creation")
        confirmation = InviteDeviceConfirmation(
            device_id=device_id,
            profile=author.profile,
            private_key=bytes(author.private_key),
            user_manifest_id=author.user_manifest_id,
            user_manifest_key=author.user_manifest_key,
            root_verify_key=author.root_verify_key,
            device_label=device_label,
            human_handle=author.human_handle,
        )
        await _send_confirmation(
            self._secure, encrypt_payload(confirmation, self._secure.shared_key)
        )
        return device_id


def user_greeter(conn: BackendConnection, token: ID) -> UserGreeterInitial:
    return UserGreeterInitial(_Link(conn, token), UserGreeterInProgress4._from_request)


def device_greeter(conn: BackendConnection, token: ID) -> DeviceGreeterInitial:
    return DeviceGreeterInitial(_Link(conn, token), DeviceGreeterInProgress4._from_request)


async def greeter_for_invitation(
    conn: BackendConnection, token: ID
) -> UserGreeterInitial | DeviceGreeterInitial:
    """Look the invitation up among ours (`invite_list`), as the reference CLI does before
    greeting; `InvitationNotFoundError` if it is not there (unknown, deleted, or of
    another greeter)."""
    reply = check_reply(await conn.cmd("invite_list"), "invitation listing")
    for invitation in reply.get("invitations", []):
        if invitation.get("token") == token:
            if invitation.get("type") == InvitationType.USER.value:
                return user_greeter(conn, token)
            return device_greeter(conn, token)
    raise InvitationNotFoundError()
