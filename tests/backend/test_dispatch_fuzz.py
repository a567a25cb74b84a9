"""Fuzzing decoding and dispatch (docs/frame-outcomes.md): whatever the frame,
`CommandTable.parse` returns a command to run or an error reply, or raises
InvalidMessageFormat; nothing else. Requests are generated from the request structs of
every command table (msgspec.inspect), then mutated."""

from __future__ import annotations

import asyncio
import struct
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from parsec_server.api import codec
from parsec_server.api.ids import UserProfile
from parsec_server.backend.asgi.dispatch import (
    Command,
    CommandTable,
    InvalidMessageFormat,
    check_message,
)
from parsec_server.backend.asgi.handshake import ANSWER_FIELDS, parse_answer
from tests.fixtures.commands import OFFLINE_TABLES

MiB = 1024 * 1024


TABLES = OFFLINE_TABLES
COMMANDS: list[tuple[str, Command]] = [
    (table_name, command)
    for table_name, table in TABLES.items()
    for command in table._by_name.values()
]
CLIENTS = [
    SimpleNamespace(profile=profile, user_id="alice", organization_id="Org")
    for profile in UserProfile
]

# --- values ----------------------------------------------------------------------------------

BOUNDARY_INTS = [
    0,
    1,
    -1,
    2**31 - 1,
    2**31,
    -(2**31),
    2**32,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    -(2**63),
]

any_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(BOUNDARY_INTS),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=40),
    st.builds(codec.ID.from_bytes, st.binary(min_size=16, max_size=16)),
    st.builds(
        lambda ts: msgspec.msgpack.Ext(1, struct.pack(">d", ts)),
        st.floats() | st.sampled_from([codec.TIMESTAMP_MIN, codec.TIMESTAMP_MAX, 1e20]),
    ),
    st.builds(msgspec.msgpack.Ext, st.integers(-128, 127), st.binary(max_size=17)),
)
any_value = st.recursive(
    any_scalar,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), children, max_size=4)
    ),
    max_leaves=12,
)


def _int_strategy(info: msgspec.inspect.IntType) -> st.SearchStrategy[int]:
    low = info.ge if info.ge is not None else (info.gt + 1 if info.gt is not None else None)
    high = info.le if info.le is not None else (info.lt - 1 if info.lt is not None else None)
    edges = [value for value in (low, high) if value is not None]
    edges += [edge + delta for edge in edges for delta in (-1, 1)]
    edges = [edge for edge in edges if -(2**63) <= edge < 2**64]
    low = max(low, -(2**63)) if low is not None else -(2**63)
    high = min(high, 2**64 - 1) if high is not None else 2**64 - 1
    return st.integers(low, high) | st.sampled_from(edges or [0]) | st.sampled_from(BOUNDARY_INTS)


def strategy_for(info: msgspec.inspect.Type) -> st.SearchStrategy[Any]:
    """Values of the field's type (mostly), from its msgspec description."""
    inspect = msgspec.inspect
    if isinstance(info, inspect.Metadata):
        return strategy_for(info.type)
    if isinstance(info, inspect.StrType):
        if info.pattern is not None:
            return st.from_regex(info.pattern) | st.text(max_size=40)
        return st.text(max_size=40)
    if isinstance(info, inspect.BytesType):
        return st.binary(max_size=80)
    if isinstance(info, inspect.IntType):
        return _int_strategy(info)
    if isinstance(info, inspect.FloatType):
        return st.floats()
    if isinstance(info, inspect.BoolType):
        return st.booleans()
    if isinstance(info, inspect.NoneType):
        return st.none()
    if isinstance(info, inspect.LiteralType):
        return st.sampled_from(list(info.values))
    if isinstance(info, inspect.EnumType):
        return st.sampled_from([member.value for member in info.cls])
    if isinstance(info, inspect.ListType | inspect.VarTupleType):
        return st.lists(strategy_for(info.item_type), max_size=3)
    if isinstance(info, inspect.DictType):
        return st.dictionaries(
            strategy_for(info.key_type), strategy_for(info.value_type), max_size=3
        )
    if isinstance(info, inspect.UnionType):
        return st.one_of([strategy_for(member) for member in info.types])
    if isinstance(info, inspect.StructType):
        return struct_fields(info)
    if isinstance(info, inspect.CustomType):
        if info.cls is codec.ID:
            return st.builds(codec.ID.from_bytes, st.binary(min_size=16, max_size=16))
        if info.cls is codec.DateTime:
            return st.floats(codec.TIMESTAMP_MIN, codec.TIMESTAMP_MAX).map(
                codec.DateTime.from_timestamp
            )
    return any_value


