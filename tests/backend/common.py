"""Helpers shared by the command tests: raw websocket sessions (to watch replies and closes
frame by frame), certificate forging and small waiting utilities."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from nacl.public import PrivateKey
from nacl.signing import SigningKey
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from parsec_server.api import codec
from parsec_server.api.addr import BackendAddr
from parsec_server.api.certificates import (
    DeviceCertificate,
    RevokedUserCertificate,
    UserCertificate,
    sign_certificate,
)
from parsec_server.api.codec import DateTime
from parsec_server.api.crypto import sign
from parsec_server.api.handshake import (
    API_V1,
    API_V2,
    Answer,
    APIV1AdministrationAnswer,
    APIV1AnonymousAnswer,
    APIV1AuthenticatedAnswer,
    AuthenticatedAnswer,
    build_answer,
    challenge_decoder,
)
from parsec_server.api.ids import HumanHandle, UserProfile
from parsec_server.backend.events import Event, PingedEvent
from parsec_server.client.connection import BackendConnection
from parsec_server.client.device import LocalDevice
from parsec_server.client.organization import CommandFailed
from tests.fixtures.raw import raw_connect, recv_map
from tests.fixtures.servers import ADMINISTRATION_TOKEN, RunningServer

TIMEOUT = 10.0  # generous upper bound of every wait; tests normally finish far sooner
OMIT: Any = object()  # a request field left out


# Raw sessions


async def _session(addr: BackendAddr, build: Callable[[bytes], bytes]) -> ClientConnection:
    ws = await raw_connect(addr)
    raw = await ws.recv()
    assert isinstance(raw, bytes)
    challenge = challenge_decoder.decode(raw)
    await ws.send(build(challenge.challenge))
    result = await recv_map(ws)
    assert result == {"handshake": "result", "result": "ok"}, result
    return ws


async def authenticated_ws(
    device: LocalDevice, api_version: tuple[int, int] = API_V2
) -> ClientConnection:
    def build(challenge: bytes) -> bytes:
        cls = AuthenticatedAnswer if api_version[0] == 2 else APIV1AuthenticatedAnswer
        answer: Answer = cls(
            organization_id=device.organization_id,
            device_id=device.device_id,
            rvk=device.root_verify_key,
            answer=sign(device.signing_key, challenge),
        )
        return build_answer(api_version, answer)

    return await _session(device.backend_addr, build)


async def anonymous_ws(addr: BackendAddr, organization_id: str) -> ClientConnection:
    answer = APIV1AnonymousAnswer(organization_id=organization_id)
    return await _session(addr, lambda _: build_answer(API_V1, answer))


async def administration_ws(addr: BackendAddr) -> ClientConnection:
    answer = APIV1AdministrationAnswer(token=ADMINISTRATION_TOKEN)
    return await _session(addr, lambda _: build_answer(API_V1, answer))


async def send_cmd(ws: ClientConnection, cmd: str, **fields: Any) -> dict[str, Any]:
    await ws.send(codec.encode({"cmd": cmd, **fields}))
    return await recv_reply(ws)


async def recv_reply(ws: ClientConnection) -> dict[str, Any]:
    return await asyncio.wait_for(recv_map(ws), TIMEOUT)


async def assert_closed_without_reply(ws: ClientConnection) -> int | None:
    """The server closes `ws` without sending anything more; returns the close code
    (None when the TCP connection ended without a Close frame)."""
    try:
        extra = await asyncio.wait_for(ws.recv(), TIMEOUT)
    except ConnectionClosed:
        return ws.close_code
    raise AssertionError(f"expected the connection to close, got {extra!r}")


async def assert_still_open(ws: ClientConnection) -> None:
    assert await send_cmd(ws, "ping", ping="still there?") == {
        "status": "ok",
        "pong": "still there?",
    }


async def assert_server_serves(device: LocalDevice) -> None:
    """A brand new connection works (the server survived whatever the test did)."""
    async with await device.connect() as conn:
        assert await conn.cmd("ping", ping="alive") == {"status": "ok", "pong": "alive"}


# Events as the server dispatches them


def watch_events(server: RunningServer, predicate: Callable[[Event], bool]) -> asyncio.Event:
    """An asyncio.Event set once the server has dispatched an event matching `predicate`
    to its connections (our listener is registered after the connection registry, so
    when it runs every connection already got the event)."""
    seen = asyncio.Event()

    def listener(event: Event) -> None:
        if predicate(event):
            seen.set()

    server.app.event_bus.connect(listener)
    return seen


def pinged(ping: str) -> Callable[[Event], bool]:
    return lambda event: isinstance(event, PingedEvent) and event.ping == ping


async def wait_set(flag: asyncio.Event) -> None:
    await asyncio.wait_for(flag.wait(), TIMEOUT)


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll a condition that no event tells us about (e.g. a connection being forgotten)."""
    async with asyncio.timeout(TIMEOUT):
        while not condition():  # noqa: ASYNC110 (nothing to wait on but the state itself)
            await asyncio.sleep(0.01)


