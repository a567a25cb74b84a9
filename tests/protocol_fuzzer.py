"""A protocol-level fuzzer: mutated request frames sent over real websocket sessions of
every kind (authenticated API 2 and 1, anonymous, administration, invited), each outcome
classified (docs/frame-outcomes.md). Used by tests/backend/test_protocol_fuzz.py (a few
thousand frames) and bench/fuzz_frames.py (a million, against a server it starts).

One more session kind sends mutated handshake answers, one per connection.

The seeds are request frames of every command of every table, with values of the right
types (from the request structs, msgspec.inspect) and real identifiers of the organization;
each frame sent is a seed mutated: bit flips, byte changes, truncations, insertions, field
swaps, fields from other commands, boundary integers, wrong types, extra fields, nesting.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from parsec_server.api import codec
from parsec_server.api.addr import BackendAddr
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
from parsec_server.client.connection import AdministrationAuth, BackendConnection
from parsec_server.client.device import LocalDevice
from parsec_server.client.invite import new_user_invitation
from tests.fixtures.commands import OFFLINE_TABLES
from tests.fixtures.servers import create_org_at

# Commands that may wait by design (for an event, or for the peer of an invitation).
_WAIT_PREFIXES = ("invite_1_", "invite_2a_", "invite_2b_", "invite_3a_", "invite_3b_", "invite_4_")
WAIT_GRACE = 1.0  # seconds a waiting command is given before the session is dropped
REPLY_TIMEOUT = 10.0  # seconds: no reply nor close within this is a hang
KEPT_EXAMPLES = 5


TABLES = OFFLINE_TABLES
WAITING = {
    command.name
    for table in TABLES.values()
    for command in table._by_name.values()
    if command.breathing or command.name.startswith(_WAIT_PREFIXES)
}

# Strings that storage layers and regular expressions treat specially.
ODD_STRINGS = ["\x00", "alice\x00", "a\nb", "alice\n", "\u2028", "é" * 40, "x" * 300, " ", "%", "_"]

BOUNDARY_INTS = [0, 1, -1, 127, 128, 255, 256, 65535, 65536, 2**31 - 1, 2**31, -(2**31)]
BOUNDARY_INTS += [2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)]


# --- the organization and its sessions -------------------------------------------------------


@dataclass
class Targets:
    addr: BackendAddr
    administration_token: str
    organization_id: str
    alice: LocalDevice  # ADMIN
    bob: LocalDevice  # STANDARD
    mallory: LocalDevice  # OUTSIDER
    invitation: codec.ID  # a user invitation of alice's
    _repairing: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def repair(self) -> None:
        """Undo what mutated requests may legitimately do to the sessions' identities: an
        organization_update setting an expiration date, an invite_delete of the
        invitation."""
        async with self._repairing:
            admin = await BackendConnection.connect(
                self.addr, AdministrationAuth(self.administration_token)
            )
            async with admin:
                await admin.cmd(
                    "organization_update",
                    organization_id=self.organization_id,
                    expiration_date=None,
                )
            async with await self.alice.connect() as conn:
                await conn.cmd("invite_delete", token=self.invitation, reason="FINISHED")
                self.invitation = await new_user_invitation(conn, "zack@example.com")

    def known_values(self) -> list[Any]:
        """Real identifiers, so that mutated requests reach deep into the handlers."""
        return [
            self.organization_id,
            self.alice.user_id,
            self.bob.device_id,
            self.mallory.user_id,
            self.alice.device_id,
            self.invitation,
            self.alice.root_verify_key,
            bytes(self.bob.signing_key.verify_key),
            self.alice.user_manifest_id,
        ]


async def setup_targets(addr: BackendAddr, administration_token: str) -> Targets:
    organization_id = f"Fuzz{random.getrandbits(48):012x}"
    org = await create_org_at(addr, administration_token, organization_id)
    alice, bob, mallory = org.alice, org.bob, org.mallory
    async with await alice.connect() as conn:
        invitation = await new_user_invitation(conn, "zack@example.com")
    return Targets(addr, administration_token, organization_id, alice, bob, mallory, invitation)


SESSION_KINDS = [
    ("authenticated_v2", "alice"),
    ("authenticated_v2", "bob"),
    ("authenticated_v2", "mallory"),
    ("authenticated_v1", "alice"),
    ("anonymous", ""),
    ("administration", ""),
    ("invited", ""),
]


def _answer(targets: Targets, kind: str, who: str, challenge: bytes) -> bytes:
    answer: Answer
    if kind.startswith("authenticated"):
        device: LocalDevice = getattr(targets, who)
        cls = AuthenticatedAnswer if kind.endswith("v2") else APIV1AuthenticatedAnswer
        answer = cls(
            organization_id=device.organization_id,
            device_id=device.device_id,
            rvk=device.root_verify_key,
            answer=sign(device.signing_key, challenge),
        )
        return build_answer(API_V2 if kind.endswith("v2") else API_V1, answer)
    if kind == "anonymous":
        return build_answer(API_V1, APIV1AnonymousAnswer(organization_id=targets.organization_id))
    if kind == "administration":
        return build_answer(API_V1, APIV1AdministrationAnswer(token=targets.administration_token))
    answer = InvitedAnswer(
        organization_id=targets.organization_id,
        invitation_type=InvitationType.USER,
        token=targets.invitation,
    )
    return build_answer(API_V2, answer)


async def open_session(targets: Targets, kind: str, who: str) -> ClientConnection:
    ws = await connect(
        f"ws://{targets.addr.hostname}:{targets.addr.port}/ws",
        compression=None,
        ping_interval=None,
        max_size=None,
        open_timeout=REPLY_TIMEOUT,
    )
    raw = await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT)
    assert isinstance(raw, bytes)
    challenge = challenge_decoder.decode(raw).challenge
    await ws.send(_answer(targets, kind, who, challenge))
    result = codec.decode_any(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT))  # type: ignore[arg-type]
    if result != {"handshake": "result", "result": "ok"}:
        await ws.close()
        raise RefusedSession(f"handshake {kind} {who}: {result}")
    return ws


class RefusedSession(RuntimeError):
    """The handshake was refused (organization expired, invitation deleted...)."""


# --- seeds and mutations ---------------------------------------------------------------------


class Mutator:
    def __init__(self, rng: random.Random, targets: Targets) -> None:
        self.rng = rng
        self.known = targets.known_values()
        self.seeds: dict[str, list[dict[str, Any]]] = {
            kind: [
                {"cmd": command.name, **self.typed_fields(command.req_type)}
                for command in table._by_name.values()
                for _ in range(3)
            ]
            for kind, table in TABLES.items()
        }
        self.all_seeds = [seed for seeds in self.seeds.values() for seed in seeds]

    # Values

    def scalar(self) -> Any:
        rng = self.rng
        pick = rng.randrange(12)
        if pick == 0:
            return rng.choice([None, True, False])
        if pick == 1:
            return rng.choice(BOUNDARY_INTS)
        if pick == 2:
            return rng.randrange(-(2**63), 2**64)
        if pick == 3:
            return rng.choice([0.0, -0.0, 1.5, float("inf"), float("nan"), 1e300])
        if pick == 4:
            if rng.random() < 0.3:
                return rng.choice(ODD_STRINGS)
            return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(12)))
        if pick == 5:
            return rng.randbytes(rng.choice([0, 1, 16, 31, 32, 33, 64, 200]))
        if pick == 6:
            return codec.ID.new()
        if pick == 7:
            return msgspec.msgpack.Ext(
                1, struct.pack(">d", rng.choice([0.0, 1e9, 2e9, -1e11, 1e12, 1e20]))
            )
        if pick == 8:
            return msgspec.msgpack.Ext(rng.randrange(-128, 128), rng.randbytes(rng.randrange(20)))
        if pick == 9:
            return codec.DateTime.now()
        return rng.choice(self.known)

    def anything(self, depth: int = 0) -> Any:
        rng = self.rng
        pick = rng.random()
        if depth > 3 or pick < 0.7:
            return self.scalar()
        if pick < 0.85:
            return [self.anything(depth + 1) for _ in range(rng.randrange(4))]
        return {
            rng.choice(["a", "cmd", "", "x" * 3, 1]): self.anything(depth + 1)
            for _ in range(rng.randrange(3))
        }

    def typed(self, info: msgspec.inspect.Type, depth: int = 0) -> Any:
        """A value of the type (a good-looking one, mostly)."""
        inspect = msgspec.inspect
        rng = self.rng
        if isinstance(info, inspect.Metadata):
            return self.typed(info.type, depth)
        if isinstance(info, inspect.StrType):
            return rng.choice([*[k for k in self.known if isinstance(k, str)], "x", "name#1", ""])
        if isinstance(info, inspect.BytesType):
            return rng.randbytes(rng.choice([0, 16, 32, 64, 120]))
        if isinstance(info, inspect.IntType):
            edges = [v for v in (info.ge, info.le, info.gt, info.lt) if v is not None]
            return rng.choice([*edges, *(e + 1 for e in edges), *(e - 1 for e in edges), 0, 1, 7])
        if isinstance(info, inspect.FloatType):
            return rng.random()
        if isinstance(info, inspect.BoolType):
            return rng.random() < 0.5
        if isinstance(info, inspect.NoneType):
            return None
        if isinstance(info, inspect.LiteralType):
            return rng.choice(list(info.values))
        if isinstance(info, inspect.EnumType):
            return rng.choice([member.value for member in info.cls])
        if isinstance(info, inspect.ListType | inspect.VarTupleType):
            return [self.typed(info.item_type, depth + 1) for _ in range(rng.randrange(3))]
        if isinstance(info, inspect.DictType):
            return {
                self.typed(info.key_type, depth + 1): self.typed(info.value_type, depth + 1)
                for _ in range(rng.randrange(3))
            }
        if isinstance(info, inspect.UnionType):
            return self.typed(rng.choice(info.types), depth)
        if isinstance(info, inspect.StructType):
            return self.typed_fields(info.cls)
        if isinstance(info, inspect.CustomType):
            if info.cls is codec.ID:
                return rng.choice([codec.ID.new(), self.known[5]])
            if info.cls is codec.DateTime:
                return codec.DateTime.now().add(rng.choice([0, -3600, 3600, -1e9]))
        return self.anything(depth)

    def typed_fields(self, req_type: Any) -> dict[str, Any]:
        info = msgspec.inspect.type_info(req_type)
        assert isinstance(info, msgspec.inspect.StructType)
        return {f.encode_name: self.typed(f.type) for f in info.fields}

    # Frames

    def answer(self, targets: Targets, challenge: bytes) -> bytes:
        """A handshake answer of any kind, mutated like the requests."""
        rng = self.rng
        kind, who = rng.choice(SESSION_KINDS)
        fields = codec.decode_any(_answer(targets, kind, who, challenge))
        for _ in range(rng.choice([0, 1, 1, 2])):
            self._mutate_fields(fields)
        try:
            raw = bytearray(codec.encode(fields))
        except (OverflowError, TypeError, ValueError):
            raw = bytearray(_answer(targets, kind, who, challenge))
        if rng.random() < 0.4:
            for _ in range(rng.choice([1, 1, 2, 4])):
                self._mutate_bytes(raw)
        return bytes(raw)

    def frame(self, kind: str) -> bytes:
        rng = self.rng
        seed = dict(rng.choice(self.seeds[kind]))
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            self._mutate_fields(seed)
        try:
            raw = bytearray(codec.encode(seed))
        except (OverflowError, TypeError, ValueError):
            raw = bytearray(codec.encode({"cmd": seed.get("cmd"), "ping": "?"}))
        if rng.random() < 0.45:
            for _ in range(rng.choice([1, 1, 2, 4])):
                self._mutate_bytes(raw)
        return bytes(raw)

    def _mutate_fields(self, fields: dict[str, Any]) -> None:
        rng = self.rng
        names = list(fields)
        pick = rng.randrange(10)
        if pick == 0 and len(names) > 1:  # two fields swap their values
            a, b = rng.sample(names, 2)
            fields[a], fields[b] = fields[b], fields[a]
        elif pick == 1 and names:  # a field of another command
            other = rng.choice(self.all_seeds)
            name = rng.choice(list(other))
            fields[name] = other[name]
        elif pick == 2 and names:  # a boundary integer
            fields[rng.choice(names)] = rng.choice(BOUNDARY_INTS)
        elif pick == 3 and names:  # anything, of any type
            fields[rng.choice(names)] = self.anything()
        elif pick == 4 and names:
            del fields[rng.choice(names)]
        elif pick == 5:  # an extra field
            fields[rng.choice(["extra", "cmd2", "", "é", "wait"])] = self.anything()
        elif pick == 6:  # another command's name
            fields["cmd"] = rng.choice(self.all_seeds)["cmd"]
        elif pick == 7 and names:  # a container where a scalar was, or deeper nesting
            name = rng.choice(names)
            fields[name] = rng.choice([[fields[name]], {"x": fields[name]}, [[[]]], {}])
        elif pick == 8 and names:  # a real identifier
            fields[rng.choice(names)] = rng.choice(self.known)
        elif names:  # the value of a well-typed field of the same name elsewhere
            fields[rng.choice(names)] = self.scalar()

    def _mutate_bytes(self, raw: bytearray) -> None:
        rng = self.rng
        if not raw:
            raw.append(rng.randrange(256))
            return
        position = rng.randrange(len(raw))
        pick = rng.randrange(6)
        if pick == 0:
            raw[position] ^= 1 << rng.randrange(8)
        elif pick == 1:
            raw[position] = rng.choice([0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xCF, 0xDD, 0xDF, 0xFF])
        elif pick == 2:
            del raw[max(1, position) :]
        elif pick == 3:
            raw[position:position] = codec.encode(rng.choice(BOUNDARY_INTS))
        elif pick == 4:
            raw[position:position] = rng.randbytes(rng.randrange(1, 5))
        else:
            del raw[position : position + rng.randrange(1, 4)]


# --- running ----------------------------------------------------------------------------------


@dataclass
class Stats:
    frames: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    close_codes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    reconnects: int = 0
    worker_errors: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def keep(self, outcome: str, kind: str, frame: bytes) -> None:
        kept = self.examples.setdefault(outcome, [])
        if len(kept) < KEPT_EXAMPLES:
            kept.append(f"{kind}: {frame.hex()}")

    @property
    def bugs(self) -> int:
        return sum(count for outcome, count in self.outcomes.items() if outcome.startswith("BUG"))

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        lines = [
            f"{self.frames} frames in {elapsed:.0f} s ({self.frames / max(elapsed, 1e-9):.0f}/s),"
            f" {self.reconnects} reconnections"
        ]
        lines += [f"  {outcome}: {count}" for outcome, count in sorted(self.outcomes.items())]
        if self.worker_errors:
            lines.append(f"  BUG sessions given up: {self.worker_errors}")
        lines.append("  close codes: " + ", ".join(f"{c}={n}" for c, n in self.close_codes.items()))
        top = ", ".join(f"{s}={n}" for s, n in self.statuses.most_common(12))
        lines.append(f"  reply statuses (top): {top}")
        for outcome, kept in self.examples.items():
            if outcome.startswith("BUG"):
                lines.append(f"  {outcome} examples:")
                lines += [
                    f"    {example[:400]}{' ...' if len(example) > 400 else ''}" for example in kept
                ]
        return "\n".join(lines)


def _cmd_of(frame: bytes) -> str | None:
    try:
        codec.check(frame)
    except codec.CodecError:
        return None
    return codec.top_level_str(frame, "cmd")


async def _open(targets: Targets, kind: str, who: str, stats: Stats) -> ClientConnection:
    for _ in range(5):
        try:
            return await open_session(targets, kind, who)
        except RefusedSession:
            stats.outcomes["session refused, repaired"] += 1
            await targets.repair()
        except (OSError, TimeoutError, ConnectionClosed) as exc:
            # The server should always complete a handshake: a refused connection or a
            # handshake without answer is a bug (or the server died).
            stats.outcomes[f"BUG session not opened ({type(exc).__name__})"] += 1
            await asyncio.sleep(1)
    raise RuntimeError(f"no {kind} session could be opened")


async def _handshake_worker(
    targets: Targets, mutator: Mutator, stats: Stats, remaining: Callable[[], bool], share: int
) -> None:
    """Mutated handshake answers (`share` of them): each gets a handshake result (then a
    close unless ok)."""
    sent = 0
    while remaining() and sent < share:
        sent += 1
        ws = await connect(
            f"ws://{targets.addr.hostname}:{targets.addr.port}/ws",
            compression=None,
            ping_interval=None,
            max_size=None,
            open_timeout=REPLY_TIMEOUT,
        )
        stats.reconnects += 1
        try:
            raw = await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT)
            assert isinstance(raw, bytes)
            frame = mutator.answer(targets, challenge_decoder.decode(raw).challenge)
            stats.frames += 1
            await ws.send(frame)
            try:
                reply = codec.decode_any(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT))  # type: ignore[arg-type]
            except TimeoutError:
                outcome = "BUG handshake hang"
            except ConnectionClosed:
                code = ws.close_code
                outcome = "BUG close 1011" if code == 1011 else f"BUG handshake closed ({code})"
            else:
                if isinstance(reply, dict) and reply.get("handshake") == "result":
                    outcome = "handshake result"
                    stats.statuses[f"handshake {reply.get('result')}"] += 1
                elif reply == {"status": "invalid_msg_format", "reason": "Invalid message format"}:
                    outcome = "BUG invalid_msg_format to an answer"
                else:
                    outcome = "BUG handshake reply"
            stats.outcomes[outcome] += 1
            if outcome.startswith("BUG"):
                stats.keep(outcome, "handshake", frame)
        finally:
            await ws.close()


async def _session_worker(
    targets: Targets,
    kind: str,
    who: str,
    mutator: Mutator,
    stats: Stats,
    remaining: Callable[[], bool],
) -> None:
    ws: ClientConnection | None = None
    while remaining():
        if ws is None:
            ws = await _open(targets, kind, who, stats)
            stats.reconnects += 1
        frame = mutator.frame(kind)
        stats.frames += 1
        waits = _cmd_of(frame) in WAITING
        try:
            await ws.send(frame)
            raw = await asyncio.wait_for(ws.recv(), WAIT_GRACE if waits else REPLY_TIMEOUT)
        except TimeoutError:
            outcome = "waiting (by design)" if waits else "BUG hang"
            stats.outcomes[outcome] += 1
            stats.keep(outcome, kind, frame)
            await ws.close()
            ws = None
            continue
        except ConnectionClosed:
            code = ws.close_code
            stats.close_codes[str(code)] += 1
            outcome = "BUG close 1011" if code == 1011 else f"closed without reply ({code})"
            stats.outcomes[outcome] += 1
            stats.keep(outcome, kind, frame)
            ws = None
            continue
        reply = codec.decode_any(raw) if isinstance(raw, bytes) else None
        status = reply.get("status") if isinstance(reply, dict) else None
        if not isinstance(status, str):
            stats.outcomes["BUG reply without status"] += 1
            stats.keep("BUG reply without status", kind, frame)
            await ws.close()
            ws = None
            continue
        stats.statuses[status] += 1
        if status != "invalid_msg_format":
            stats.outcomes["reply"] += 1
            continue
        try:
            extra = await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT)
        except ConnectionClosed:
            stats.close_codes[str(ws.close_code)] += 1
            outcome = (
                "invalid_msg_format then close"
                if ws.close_code == 1000
                else f"BUG invalid_msg_format then close {ws.close_code}"
            )
        except TimeoutError:
            outcome = "BUG invalid_msg_format without close"
        else:
            outcome = f"BUG invalid_msg_format then {extra!r:.40}"
        stats.outcomes[outcome] += 1
        stats.keep(outcome, kind, frame)
        await ws.close()
        ws = None
    if ws is not None:
        await ws.close()


async def fuzz(
    targets: Targets,
    frames: int,
    seed: int = 0,
    sessions_per_kind: int = 1,
    progress: Callable[[Stats], None] | None = None,
    progress_every: float = 30.0,
) -> Stats:
    """Send `frames` mutated frames over concurrent sessions of every kind."""
    stats = Stats()
    rng = random.Random(seed)
    mutator = Mutator(rng, targets)

    stopping = False

    def remaining() -> bool:
        return not stopping and stats.frames < frames

    workers = [
        asyncio.create_task(_session_worker(targets, kind, who, mutator, stats, remaining))
        for kind, who in SESSION_KINDS
        for _ in range(sessions_per_kind)
    ]
    share = frames // (len(workers) + 1)
    workers.append(
        asyncio.create_task(_handshake_worker(targets, mutator, stats, remaining, share))
    )
    try:
        pending = set(workers)
        while pending:
            done, pending = await asyncio.wait(pending, timeout=progress_every)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    # One kind of session lost; the others go on.
                    stats.worker_errors.append(repr(task.exception()))
            if progress is not None:
                progress(stats)
    finally:
        stopping = True  # ends the loops even if a cancellation gets swallowed
        for task in workers:
            task.cancel()
        await asyncio.wait(workers, timeout=REPLY_TIMEOUT * 2)
    return stats


async def server_serves(targets: Targets) -> bool:
    try:
        async with await targets.alice.connect() as conn:
            return await conn.cmd("ping", ping="alive") == {"status": "ok", "pong": "alive"}
    except (OSError, ConnectionClosed, RuntimeError, TimeoutError):
        return False
