"""Every integer, timestamp and string field of every command request, at and beyond its
limits (docs/protocol-limits.md), sent over real websocket sessions of each handshake type,
on both storages.

The fields are found by introspecting the request structs of the server's command tables
(`CommandTables.commands`), nested ones included (list items, dict keys and values, tuple
items): a new command or field is covered without touching this file. Every frame of one
handshake type is pipelined on one connection, followed by a `ping`, so that the whole walk
takes a few seconds; only the frames after which the server must close the connection (a
timestamp that is no instant) get a connection each.
"""

from __future__ import annotations

import asyncio
import functools
import math
import struct
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import msgspec.inspect as mi
from nacl.signing import SigningKey
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from parsec_server.api import codec
from parsec_server.api.certificates import RealmRoleCertificate, RevokedUserCertificate
from parsec_server.api.codec import ID, DateTime
from parsec_server.api.crypto import sign
from parsec_server.api.handshake import API_V1, API_V2, InvitedAnswer, build_answer
from parsec_server.api.ids import (
    DEVICE_LABEL_MAX_LENGTH,
    DeviceID,
    InvitationType,
    OrganizationID,
    RealmRole,
    Text,
    UserProfile,
)
from parsec_server.api.protocol.base import command_name
from parsec_server.backend.asgi.commands import CommandTables
from parsec_server.backend.asgi.dispatch import Command
from tests.backend.common import (
    TIMEOUT,
    administration_ws,
    anonymous_ws,
    authenticated_ws,
    device_certificate,
    new_user,
    new_user_by,
    recv_reply,
    send_cmd,
)
from tests.backend.realm_helpers import new_realm, vlob_create
from tests.fixtures.raw import raw_connect, recv_map
from tests.fixtures.servers import Organization, RunningServer, new_organization_id

INVALID_MSG_FORMAT = {"status": "invalid_msg_format", "reason": "Invalid message format"}
PING = codec.encode({"cmd": "ping", "ping": "after the probes"})
PONG = {"status": "ok", "pong": "after the probes"}
# Replies that mean the request itself was refused, not served.
NOT_SERVED = {"bad_message", "invalid_msg_format", "unknown_command"}

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1
# msgpack integers are signed or unsigned 64-bit: nothing else can be sent.
BOUNDARY_INTS = [
    0,
    1,
    -1,
    100,
    1000,
    INT32_MAX,
    INT32_MAX + 1,
    INT32_MIN,
    INT32_MIN - 1,
    10**18,
    -(10**18),
    INT64_MAX,
    INT64_MAX + 1,
    INT64_MIN,
    UINT64_MAX,
]

YEAR_1 = -62135596800.0  # 0001-01-01T00:00:00Z
YEAR_10000 = 253402300800.0  # 10000-01-01T00:00:00Z
VALID_TIMESTAMPS = [YEAR_1, YEAR_1 + 0.5, 0.0, -0.0, 1.5e9, YEAR_10000 - 1, YEAR_10000 - 0.001]
INVALID_TIMESTAMPS = [
    math.nan,
    -math.nan,
    math.inf,
    -math.inf,
    YEAR_10000,
    YEAR_1 - 1,
    1e18,
    -1e18,
    2.0**63,
    1e300,
]


def _pattern(type_: Any) -> str | None:
    info = mi.type_info(type_)
    assert isinstance(info, mi.StrType)
    return info.pattern


# A valid value for each kind of string field, by its pattern (see also `Samples`).
SAMPLE_BY_PATTERN = {
    _pattern(Text): "x",
    _pattern(OrganizationID): "alice",  # also UserID and DeviceName
    _pattern(DeviceID): "alice@laptop",
}


def int_bounds(info: mi.IntType) -> tuple[int, int] | None:
    low = info.ge if info.ge is not None else (info.gt + 1 if info.gt is not None else None)
    high = info.le if info.le is not None else (info.lt - 1 if info.lt is not None else None)
    if low is None or high is None:
        return None
    return low, high


