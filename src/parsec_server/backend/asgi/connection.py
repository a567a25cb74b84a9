"""One websocket connection: handshake, then the command loop.

The handshake answer must come within `config.handshake_timeout` seconds, else the
connection is closed (code 1008). Requests are processed one at a time, in order. A
breathing command (events_listen) runs while the socket keeps being read: a new request
abandons it without reply. A command waiting for another client (a rendezvous step) runs
while the socket is watched: the connection closing abandons it, a new request waits for
its reply. A connection can also be closed from outside (its user revoked, its
organization expired, its user frozen), which abandons whatever it is doing.

When the server shuts down (`drain`), the connection is closed with code 1001 (going
away) as soon as it is not processing a request: at once if it waits for its client or
for an event or a peer (those waits are abandoned as when the client leaves), else once
the reply to the request in progress is sent.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import structlog

from parsec_server.api import codec
from parsec_server.api.crypto import random_challenge
from parsec_server.api.handshake import HandshakeResult, challenge_frame
from parsec_server.api.protocol.base import Rep
from parsec_server.backend.asgi import request_log
from parsec_server.backend.asgi.dispatch import (
    INVALID_MSG_FORMAT,
    Command,
    CommandTable,
    InvalidMessageFormat,
)
from parsec_server.backend.asgi.handshake import (
    INVALID_MESSAGE_FORMAT,
    HandshakeOutcome,
    do_handshake,
    record_refusal,
)
from parsec_server.backend.asgi.websocket import (
    TEXT_FRAME,
    AsgiWebSocket,
    TextFrame,
    WebSocketClosed,
)
from parsec_server.backend.client_context import (
    CLOSE_CONNECTION,
    CLOSE_EVENTS_OVERFLOW,
    AuthenticatedClientContext,
    ClientContext,
    CloseConnection,
    InvitedClientContext,
)
from parsec_server.backend.events import (
    Event,
    OrganizationExpiredEvent,
    UserFrozenEvent,
    UserRevokedEvent,
)
from parsec_server.backend.metrics import HANDSHAKE_TIMEOUT

if TYPE_CHECKING:
    from parsec_server.api.protocol.base import Req
    from parsec_server.backend.app import BackendApp
    from parsec_server.backend.asgi.commands import CommandTables

logger = structlog.get_logger("parsec.connection")

# Close code when the handshake answer does not come in time: policy violation (the peer
# holds a connection without identifying itself).
HANDSHAKE_TIMEOUT_CLOSE_CODE = 1008
# Close code when the server shuts down: going away (the client reconnects, to another
# server process if there is one).
SHUTDOWN_CLOSE_CODE = 1001
# A claimer whose invitation is deleted while one of its commands runs gets that command's
# reply first (its last rendezvous step usually ends just as the greeter deletes the
# invitation), then the close; at most this many seconds later in any case.
INVITATION_DELETED_GRACE = 2.0


class ClientConnection:
    def __init__(
        self,
        app: BackendApp,
        tables: CommandTables,
        ws: AsgiWebSocket,
        peer_address: str | None = None,
    ) -> None:
        self._app = app
        self._tables = tables
        self._ws = ws
        self._peer_address = peer_address
        self.client: ClientContext | None = None
        self._task: asyncio.Task[None] | None = None
        self._close_requested = False
        self._close_code = 1000
        self._log = request_log.ConnectionLog(peer_address)
        # Shutdown: `_draining` once asked to go away; `_interruptible` while waiting for
        # something that may be abandoned (the client, an event, a peer).
        self._draining = False
        self._interruptible = False
        # Between two requests (nothing to answer); `_close_after_reply` once asked to close
        # when the command being run has been answered.
        self._idle = False
        self._close_after_reply = False

    # Called by the connection registry for every event of the connection's organization.
    def on_event(self, event: Event) -> None:
        client = self.client
        if isinstance(client, AuthenticatedClientContext):
            if isinstance(event, OrganizationExpiredEvent) or (
                isinstance(event, UserRevokedEvent | UserFrozenEvent)
                and event.user_id == client.user_id
            ):
                self.request_close()
                return
            if not client.events.on_event(client, event):
                logger.warning("event queue full, closing", device_id=client.device_id)
                self.request_close(CLOSE_EVENTS_OVERFLOW)
        elif isinstance(client, InvitedClientContext) and (
            self._app.invite.closes_invited_connection(client, event)
        ):
            self._request_close_after_reply()

    def request_close(self, code: int = 1000) -> None:
        if self._task is not None and not self._close_requested:
            self._close_requested = True
            self._close_code = code
            self._task.cancel()

    def _request_close_after_reply(self) -> None:
        if self._idle or self._task is None:
            self.request_close()
            return
        self._close_after_reply = True
        asyncio.get_running_loop().call_later(INVITATION_DELETED_GRACE, self.request_close)

    def drain(self) -> None:
        """The server shuts down: close with 1001 at once if waiting (see the module's
        docstring), else after the reply to the request being processed."""
        self._draining = True
        if self._interruptible:
            self.request_close(SHUTDOWN_CLOSE_CODE)

    def abandon(self) -> None:
        """Close with 1001 now, whatever the connection is doing (shutdown timeout)."""
        self._draining = True
        self.request_close(SHUTDOWN_CLOSE_CODE)

    async def serve(self) -> None:
        self._task = asyncio.current_task()
        if self._draining:  # accepted while the server was shutting down
            await self._ws.close(SHUTDOWN_CLOSE_CODE)
            return
        metrics = self._app.metrics
        metrics.connection_opened()
        try:
            await self._serve()
        except WebSocketClosed:
            pass
        except asyncio.CancelledError:
            if not self._close_requested:
                raise
            assert self._task is not None
            self._task.uncancel()
            metrics.connection_closed_by_server(self._close_code)
            await self._ws.close(self._close_code)
        except CloseConnection as exc:
            metrics.connection_closed_by_server(exc.code)
            await self._ws.close(exc.code)
        except Exception:
            # A bug or an infrastructure failure (database down...): this connection ends,
            # the server goes on serving the others.
            logger.exception("connection failed", **self._log.context())
            await self._ws.close(1011)
        finally:
            metrics.connection_closed(self.client)
            if self.client is not None:
                self._app.connections.unregister(self)
                await self._app.on_client_disconnected(self.client)

    async def _serve(self) -> None:
        challenge = random_challenge()
        timeout = self._app.config.handshake_timeout
        self._interruptible = True
        try:
            async with asyncio.timeout(timeout):
                await self._ws.send(challenge_frame(challenge))
                raw = await self._ws.receive()
            self._interruptible = False
        except TimeoutError:
            logger.info("no handshake answer in time, closing connection", timeout=timeout)
            self._app.metrics.handshake_done(HANDSHAKE_TIMEOUT)
            await self._ws.close(HANDSHAKE_TIMEOUT_CLOSE_CODE)
            return
        if raw is TEXT_FRAME:
            self._app.metrics.handshake_done(HandshakeResult.BAD_PROTOCOL)
            refusal = HandshakeOutcome(
                b"", result=HandshakeResult.BAD_PROTOCOL, reason=INVALID_MESSAGE_FORMAT
            )
            record_refusal(self._app.audit, self._peer_address, refusal)
            await self._reply_invalid_format_and_close()
            return
        assert isinstance(raw, bytes)
        outcome = await do_handshake(self._app, challenge, raw, self._peer_address)
        self._app.metrics.handshake_done(outcome.result)
        await self._ws.send(outcome.frame)
        if outcome.client is None:
            await self._ws.close(1000)
            return
        self.client = outcome.client
        self._app.metrics.connection_identified(outcome.client)
        self._log.identified(outcome.client)
        self._app.connections.register(self)
        await self._app.on_client_connected(outcome.client)
        await self._command_loop(self._tables.for_client(outcome.client), outcome.client)

    async def _command_loop(self, table: CommandTable, client: ClientContext) -> None:
        next_frame: bytes | TextFrame | None = None
        while True:
            if self._close_after_reply:
                await self._ws.close(1000)
                return
            if next_frame is None:
                if self._draining:
                    await self._ws.close(SHUTDOWN_CLOSE_CODE)
                    return
                self._interruptible = True  # waiting for the next request
                self._idle = True
            frame = await self._receive_binary(next_frame)
            self._interruptible = self._idle = False
            next_frame = None
            if frame is None:
                return
            try:
                parsed = await table.parse_async(frame, client)
            except InvalidMessageFormat:
                await self._reply_invalid_format_and_close()
                return
            if isinstance(parsed, dict):
                self._app.metrics.request_refused(parsed["status"])
                if request_log.enabled():
                    self._log.command(None, parsed.get("status"), time.perf_counter())
                await self._ws.send(codec.encode(parsed))
                continue
            command, req = parsed
            if command.breathing:
                self._interruptible = True
                rep, next_frame = await self._run_breathing(command, client, req)
                self._interruptible = False
                if rep is None:
                    continue
            elif command.waits_for_peer:
                self._interruptible = True
                rep, next_frame = await self._run_watched(command, client, req)
                self._interruptible = False
            else:
                rep = await self._run(command, client, req)
            if rep is CLOSE_CONNECTION:
                await self._ws.close(1000)
                return
            await self._ws.send(codec.encode(rep))

    async def _run(self, command: Command, client: ClientContext, req: Req) -> Rep:
        # Hot path: a dropped structlog call still costs microseconds, the stdlib level
        # check (cached by logging) almost nothing.
        if not request_log.enabled():
            return await command.handler(client, req)
        started = time.perf_counter()
        status: object = "error"  # an exception closes the connection (1011)
        try:
            rep = await command.handler(client, req)
            status = rep.get("status")
            return rep
        except asyncio.CancelledError:
            status = "cancelled"  # the connection is closing
            raise
        finally:
            self._log.command(command.name, status, started)

    async def _run_breathing(
        self, command: Command, client: ClientContext, req: Req
    ) -> tuple[Rep | None, bytes | None]:
        """Run a waiting command while reading the socket: (reply, None) if it finished
        first, (None, new request frame) if the client sent something else first."""
        started = time.perf_counter() if request_log.enabled() else None
        work = asyncio.ensure_future(command.handler(client, req))
        reader = asyncio.ensure_future(self._ws.receive())
        try:
            await asyncio.wait((work, reader), return_when=asyncio.FIRST_COMPLETED)
        finally:
            work_finished, new_request = work.done(), reader.done()
            for task in (work, reader):
                if not task.done():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            if started is not None:
                self._log_breathing(command, work, started)
        if not new_request:
            return work.result(), None
        if work_finished:
            # Both finished together: the reply goes first, then the new request.
            await self._ws.send(codec.encode(work.result()))
        new_frame = reader.result()
        if new_frame is TEXT_FRAME:
            await self._reply_invalid_format_and_close()
            raise WebSocketClosed()
        assert isinstance(new_frame, bytes)
        return None, new_frame

    def _log_breathing(self, command: Command, work: asyncio.Future[Rep], started: float) -> None:
        if not work.done() or work.cancelled():
            status: object = "abandoned"  # by a new request (no reply), or by the closing
        elif work.exception() is not None:
            status = "error"
        else:
            status = work.result().get("status")
        self._log.command(command.name, status, started)

    async def _run_watched(
        self, command: Command, client: ClientContext, req: Req
    ) -> tuple[Rep, bytes | TextFrame | None]:
        """Run a command waiting for another client while watching the socket: (reply,
        request received meanwhile or None). The peer leaving abandons the command
        (WebSocketClosed). A request received meanwhile waits for the reply, as in the
        reference; the socket is then no longer watched (one request is held at most)."""
        work = asyncio.ensure_future(self._run(command, client, req))
        reader = asyncio.ensure_future(self._ws.receive())
        pending: bytes | TextFrame | None = None
        try:
            await asyncio.wait((work, reader), return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                pending = reader.result()  # raises WebSocketClosed if the peer left
                rep = await work
            else:
                rep = work.result()
                if reader.done() and reader.exception() is None:
                    pending = reader.result()
                # (a reader that saw the peer leave has marked the socket closed: the
                # reply's send ends the connection)
        finally:
            for task in (work, reader):
                if not task.done():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
        return rep, pending

    async def _receive_binary(self, pending: bytes | TextFrame | None = None) -> bytes | None:
        """The next request frame (`pending` if one was already received), None if the
        peer sent a text frame (answered, then the connection is closed)."""
        raw = pending if pending is not None else await self._ws.receive()
        if raw is TEXT_FRAME:
            await self._reply_invalid_format_and_close()
            return None
        assert isinstance(raw, bytes)
        return raw

    async def _reply_invalid_format_and_close(self) -> None:
        logger.info("invalid message format, closing connection")
        self._app.metrics.request_refused(INVALID_MSG_FORMAT["status"])
        await self._ws.send(codec.encode(INVALID_MSG_FORMAT))
        await self._ws.close(1000)
