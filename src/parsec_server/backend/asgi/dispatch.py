"""Turns a request frame into (command, typed request), or into the protocol's error reply.

One table per handshake type: a command absent from the table is `unknown_command`.
Each table decodes with one msgspec decoder over the union of its request types (tagged
by `cmd`), so a valid request is parsed and validated in a single pass.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Union

import msgspec

from parsec_server.api import codec
from parsec_server.api.protocol.base import Rep, Req, command_name, error

Handler = Callable[[Any, Any], Awaitable[Rep]]
Precheck = Callable[[Any], Rep | None]

UNKNOWN_COMMAND: Rep = {"status": "unknown_command", "reason": "Unknown command"}
INVALID_MSG_FORMAT: Rep = {"status": "invalid_msg_format", "reason": "Invalid message format"}

# Steps (about one per msgpack value) of the message check done on the event loop: 0.3 to
# 1 ms. A real request holds a few dozen values; a message needing more (only a purpose-built
# one) is checked again in one of these threads, without the GIL, and its top-level fields
# that the command does not have are dropped there too (the typed decoder would spend
# milliseconds per MiB skipping them, holding the GIL), so that one message cannot stall the
# other connections (docs/frame-outcomes.md).
INLINE_CHECK_BUDGET = 100_000

# msgpack type bytes of a map: fixmap, map16, map32.
_MAP_FIRST_BYTES = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}
_ERROR_PATH = re.compile(r"^(?P<msg>.*) - at (?:`key` in )?`\$\.(?P<field>[^.\[`]+)")
_MISSING_FIELD = re.compile(r"^Object missing required field `(?P<field>[^`]+)`")
# What our own `__post_init__` checks raise (see api/ids.py).
_FIELD_CHECK = re.compile(r"^Field `(?P<field>[^`]+)`: (?P<msg>.*)$")


@dataclass(frozen=True, slots=True)
class Command:
    req_type: type[Req]
    handler: Handler
    # Checks the reference runs before validating the request (e.g. admin-only commands).
    precheck: Precheck | None = None
    # Breathing commands wait; a new request on the connection abandons them (no reply).
    breathing: bool = False
    # Commands that wait for another client (the rendezvous steps): the socket is watched
    # meanwhile, the connection closing abandons them; a request sent meanwhile is answered
    # after them, in order (protocol/10-transport.md 5.3).
    waits_for_peer: bool = False

    @property
    def name(self) -> str:
        return command_name(self.req_type)


class InvalidMessageFormat(Exception):
    """The frame is not a valid msgpack map: reply invalid_msg_format, then close."""


class CommandTable:
    def __init__(self, commands: list[Command], check_threads: Executor | None = None) -> None:
        # Where costly messages are checked (None: the event loop's default executor).
        self._check_threads = check_threads
        self._by_type = {c.req_type: c for c in commands}
        self._by_name = {c.name: c for c in commands}
        self._fields = {c.name: field_names(c.req_type) for c in commands}
        union = Union[tuple(self._by_type)]  # type: ignore[valid-type]  # noqa: UP007
        self._decoder: msgspec.msgpack.Decoder[Req] = msgspec.msgpack.Decoder(
            union, ext_hook=codec.ext_hook
        )

    def parse(self, frame: bytes, client: object) -> tuple[Command, Req] | Rep:
        """Raise InvalidMessageFormat, or return the command to run or the error reply.
        The whole message is checked here, however long that takes: the server itself
        uses `parse_async`."""
        _check_is_map(frame)
        try:
            codec.check(frame)
        except codec.CodecError as exc:
            raise InvalidMessageFormat() from exc
        return self._parse_checked(frame, client)

    async def parse_async(self, frame: bytes, client: object) -> tuple[Command, Req] | Rep:
        """`parse`, with the check of a costly message done off the event loop."""
        _check_is_map(frame)
        try:
            frame = await check_message(frame, self._fields_of, self._check_threads)
        except codec.CodecError as exc:
            raise InvalidMessageFormat() from exc
        return self._parse_checked(frame, client)

    def _fields_of(self, frame: bytes) -> tuple[bytes, ...]:
        name = codec.top_level_str(frame, "cmd")
        return self._fields.get(name, (b"cmd",)) if name is not None else (b"cmd",)

    def _parse_checked(self, frame: bytes, client: object) -> tuple[Command, Req] | Rep:
        # The typed decoder skips unknown fields unchecked (invalid UTF-8, bad ext
        # lengths) and knows no size limits: the caller has checked the whole message.
        try:
            req = self._decoder.decode(frame)
        except msgspec.ValidationError as exc:
            return self._validation_error_reply(frame, str(exc), client)
        except (msgspec.DecodeError, ValueError, RecursionError) as exc:
            raise InvalidMessageFormat() from exc
        command = self._by_type[type(req)]
        if command.precheck is not None:
            refused = command.precheck(client)
            if refused is not None:
                return refused
        return command, req

    def _validation_error_reply(self, frame: bytes, message: str, client: object) -> Rep:
        # Only the `cmd` value is decoded: the rest of the message may be megabytes of
        # tiny values, costly to build as objects.
        name = codec.top_level_str(frame, "cmd")
        command = self._by_name.get(name) if name is not None else None
        if command is None:
            return UNKNOWN_COMMAND
        if command.precheck is not None:
            refused = command.precheck(client)
            if refused is not None:
                return refused
        return bad_message(message)


def _check_is_map(frame: bytes) -> None:
    if not frame or frame[0] not in _MAP_FIRST_BYTES:
        raise InvalidMessageFormat()


def field_names(*types: type[msgspec.Struct]) -> tuple[bytes, ...]:
    """The msgpack keys that decoding into `types` reads (tag fields included)."""
    names: set[str] = set()
    for type_ in types:
        names.update(field.encode_name for field in msgspec.structs.fields(type_))
        tag_field = type_.__struct_config__.tag_field
        if tag_field is not None:
            names.add(tag_field)
    return tuple(sorted(name.encode() for name in names))


async def check_message(
    frame: bytes,
    fields: Callable[[bytes], tuple[bytes, ...]],
    threads: Executor | None = None,
) -> bytes:
    """`codec.check` (raises CodecError) and the frame to decode: on the event loop the
    frame itself, if checked within INLINE_CHECK_BUDGET steps; else, in a worker thread,
    the check all over again, then the frame without the top-level str keys not in
    `fields(frame)`."""
    try:
        codec.check(frame, INLINE_CHECK_BUDGET)
    except codec.CheckTooCostly:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(threads, _check_and_prune, frame, fields)
    return frame


def _check_and_prune(frame: bytes, fields: Callable[[bytes], tuple[bytes, ...]]) -> bytes:
    codec.check(frame)
    return codec.prune(frame, fields(frame))


def bad_message(message: str) -> Rep:
    missing = _MISSING_FIELD.match(message)
    if missing:
        errors = {missing["field"]: ["Missing data for required field."]}
    else:
        at = _ERROR_PATH.match(message) or _FIELD_CHECK.match(message)
        errors = {at["field"]: [at["msg"]]} if at else {"_schema": [message]}
    rep = error("bad_message", "Invalid message.")
    rep["errors"] = errors
    return rep
