"""Client side of the protocol: connect to a server, run a handshake, send commands.

Exceptions: every failure is a `BackendConnectionError` (server unreachable, TLS problem,
handshake refused, connection lost); lower layers' exceptions never leak out.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import msgspec
import websockets
from nacl.signing import SigningKey
from websockets.asyncio.client import ClientConnection, connect

from parsec_server.api import codec
from parsec_server.api.addr import BackendAddr
from parsec_server.api.codec import ID
from parsec_server.api.crypto import sign
from parsec_server.api.handshake import (
    API_V1,
    API_V2,
    Answer,
    APIV1AdministrationAnswer,
    APIV1AnonymousAnswer,
    APIV1AuthenticatedAnswer,
    AuthenticatedAnswer,
    InvitedAnswer,
    build_answer,
    challenge_decoder,
)
from parsec_server.api.ids import InvitationType


class BackendConnectionError(Exception):
    """The server could not be reached or the connection broke."""


class HandshakeRefused(BackendConnectionError):
    def __init__(self, result: str, help: str) -> None:
        super().__init__(help)
        self.result = result
        self.help = help


@dataclass(frozen=True, slots=True)
class AdministrationAuth:
    token: str


@dataclass(frozen=True, slots=True)
class AnonymousAuth:
    organization_id: str
    root_verify_key: bytes | None = None


@dataclass(frozen=True, slots=True)
class AuthenticatedAuth:
    organization_id: str
    device_id: str
    signing_key: SigningKey
    root_verify_key: bytes
    api_version: tuple[int, int] = API_V2


@dataclass(frozen=True, slots=True)
class InvitedAuth:
    organization_id: str
    invitation_type: InvitationType
    token: ID


Auth = AdministrationAuth | AnonymousAuth | AuthenticatedAuth | InvitedAuth


def _answer(auth: Auth, challenge: bytes) -> bytes:
    answer: Answer
    version = API_V2
    match auth:
        case AdministrationAuth(token=token):
            answer, version = APIV1AdministrationAnswer(token=token), API_V1
        case AnonymousAuth(organization_id=org, root_verify_key=rvk):
            answer, version = APIV1AnonymousAnswer(organization_id=org, rvk=rvk), API_V1
        case AuthenticatedAuth():
            signed = sign(auth.signing_key, challenge)
            version = auth.api_version
            cls = AuthenticatedAnswer if version[0] == 2 else APIV1AuthenticatedAnswer
            answer = cls(
                organization_id=auth.organization_id,
                device_id=auth.device_id,
                rvk=auth.root_verify_key,
                answer=signed,
            )
        case InvitedAuth():
            answer = InvitedAnswer(
                organization_id=auth.organization_id,
                invitation_type=auth.invitation_type,
                token=auth.token,
            )
    return build_answer(version, answer)


def ssl_context_for(addr: BackendAddr) -> ssl.SSLContext | None:
    """TLS unless `no_ssl=true`; trusted roots from `SSL_CAFILE` when set."""
    if not addr.use_ssl:
        return None
    cafile = os.environ.get("SSL_CAFILE")
    return ssl.create_default_context(cafile=cafile)


def _decode_map(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = codec.decode_any(raw)
    except codec.CodecError as exc:
        raise BackendConnectionError(f"invalid {what}: {exc}") from exc
    if not isinstance(value, dict):
        raise BackendConnectionError(f"{what} is not a map")
    return value


class BackendConnection:
    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        # One command at a time: a reply is the answer to the request sent just before.
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, addr: BackendAddr, auth: Auth) -> BackendConnection:
        scheme = "wss" if addr.use_ssl else "ws"
        url = f"{scheme}://{addr.hostname}:{addr.port}/ws"
        try:
            ws = await connect(
                url,
                ssl=ssl_context_for(addr),
                compression=None,
                max_size=None,
                ping_interval=None,
                open_timeout=30,
            )
        except (OSError, websockets.exceptions.WebSocketException, ssl.SSLError) as exc:
            raise BackendConnectionError(
                str(exc) or f"cannot connect to {addr.hostname}:{addr.port}"
            ) from exc
        connection = cls(ws)
        try:
            await connection._handshake(auth)
        except BaseException:
            await ws.close()
            raise
        return connection

    async def _handshake(self, auth: Auth) -> None:
        raw = await self._recv()
        try:
            challenge = challenge_decoder.decode(raw)
        except (msgspec.DecodeError, ValueError) as exc:
            raise BackendConnectionError(f"invalid handshake challenge: {exc}") from exc
        await self._send_raw(_answer(auth, challenge.challenge))
        result = _decode_map(await self._recv(), "handshake result")
        if result.get("result") != "ok":
            raise HandshakeRefused(str(result.get("result")), str(result.get("help")))

    async def _send_raw(self, data: bytes) -> None:
        try:
            await self._ws.send(data)
        except websockets.exceptions.WebSocketException as exc:
            raise BackendConnectionError(f"connection lost: {exc}") from exc

    async def _recv(self) -> bytes:
        try:
            data = await self._ws.recv()
        except websockets.exceptions.WebSocketException as exc:
            raise BackendConnectionError(f"connection lost: {exc}") from exc
        if isinstance(data, str):
            raise BackendConnectionError("unexpected text message")
        return data

    async def send_raw(self, data: bytes) -> dict[str, Any]:
        """Send an already encoded frame, return the decoded reply (tests use it)."""
        async with self._lock:
            await self._send_raw(data)
            return _decode_map(await self._recv(), "reply")

    async def cmd(self, cmd: str, **fields: Any) -> dict[str, Any]:
        return await self.send_raw(codec.encode({"cmd": cmd, **fields}))

    async def close(self) -> None:
        await self._ws.close()

    async def __aenter__(self) -> BackendConnection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