def struct_fields(info: msgspec.inspect.StructType) -> st.SearchStrategy[dict[str, Any]]:
    """A map of the struct's fields, each mostly well-typed, sometimes anything, missing,
    or joined by fields the struct does not have."""
    return st.fixed_dictionaries(
        {},
        optional={
            field.encode_name: st.one_of(strategy_for(field.type), any_value)
            for field in info.fields
        },
    ).flatmap(
        lambda known: st.dictionaries(st.text(max_size=10), any_value, max_size=2).map(
            lambda extra: {**extra, **known}
        )
    )


def encode(value: Any) -> bytes:
    return msgspec.msgpack.encode(value, enc_hook=codec._enc_hook)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes]:
    table_name, command = draw(st.sampled_from(COMMANDS))
    info = msgspec.inspect.type_info(command.req_type)
    assert isinstance(info, msgspec.inspect.StructType)
    fields = draw(struct_fields(info))
    cmd = draw(
        st.sampled_from([command.name] * 8 + [command.name.upper(), "", None, 7, b"ping"])
        | st.sampled_from([name for _, c in COMMANDS for name in [c.name]])
    )
    if cmd is not None:
        fields["cmd"] = cmd
    raw = bytearray(encode(fields))
    for _ in range(draw(st.integers(0, 2))):
        position = draw(st.integers(0, len(raw) - 1))
        operation = draw(st.sampled_from(["none", "set", "flip", "truncate", "insert"]))
        if operation == "set":
            raw[position] = draw(st.integers(0, 255))
        elif operation == "flip":
            raw[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "truncate":
            del raw[max(position, 1) :]
        elif operation == "insert":
            raw[position:position] = draw(st.binary(min_size=1, max_size=4))
    return table_name, bytes(raw)


# --- properties --------------------------------------------------------------------------


def assert_parse_outcome(table: CommandTable, frame: bytes, client: Any) -> Any:
    try:
        outcome = table.parse(frame, client)
    except InvalidMessageFormat:
        return None
    if isinstance(outcome, dict):
        assert isinstance(outcome.get("status"), str)
        assert outcome["status"] != "ok"
        codec.encode(outcome)  # the reply can be sent
    else:
        command, req = outcome
        assert isinstance(req, command.req_type)
    return outcome


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(requests(), st.sampled_from(CLIENTS))
def test_parse_only_returns_a_command_or_a_reply_or_raises_invalid_msg_format(
    request_: tuple[str, bytes], client: Any
) -> None:
    table_name, frame = request_
    assert_parse_outcome(TABLES[table_name], frame, client)


@settings(max_examples=800, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(sorted(TABLES)), any_value, st.sampled_from(CLIENTS))
def test_parse_of_any_msgpack_value(table_name: str, value: Any, client: Any) -> None:
    assert_parse_outcome(TABLES[table_name], encode(value), client)


@settings(max_examples=800, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(sorted(TABLES)), st.binary(max_size=64), st.sampled_from(CLIENTS))
def test_parse_of_any_bytes(table_name: str, frame: bytes, client: Any) -> None:
    assert_parse_outcome(TABLES[table_name], frame, client)


@settings(max_examples=800, deadline=None, suppress_health_check=list(HealthCheck))
@given(requests(), st.sampled_from(CLIENTS))
def test_dropping_the_unknown_top_level_fields_changes_nothing(
    request_: tuple[str, bytes], client: Any
) -> None:
    # What a costly frame goes through (parse_async): same outcome as the whole frame.
    table_name, frame = request_
    table = TABLES[table_name]
    try:
        codec.check(frame)
    except codec.CodecError:
        assume(False)
    assume(frame[0] in range(0x80, 0x90) or frame[0] in (0xDE, 0xDF))
    pruned = codec.prune(frame, table._fields_of(frame))
    codec.check(pruned)

    def outcome(raw: bytes) -> Any:
        try:
            return table._parse_checked(raw, client)
        except InvalidMessageFormat:
            return InvalidMessageFormat

    assert outcome(pruned) == outcome(frame)


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.fixed_dictionaries(
        {},
        optional={
            name.decode(): any_value
            | st.sampled_from(
                ["answer", "authenticated", "anonymous", "administration", "INVITED", "Org"]
            )
            | st.sampled_from([[2, 0], [1, 2], [1, 3], [2**64 - 1, 0], [3, 0]])
            for name in ANSWER_FIELDS
        },
    ),
    st.dictionaries(st.text(max_size=5), any_value, max_size=2),
)
def test_handshake_answers_get_an_answer_or_a_refusal(
    fields: dict[str, Any], extra: dict[str, Any]
) -> None:
    frame = encode({**extra, **fields})
    try:
        codec.check(frame)
    except codec.CodecError:
        return
    parse_answer(frame)  # an answer or a HandshakeOutcome; raising is the bug