def timestamp_ext(seconds: float) -> msgspec.msgpack.Ext:
    return msgspec.msgpack.Ext(1, struct.pack(">d", seconds))


# Walking the request types


class _Key:
    """Path step: the (only) key of a dict."""


class _Value:
    """Path step: the value of the (only) key of a dict."""


KEY, VALUE = _Key(), _Value()
Path = tuple[Any, ...]


def _unwrap(info: mi.Type) -> mi.Type:
    while isinstance(info, mi.Metadata):
        info = info.type
    return info


def is_text_leaf(info: mi.Type) -> bool:
    if isinstance(info, mi.StrType):
        return True
    if isinstance(info, mi.EnumType):
        return all(isinstance(m.value, str) for m in info.cls)
    return isinstance(info, mi.LiteralType) and all(isinstance(v, str) for v in info.values)


def is_leaf(info: mi.Type) -> bool:
    return (
        isinstance(info, mi.IntType)
        or (isinstance(info, mi.CustomType) and info.cls is DateTime)
        or is_text_leaf(info)
    )


def leaves(info: mi.Type, path: Path) -> Iterator[tuple[Path, mi.Type]]:
    """The integer, timestamp and string leaves under `info`, with their paths."""
    info = _unwrap(info)
    if is_leaf(info):
        yield path, info
    elif isinstance(info, mi.UnionType):
        for member in info.types:
            yield from leaves(member, path)
    elif isinstance(info, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
        yield from leaves(info.item_type, (*path, 0))
    elif isinstance(info, mi.TupleType):
        for i, item in enumerate(info.item_types):
            yield from leaves(item, (*path, i))
    elif isinstance(info, mi.DictType):
        yield from leaves(info.key_type, (*path, KEY))
        yield from leaves(info.value_type, (*path, VALUE))
    elif isinstance(info, mi.StructType):
        for field in info.fields:
            yield from leaves(field.type, (*path, field.encode_name))


class Samples:
    """Valid values for every type of the requests. `by_field_name` gives the value of the
    fields so named (an existing realm and vlob, so that the values reach the storage's
    deeper queries); `organization_id` fields name an organization of their own, so that
    the administration commands never touch the test's."""

    def __init__(self, by_field_name: dict[str, Any]) -> None:
        self.by_field_name = {"organization_id": new_organization_id(), **by_field_name}

    def value(self, info: mi.Type, name: str) -> Any:
        info = _unwrap(info)
        if name in self.by_field_name and not isinstance(info, mi.UnionType):
            return self.by_field_name[name]
        if isinstance(info, mi.IntType):
            bounds = int_bounds(info)
            return 1 if bounds is None else min(max(1, bounds[0]), bounds[1])
        if isinstance(info, mi.StrType):
            assert info.pattern in SAMPLE_BY_PATTERN, (
                f"field `{name}`: no sample value for the pattern {info.pattern!r}; "
                "add one to SAMPLE_BY_PATTERN"
            )
            return SAMPLE_BY_PATTERN[info.pattern]
        if isinstance(info, mi.BytesType):
            return b"\x01" * (info.min_length or 1)
        if isinstance(info, mi.BoolType):
            return False
        if isinstance(info, mi.NoneType):
            return None
        if isinstance(info, mi.EnumType):
            return next(iter(info.cls)).value
        if isinstance(info, mi.LiteralType):
            return info.values[0]
        if isinstance(info, mi.CustomType) and info.cls is DateTime:
            return DateTime.now()
        if isinstance(info, mi.CustomType) and info.cls is ID:
            return ID.new()
        if isinstance(info, mi.UnionType):
            members = [m for m in info.types if not isinstance(_unwrap(m), mi.NoneType)]
            return self.value(members[0], name)
        if isinstance(info, mi.ListType | mi.VarTupleType):
            return [self.value(info.item_type, name)]
        if isinstance(info, mi.TupleType):
            return [self.value(item, name) for item in info.item_types]
        if isinstance(info, mi.DictType):
            return {self.value(info.key_type, name): self.value(info.value_type, name)}
        if isinstance(info, mi.StructType):
            return {f.encode_name: self.value(f.type, f.encode_name) for f in info.fields}
        raise AssertionError(f"field `{name}`: no sample value for {info}")


def replaced(value: Any, path: Path, new: Any) -> Any:
    """A copy of `value` with the item at `path` replaced by `new`."""
    if not path:
        return new
    step, rest = path[0], path[1:]
    if step is KEY:
        ((key, item),) = value.items()
        return {replaced(key, rest, new): item}
    if step is VALUE:
        ((key, item),) = value.items()
        return {key: replaced(item, rest, new)}
    if isinstance(value, list):
        copy = list(value)
        copy[step] = replaced(value[step], rest, new)
        return copy
    return {**value, step: replaced(value[step], rest, new)}


# Cases


@dataclass(frozen=True)
class Case:
    kind: str  # handshake type of the session
    cmd: str
    field: str  # the request field the server must name when it refuses the value
    path: Path
    value: Any
    expected: str  # "served", "bad_message" or "invalid_msg_format" (then closed)
    frame: bytes

    def __str__(self) -> str:
        where = ".".join(
            "<key>" if s is KEY else "<value>" if s is VALUE else str(s) for s in self.path
        )
        return f"[{self.kind}] {self.cmd} {where}={self.value!r} (expected {self.expected})"

    def problem(self, rep: dict[str, Any]) -> str | None:
        """What is wrong with the reply `rep`, or None."""
        if not isinstance(rep.get("status"), str):
            return f"{self}: reply without a str status: {rep!r}"
        if self.expected == "served":
            if rep["status"] in NOT_SERVED:
                return f"{self}: refused: {rep!r}"
        elif self.expected == "bad_message":
            errors = rep.get("errors")
            if (
                rep.get("status") != "bad_message"
                or rep.get("reason") != "Invalid message."
                or not isinstance(errors, dict)
                or list(errors) != [self.field]
            ):
                return f"{self}: expected bad_message naming `{self.field}`, got {rep!r}"
        elif rep != INVALID_MSG_FORMAT:
            return f"{self}: expected invalid_msg_format, got {rep!r}"
        return None


def _case(
    kind: str,
    cmd: str,
    base: dict[str, Any],
    path: Path,
    value: Any,
    expected: str,
    sent: Any = None,
) -> Case:
    """`base` with `value` at `path` (sent as `sent` if given)."""
    frame = codec.encode(replaced(base, path, value if sent is None else sent))
    return Case(kind, cmd, path[0], path, value, expected, frame)


def build_cases(commands: dict[str, list[Command]], which: str, samples: Samples) -> list[Case]:
    """`which`: "int", "timestamp" or "text"."""
    cases = []
    unbounded = []
    for kind, kind_commands in commands.items():
        for command in kind_commands:
            info = mi.type_info(command.req_type)
            assert isinstance(info, mi.StructType)
            cmd = command_name(command.req_type)
            base = {"cmd": cmd, **samples.value(info, cmd)}
            for path, leaf in leaves(info, ()):
                field = path[0]
                case = functools.partial(_case, kind, cmd, base, path)
                if which == "int" and isinstance(leaf, mi.IntType):
                    bounds = int_bounds(leaf)
                    if bounds is None or not INT64_MIN <= bounds[0] <= bounds[1] <= INT64_MAX:
                        unbounded.append(f"{cmd}.{field}: {leaf}")
                        continue
                    low, high = bounds
                    values = {*BOUNDARY_INTS, low, high, low - 1, high + 1}
                    for value in sorted(v for v in values if INT64_MIN <= v <= UINT64_MAX):
                        cases.append(
                            case(value, "served" if low <= value <= high else "bad_message")
                        )
                elif which == "timestamp" and isinstance(leaf, mi.CustomType):
                    for seconds in VALID_TIMESTAMPS:
                        cases.append(case(seconds, "served", timestamp_ext(seconds)))
                    for seconds in INVALID_TIMESTAMPS:
                        cases.append(case(seconds, "invalid_msg_format", timestamp_ext(seconds)))
                elif which == "text" and is_text_leaf(leaf):
                    valid = samples.value(leaf, field)
                    for value in (f"{valid}\x00", f"\x00{valid}", "\x00"):
                        cases.append(case(value, "bad_message"))
    assert not unbounded, f"integer fields without a range within int64: {unbounded}"
    return cases


# Sessions


Opener = Callable[[], Awaitable[ClientConnection]]


async def openers(server: RunningServer, org: Organization) -> dict[str, Opener]:
    ws = await authenticated_ws(org.alice)
    rep = await send_cmd(ws, "invite_new", type="DEVICE", send_email=False)
    await ws.close()
    assert rep["status"] == "ok", rep
    token: ID = rep["token"]

    async def invited() -> ClientConnection:
        ws = await raw_connect(server.addr)
        await ws.recv()  # the challenge
        answer = InvitedAnswer(
            organization_id=org.organization_id,
            invitation_type=InvitationType.DEVICE,
            token=token,
        )
        await ws.send(build_answer(API_V2, answer))
        assert await recv_map(ws) == {"handshake": "result", "result": "ok"}
        return ws

    return {
        "authenticated_v2": lambda: authenticated_ws(org.alice, API_V2),
        "authenticated_v1": lambda: authenticated_ws(org.alice, API_V1),
        "invited": invited,
        "anonymous": lambda: anonymous_ws(server.addr, org.organization_id),
        "administration": lambda: administration_ws(server.addr),
    }


async def _replies_of_pipelined(open_ws: Opener, cases: list[Case]) -> list[str]:
    """Send every case then a ping on one connection; check the replies in order."""
    problems = []
    ws = await open_ws()
    for case in cases:
        await ws.send(case.frame)
    await ws.send(PING)
    for case in cases:
        try:
            rep = await recv_reply(ws)
        except ConnectionClosed:
            return [*problems, f"{case}: connection closed with code {ws.close_code}"]
        problem = case.problem(rep)
        if problem:
            problems.append(problem)
    try:
        pong = await recv_reply(ws)
    except ConnectionClosed:
        return [*problems, f"ping after the probes: connection closed with code {ws.close_code}"]
    if pong != PONG:
        problems.append(f"ping after the probes: got {pong!r}")
    await ws.close()
    return problems


async def _reply_then_close(open_ws: Opener, case: Case) -> str | None:
    ws = await open_ws()
    await ws.send(case.frame)
    try:
        rep = await recv_reply(ws)
    except ConnectionClosed:
        return f"{case}: closed with code {ws.close_code} without reply"
    problem = case.problem(rep)
    if problem:
        await ws.close()
        return problem
    try:
        extra = await asyncio.wait_for(ws.recv(), TIMEOUT)
    except ConnectionClosed:
        if ws.close_code != 1000:
            return f"{case}: closed with code {ws.close_code} instead of 1000"
        return None
    await ws.close()
    return f"{case}: connection still open after invalid_msg_format (got {extra!r})"


async def existing_objects(org: Organization) -> dict[str, Any]:
    """A realm of alice holding one vlob."""
    realm_id = await new_realm(org.alice)
    vlob_id = ID.new()
    async with await org.alice.connect() as conn:
        assert await vlob_create(conn, realm_id, vlob_id) == {"status": "ok"}
    return {"realm_id": realm_id, "vlob_id": vlob_id}


async def run(server: RunningServer, org: Organization, which: str) -> list[Case]:
    samples = Samples(await existing_objects(org))
    cases = build_cases(CommandTables(server.app).commands, which, samples)
    await run_cases(server, org, cases)
    return cases


async def run_cases(server: RunningServer, org: Organization, cases: list[Case]) -> None:
    assert cases
    open_ws = await openers(server, org)
    kinds = {case.kind for case in cases}
    assert kinds <= set(open_ws), f"no session for handshake types {kinds - set(open_ws)}"
    problems: list[str] = []
    for kind in sorted(kinds):
        kept_open = [c for c in cases if c.kind == kind and c.expected != "invalid_msg_format"]
        if kept_open:
            problems += await _replies_of_pipelined(open_ws[kind], kept_open)
        closing = [c for c in cases if c.kind == kind and c.expected == "invalid_msg_format"]
        for start in range(0, len(closing), 8):  # a few connections at a time
            results = await asyncio.gather(
                *(_reply_then_close(open_ws[kind], c) for c in closing[start : start + 8])
            )
            problems += [p for p in results if p]
    assert not problems, "\n".join(problems)


# Tests


async def test_every_integer_field_is_served_in_its_range_and_refused_beyond(
    server: RunningServer, org: Organization
) -> None:
    cases = await run(server, org, "int")
    assert {c.cmd for c in cases} >= {"vlob_update", "message_get", "human_find", "user_find"}


async def test_every_timestamp_field_takes_years_1_to_9999_and_closes_on_other_values(
    server: RunningServer, org: Organization
) -> None:
    cases = await run(server, org, "timestamp")
    assert {c.cmd for c in cases} >= {"vlob_create", "organization_update", "vlob_read"}


async def test_a_nul_character_in_any_string_field_is_bad_message(
    server: RunningServer, org: Organization
) -> None:
    cases = await run(server, org, "text")
    assert {c.cmd for c in cases} >= {"ping", "invite_new", "human_find", "user_get"}


# Certificates: signed payloads the server decodes


def signed(certificate: msgspec.Struct, key: SigningKey, **changes: Any) -> bytes:
    """`certificate` with some fields replaced by raw values, signed with `key`."""
    fields = codec.decode_any(codec.encode(certificate))
    fields.update(changes)
    return sign(key, zlib.compress(codec.encode(fields)))


def certificate_requests(org: Organization, **changes: Any) -> list[tuple[str, dict[str, Any]]]:
    """(handshake type, request) of every command carrying a certificate, each certificate
    holding `changes`."""
    alice = org.alice
    key = alice.signing_key
    new = new_user_by(alice, "zoe", human_handle=("zoe@example.com", "Zoe"), device_label="pc")
    device = device_certificate(alice, "alice@new", device_label="new pc")
    root_key = SigningKey.generate()
    root = new_user(
        None,
        root_key,
        "root",
        human_handle=("r@example.com", "R"),
        device_label="x",
        profile=UserProfile.ADMIN,
    )
    role = RealmRoleCertificate(
        author=alice.device_id,
        timestamp=DateTime.now(),
        realm_id=ID.new(),
        user_id=alice.user_id,
        role=RealmRole.OWNER,
    )
    revoked = RevokedUserCertificate(
        author=alice.device_id, timestamp=DateTime.now(), user_id=org.bob.user_id
    )
    user_fields = {
        "user_certificate": signed(new.user, key, **changes),
        "device_certificate": signed(new.device, key, **changes),
    }
    return [
        (
            "authenticated_v2",
            {
                "cmd": "user_create",
                **user_fields,
                "redacted_user_certificate": signed(new.redacted_user, key, **changes),
                "redacted_device_certificate": signed(new.redacted_device, key, **changes),
            },
        ),
        ("authenticated_v1", {"cmd": "user_create", **user_fields}),
        (
            "authenticated_v2",
            {
                "cmd": "device_create",
                "device_certificate": signed(device, key, **changes),
                "redacted_device_certificate": signed(device, key, **changes),
            },
        ),
        (
            "authenticated_v1",
            {
                "cmd": "device_create",
                "device_certificate": signed(device, key, **changes),
                "encrypted_answer": b"",
            },
        ),
        (
            "authenticated_v2",
            {
                "cmd": "user_revoke",
                "revoked_user_certificate": signed(revoked, key, **changes),
            },
        ),
        (
            "authenticated_v2",
            {"cmd": "realm_create", "role_certificate": signed(role, key, **changes)},
        ),
        (
            "authenticated_v2",
            {
                "cmd": "realm_update_roles",
                "role_certificate": signed(role, key, **changes),
                "recipient_message": None,
            },
        ),
        (
            "anonymous",
            {
                "cmd": "organization_bootstrap",
                "bootstrap_token": "x",
                "root_verify_key": bytes(root_key.verify_key),
                "user_certificate": signed(root.user, root_key, **changes),
                "device_certificate": signed(root.device, root_key, **changes),
            },
        ),
    ]


async def assert_invalid_certification(
    server: RunningServer, org: Organization, requests: list[tuple[str, dict[str, Any]]]
) -> None:
    open_ws = await openers(server, org)
    for kind in sorted({kind for kind, _ in requests}):
        ws = await open_ws[kind]()
        for request_kind, request in requests:
            if request_kind == kind:
                rep = await send_cmd(ws, **request)
                assert rep["status"] == "invalid_certification", (kind, request["cmd"], rep)
        assert await send_cmd(ws, "ping", ping="after") == {"status": "ok", "pong": "after"}
        await ws.close()


async def test_a_certificate_holding_an_invalid_timestamp_is_invalid_certification(
    server: RunningServer, org: Organization
) -> None:
    requests = [
        request
        for seconds in INVALID_TIMESTAMPS
        for request in certificate_requests(org, timestamp=timestamp_ext(seconds))
    ]
    await assert_invalid_certification(server, org, requests)


async def test_a_nul_character_in_a_certificate_is_invalid_certification(
    server: RunningServer, org: Organization
) -> None:
    requests = [
        (kind, request)
        for changes in (
            {"device_label": "pc\x00"},
            {"human_handle": ["zoe@example.com", "Zoe\x00"]},
            {"human_handle": ["zoe@example.com\x00", "Zoe"]},
        )
        for kind, request in certificate_requests(org, **changes)
        # a change that names no field of the command's certificates changes nothing
        if request["cmd"] in ("user_create", "organization_bootstrap")
        or (request["cmd"] == "device_create" and "device_label" in changes)
    ]
    assert len(requests) == 11
    await assert_invalid_certification(server, org, requests)


async def test_a_device_label_longer_than_254_characters_is_invalid_certification(
    server: RunningServer, org: Organization
) -> None:
    # The column of Parsec 2.0.0's layout is a VARCHAR(254): characters, not bytes.
    label = "é" * (DEVICE_LABEL_MAX_LENGTH + 1)
    requests = [
        (kind, request)
        for kind, request in certificate_requests(org, device_label=label)
        if request["cmd"] in ("user_create", "device_create", "organization_bootstrap")
    ]
    assert len(requests) == 5
    await assert_invalid_certification(server, org, requests)


def test_the_walk_finds_nested_fields() -> None:
    from parsec_server.api.protocol.realm import RealmStartReencryptionMaintenanceReq
    from parsec_server.api.protocol.vlob import VlobMaintenanceSaveReencryptionBatchReq

    paths = [p for p, _ in leaves(mi.type_info(VlobMaintenanceSaveReencryptionBatchReq), ())]
    assert ("batch", 0, "version") in paths
    paths = [p for p, _ in leaves(mi.type_info(RealmStartReencryptionMaintenanceReq), ())]
    assert ("per_participant_message", KEY) in paths
    assert ("timestamp",) in paths
    assert replaced({"a": [{"b": 1}], "d": {"k": 2}}, ("a", 0, "b"), 3) == {
        "a": [{"b": 3}],
        "d": {"k": 2},
    }
    assert replaced({"d": {"k": 2}}, ("d", KEY), "z") == {"d": {"z": 2}}