# Certificates


def now() -> DateTime:
    return DateTime.now()


@dataclass(frozen=True)
class NewUser:
    """Everything needed to create a user with its first device, as certificate structs
    (so tests can alter any field before signing) plus the keys of the new device."""

    author: str | None
    author_key: SigningKey
    user: UserCertificate
    device: DeviceCertificate
    signing_key: SigningKey
    private_key: PrivateKey

    @property
    def redacted_user(self) -> UserCertificate:
        return msgspec.structs.replace(self.user, human_handle=None)

    @property
    def redacted_device(self) -> DeviceCertificate:
        return msgspec.structs.replace(self.device, device_label=None)

    def signed(
        self,
        user: UserCertificate | None = None,
        device: DeviceCertificate | None = None,
        redacted_user: UserCertificate | None = None,
        redacted_device: DeviceCertificate | None = None,
        key: SigningKey | None = None,
    ) -> dict[str, bytes]:
        """The four certificates of user_create/organization_bootstrap, signed by the
        author key (or `key`)."""
        k = key or self.author_key
        return {
            "user_certificate": sign_certificate(user or self.user, k),
            "device_certificate": sign_certificate(device or self.device, k),
            "redacted_user_certificate": sign_certificate(redacted_user or self.redacted_user, k),
            "redacted_device_certificate": sign_certificate(
                redacted_device or self.redacted_device, k
            ),
        }

    def request(self, base: dict[str, Any] | None = None, /, **overrides: Any) -> dict[str, Any]:
        """`base` plus the four certificates as request fields; an override is a struct
        (signed with the author key), any other value sent as is, or OMIT."""
        fields: dict[str, Any] = {**(base or {}), **self.signed()}
        for name, value in overrides.items():
            if value is OMIT:
                fields.pop(name, None)
            elif isinstance(value, UserCertificate | DeviceCertificate):
                fields[name] = sign_certificate(value, self.author_key)
            else:
                fields[name] = value
        return fields

    def local_device(self, author: LocalDevice) -> LocalDevice:
        """The new device, in the organization of `author`."""
        return LocalDevice(
            backend_addr=author.backend_addr,
            organization_id=author.organization_id,
            device_id=self.device.device_id,
            device_label=self.device.device_label,
            human_handle=self.user.human_handle,
            profile=self.user.effective_profile,
            signing_key=self.signing_key,
            private_key=self.private_key,
            root_verify_key=author.root_verify_key,
        )


def new_user(
    author: str | None,
    author_key: SigningKey,
    user_id: str,
    device_name: str = "dev1",
    human_handle: HumanHandle | None = None,
    device_label: str | None = None,
    profile: UserProfile = UserProfile.STANDARD,
    timestamp: DateTime | None = None,
) -> NewUser:
    timestamp = timestamp or now()
    signing_key = SigningKey.generate()
    private_key = PrivateKey.generate()
    user = UserCertificate(
        author=author,
        timestamp=timestamp,
        user_id=user_id,
        public_key=bytes(private_key.public_key),
        is_admin=profile is UserProfile.ADMIN,
        human_handle=human_handle,
        profile=profile,
    )
    device = DeviceCertificate(
        author=author,
        timestamp=timestamp,
        device_id=f"{user_id}@{device_name}",
        verify_key=bytes(signing_key.verify_key),
        device_label=device_label,
    )
    return NewUser(author, author_key, user, device, signing_key, private_key)


def new_user_by(author: LocalDevice, user_id: str, **kwargs: Any) -> NewUser:
    return new_user(author.device_id, author.signing_key, user_id, **kwargs)


async def create_user_by(
    conn: BackendConnection, author: LocalDevice, user_id: str, **kwargs: Any
) -> tuple[LocalDevice, dict[str, bytes]]:
    """Create a user through `conn`; returns its first device and the certificates sent."""
    nu = new_user_by(author, user_id, **kwargs)
    certificates = nu.signed()
    reply = await conn.cmd("user_create", **certificates)
    if reply != {"status": "ok"}:
        raise CommandFailed(reply)
    return nu.local_device(author), certificates


def device_certificate(
    author: LocalDevice,
    device_id: str,
    device_label: str | None = None,
    timestamp: DateTime | None = None,
    verify_key: bytes | None = None,
) -> DeviceCertificate:
    return DeviceCertificate(
        author=author.device_id,
        timestamp=timestamp or now(),
        device_id=device_id,
        verify_key=verify_key or bytes(SigningKey.generate().verify_key),
        device_label=device_label,
    )


def revocation(author: LocalDevice, user_id: str, timestamp: DateTime | None = None) -> bytes:
    return sign_certificate(
        RevokedUserCertificate(
            author=author.device_id, timestamp=timestamp or now(), user_id=user_id
        ),
        author.signing_key,
    )


async def revoke(conn: BackendConnection, author: LocalDevice, user_id: str) -> bytes:
    certificate = revocation(author, user_id)
    assert await conn.cmd("user_revoke", revoked_user_certificate=certificate) == {"status": "ok"}
    return certificate