# --- costly frames are checked off the event loop --------------------------------------------


def _junk(megabytes: int) -> bytes:
    """A map of arrays of 131,072 one-item arrays: one check step per 2 bytes."""
    arrays = megabytes * 4
    body = b"".join(
        encode(f"k{i}") + b"\xdd" + (131072).to_bytes(4, "big") + b"\x91\xc0" * 131072
        for i in range(arrays)
    )
    return b"\xde" + arrays.to_bytes(2, "big") + body


async def test_a_costly_frame_gives_the_same_outcome_as_parse() -> None:
    table = TABLES["authenticated_v2"]
    client = CLIENTS[0]
    junk = _junk(1)
    for fields in (
        {"ping": "x"},
        {"ping": 42},
        {},
        {"ping": "x", "cmd": "nope"},
    ):
        head = encode({"cmd": "ping", **fields})
        frame = bytes([head[0] + 1]) + head[1:] + encode("junk") + junk
        with pytest.raises(codec.CheckTooCostly):
            codec.check(frame, budget=100_000)
        assert await table.parse_async(frame, client) == table.parse(frame, client)
    bad = encode({"cmd": "ping", "ping": "x"})
    bad = bytes([bad[0] + 1]) + bad[1:] + encode("junk") + junk[:-1] + b"\xc1"
    with pytest.raises(InvalidMessageFormat):
        await table.parse_async(bad, client)


async def test_a_costly_frame_leaves_the_event_loop_free() -> None:
    head = encode({"cmd": "ping", "ping": "x"})
    frame = bytes([head[0] + 1]) + head[1:] + encode("junk") + _junk(4)
    table = TABLES["authenticated_v2"]
    ticks = 0
    longest_gap = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks, longest_gap
        loop = asyncio.get_running_loop()
        last = loop.time()
        while not done.is_set():
            await asyncio.sleep(0)
            now = loop.time()
            longest_gap = max(longest_gap, now - last)
            last = now
            ticks += 1

    task = asyncio.create_task(ticker())
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(3):
        assert isinstance(await table.parse_async(frame, CLIENTS[0]), tuple)
    elapsed = loop.time() - started
    done.set()
    await task
    # The loop kept turning while the three checks ran in the worker thread: its longest
    # stall is a small part of the whole (the inline part of each check, ~1 ms).
    assert ticks > 10
    assert longest_gap < max(elapsed / 4, 0.02), (longest_gap, elapsed)


async def test_check_message_keeps_small_frames_as_they_are() -> None:
    frame = encode({"cmd": "ping", "ping": "x", "extra": [1, 2, 3]})
    assert await check_message(frame, lambda raw: (b"cmd", b"ping")) is frame
