"""The claimer side of the API 2 invitation rendezvous (protocol/30 §7.8).

    connect_as_claimer(addr) -> an INVITED connection
    claimer_retrieve_info(conn, addr) -> UserClaimerInitial | DeviceClaimerInitial
    ClaimerInitial ----wait_peer()--------> ClaimerInProgress1 (greeter_sas + 3 candidates)
    ClaimerInProgress1 --signify_trust()----> ClaimerInProgress2 (claimer_sas: tell the greeter)
    ClaimerInProgress2 --wait_peer_trust()--> UserClaimerInProgress3 | DeviceClaimerInProgress3
    UserClaimerInProgress3.claim_user(...) / DeviceClaimerInProgress3.claim_device(...)
        -> the new LocalDevice (to be saved by the caller)

Between steps 1 and 2 the human compares the code the greeter reads to them with
`greeter_sas` (the UI offers `greeter_sas_choices()`); on a mismatch, do not call
`signify_trust()`: restart instead. An `InvitePeerResetError` means the greeter restarted:
call `wait_peer()` again on the same `ClaimerInitial`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from parsec_server.api.addr import BackendInvitationAddr
from parsec_server.api.ids import HumanHandle, InvitationType, check_human_handle
from parsec_server.client.connection import BackendConnection, InvitedAuth
from parsec_server.client.device import LocalDevice
from parsec_server.client.invite_common import (
    InvalidPeerDataError,
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


async def connect_as_claimer(addr: BackendInvitationAddr) -> BackendConnection:
    """An INVITED connection; `HandshakeRefused` (`bad_identity`) when the invitation is
    unknown or deleted."""
    auth = InvitedAuth(addr.organization_id, addr.action.invitation_type, addr.token)
    return await BackendConnection.connect(addr.backend_addr, auth)


@dataclass(frozen=True)
class _Link:
    conn: BackendConnection
    addr: BackendInvitationAddr

    async def step(self, step: str, cmd: str, **fields: Any) -> dict[str, Any]:
        return check_reply(await self.conn.cmd(cmd, **fields), step)


@dataclass(frozen=True)
class _SecureLink:
    link: _Link
    shared_key: bytes = field(repr=False)


S = TypeVar("S")
_MakeLastStep = Callable[[_SecureLink], S]


@dataclass(frozen=True)
class ClaimerInitial(Generic[S]):
    invitation_type: ClassVar[InvitationType]
    greeter_user_id: str
    greeter_human_handle: HumanHandle | None
    _link: _Link = field(repr=False)
    _make_last_step: _MakeLastStep[S] = field(repr=False)

    async def wait_peer(self) -> ClaimerInProgress1[S]:
        """Steps 1 and 2: wait for the greeter, exchange keys and nonces."""
        link = self._link
        private_key = PrivateKey.generate()
        rep = await link.step(
            "step 1", "invite_1_claimer_wait_peer", claimer_public_key=bytes(private_key.public_key)
        )
        greeter_public_key = bytes_field(rep, "greeter_public_key", "step 1", _KEY_SIZE)
        shared_key = shared_secret_key(private_key, greeter_public_key)
        claimer_nonce = new_nonce()
        rep = await link.step(
            "step 2a",
            "invite_2a_claimer_send_hashed_nonce",
            claimer_hashed_nonce=hash_nonce(claimer_nonce),
        )
        greeter_nonce = bytes_field(rep, "greeter_nonce", "step 2a")
        claimer_sas, greeter_sas = compute_sas_codes(claimer_nonce, greeter_nonce, shared_key)
        await link.step("step 2b", "invite_2b_claimer_send_nonce", claimer_nonce=claimer_nonce)
        return ClaimerInProgress1(
            greeter_sas, claimer_sas, _SecureLink(link, shared_key), self._make_last_step
        )


@dataclass(frozen=True)
class UserClaimerInitial(ClaimerInitial["UserClaimerInProgress3"]):
    invitation_type: ClassVar[InvitationType] = InvitationType.USER
    claimer_email: str = ""


@dataclass(frozen=True)
class DeviceClaimerInitial(ClaimerInitial["DeviceClaimerInProgress3"]):
    invitation_type: ClassVar[InvitationType] = InvitationType.DEVICE


@dataclass(frozen=True)
class ClaimerInProgress1(Generic[S]):
    greeter_sas: str
    """The code the greeter must give us (to compare with the human's choice)."""
    _claimer_sas: str
    _secure: _SecureLink = field(repr=False)
    _make_last_step: _MakeLastStep[S] = field(repr=False)

    def greeter_sas_choices(self, size: int = 3) -> list[str]:
        """`greeter_sas` among `size - 1` random codes, shuffled, for the human to pick."""
        return sas_code_candidates(self.greeter_sas, size)

    async def signify_trust(self) -> ClaimerInProgress2[S]:
        """Step 3a: tell the greeter its code was confirmed."""
        await self._secure.link.step("step 3a", "invite_3a_claimer_signify_trust")
        return ClaimerInProgress2(self._claimer_sas, self._secure, self._make_last_step)


@dataclass(frozen=True)
class ClaimerInProgress2(Generic[S]):
    claimer_sas: str
    """The code to give the greeter."""
    _secure: _SecureLink = field(repr=False)
    _make_last_step: _MakeLastStep[S] = field(repr=False)

    async def wait_peer_trust(self) -> S:
        """Step 3b: wait until the greeter has confirmed our code."""
        await self._secure.link.step("step 3b", "invite_3b_claimer_wait_peer_trust")
        return self._make_last_step(self._secure)


async def _exchange(secure: _SecureLink, request: InvitePayload) -> bytes:
    """Step 4: send our request, then an empty payload to get the confirmation."""
    link = secure.link
    await link.step(
        "step 4 (data exchange)",
        "invite_4_claimer_communicate",
        payload=encrypt_payload(request, secure.shared_key),
    )
    rep = await link.step(
        "step 4 (confirmation exchange)", "invite_4_claimer_communicate", payload=b""
    )
    return bytes_field(rep, "payload", "step 4 (confirmation exchange)")


def _decrypt_confirmation(cls: type[P], secure: _SecureLink, payload: bytes) -> P:
    try:
        return decrypt_payload(cls, payload, secure.shared_key)
    except InvalidPayload as exc:
        raise InvalidPeerDataError(str(exc)) from exc


@dataclass(frozen=True)
class UserClaimerInProgress3:
    _secure: _SecureLink = field(repr=False)

    async def claim_user(
        self, requested_device_label: str | None, requested_human_handle: HumanHandle | None
    ) -> LocalDevice:
        """Send the new user's keys with the requested identity; the greeter decides the
        final one (and the profile)."""
        if requested_human_handle is not None:
            try:
                check_human_handle(requested_human_handle)
            except ValueError as exc:
                raise InviteError(f"Invalid human handle: {requested_human_handle!r}") from exc
        private_key = PrivateKey.generate()
        signing_key = SigningKey.generate()
        request = InviteUserData(
            public_key=bytes(private_key.public_key),
            verify_key=bytes(signing_key.verify_key),
            requested_device_label=requested_device_label,
            requested_human_handle=requested_human_handle,
        )
        payload = await _exchange(self._secure, request)
        confirmation = _decrypt_confirmation(InviteUserConfirmation, self._secure, payload)
        addr = self._secure.link.addr
        return LocalDevice(
            backend_addr=addr.backend_addr,
            organization_id=addr.organization_id,
            device_id=confirmation.device_id,
            device_label=confirmation.device_label,
            human_handle=confirmation.human_handle,
            profile=confirmation.profile,
            signing_key=signing_key,
            private_key=private_key,
            root_verify_key=confirmation.root_verify_key,
        )


@dataclass(frozen=True)
class DeviceClaimerInProgress3:
    _secure: _SecureLink = field(repr=False)

    async def claim_device(self, requested_device_label: str | None) -> LocalDevice:
        """Send the new device's verify key; receive the user's secrets."""
        signing_key = SigningKey.generate()
        request = InviteDeviceData(
            verify_key=bytes(signing_key.verify_key),
            requested_device_label=requested_device_label,
        )
        payload = await _exchange(self._secure, request)
        confirmation = _decrypt_confirmation(InviteDeviceConfirmation, self._secure, payload)
        addr = self._secure.link.addr
        return LocalDevice(
            backend_addr=addr.backend_addr,
            organization_id=addr.organization_id,
            device_id=confirmation.device_id,
            device_label=confirmation.device_label,
            human_handle=confirmation.human_handle,
            profile=confirmation.profile,
            signing_key=signing_key,
            private_key=PrivateKey(confirmation.private_key),
            root_verify_key=confirmation.root_verify_key,
            user_manifest_id=confirmation.user_manifest_id,
            user_manifest_key=confirmation.user_manifest_key,
        )


def _human_handle(value: Any) -> HumanHandle | None:
    if value is None:
        return None
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(part, str) for part in value)
    ):
        return (value[0], value[1])
    raise InvalidPeerDataError("Invalid greeter human handle in the invitation info")


async def claimer_retrieve_info(
    conn: BackendConnection, addr: BackendInvitationAddr
) -> UserClaimerInitial | DeviceClaimerInitial:
    """`invite_info`: who greets, and (USER) the email the invitation was sent to."""
    step = "invitation retrieval"
    reply = check_reply(await conn.cmd("invite_info"), step)
    greeter_user_id = reply.get("greeter_user_id")
    if not isinstance(greeter_user_id, str):
        raise InviteCommandFailed(step, reply)
    greeter_human_handle = _human_handle(reply.get("greeter_human_handle"))
    link = _Link(conn, addr)
    if reply.get("type") == InvitationType.USER.value:
        claimer_email = reply.get("claimer_email")
        if not isinstance(claimer_email, str):
            raise InviteCommandFailed(step, reply)
        return UserClaimerInitial(
            greeter_user_id,
            greeter_human_handle,
            link,
            UserClaimerInProgress3,
            claimer_email=claimer_email,
        )
    return DeviceClaimerInitial(
        greeter_user_id, greeter_human_handle, link, DeviceClaimerInProgress3
    )
