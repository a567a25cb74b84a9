"""msgpack codec of the Parsec protocol.

The wire has two extension types: 1 = timestamp (big-endian float64 seconds since the
epoch, UTC) and 2 = UUID (16 raw bytes). msgspec writes `datetime` and `uuid.UUID` in
other forms, so both get their own small classes here, encoded by `enc_hook` and decoded
by `ext_hook`.
"""

from __future__ import annotations

import math
import struct
import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

from parsec_server.api import _msgcheck

_FLOAT64 = struct.Struct(">d")
# The instants a timestamp may hold: the years 1 to 9999, UTC (docs/protocol-limits.md).
_MIN_TIMESTAMP = -62135596800.0  # 0001-01-01T00:00:00Z
_END_TIMESTAMP = 253402300800.0  # 10000-01-01T00:00:00Z, excluded
_EXT_DATETIME = 1
_EXT_UUID = 2

T = TypeVar("T")


class CodecError(Exception):
    """The bytes are not a valid protocol msgpack value."""


class DateTime:
    """A UTC instant with microsecond precision (wire: ext type 1)."""

    __slots__ = ("_dt",)

    def __init__(self, dt: datetime) -> None:
        if dt.tzinfo is None:
            raise ValueError("DateTime needs an aware datetime")
        self._dt = dt.astimezone(UTC)

    @classmethod
    def now(cls) -> DateTime:
        return cls(datetime.now(UTC))

    @classmethod
    def from_timestamp(cls, ts: float) -> DateTime:
        """Raise ValueError unless `ts` is an instant of the years 1 to 9999 (UTC): what
        `datetime` and the reference accept, and PostgreSQL's `timestamptz` holds."""
        # NaN fails both comparisons.
        if not _MIN_TIMESTAMP <= ts < _END_TIMESTAMP:
            raise ValueError(f"Timestamp {ts!r} is out of the years 1 to 9999")
        try:
            dt = datetime.fromtimestamp(ts, UTC)
        except (OverflowError, OSError) as exc:  # rounding to the microsecond at the ends
            raise ValueError(f"Timestamp {ts!r} is out of the years 1 to 9999") from exc
        # Already aware and in UTC: skip `__init__`'s conversion (decoding's hot path).
        instant = cls.__new__(cls)
        instant._dt = dt
        return instant

    @property
    def dt(self) -> datetime:
        return self._dt

    def timestamp(self) -> float:
        return self._dt.timestamp()

    def add(self, seconds: float) -> DateTime:
        return DateTime.from_timestamp(self._dt.timestamp() + seconds)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DateTime) and self._dt == other._dt

    def __lt__(self, other: DateTime) -> bool:
        return self._dt < other._dt

    def __le__(self, other: DateTime) -> bool:
        return self._dt <= other._dt

    def __gt__(self, other: DateTime) -> bool:
        return self._dt > other._dt

    def __ge__(self, other: DateTime) -> bool:
        return self._dt >= other._dt

    def __hash__(self) -> int:
        return hash(self._dt)

    def __repr__(self) -> str:
        return f"DateTime({self._dt.isoformat()})"

    def isoformat(self) -> str:
        return self._dt.isoformat()


class ID:
    """A UUID as the protocol carries it (wire: ext type 2)."""

    __slots__ = ("_uuid",)

    def __init__(self, value: uuid.UUID) -> None:
        self._uuid = value

    @classmethod
    def new(cls) -> ID:
        return cls(uuid.uuid4())

    @classmethod
    def from_hex(cls, text: str) -> ID:
        return cls(uuid.UUID(text))

    @classmethod
    def from_bytes(cls, raw: bytes) -> ID:
        return cls(uuid.UUID(bytes=raw))

    @property
    def uuid(self) -> uuid.UUID:
        return self._uuid

    @property
    def hex(self) -> str:
        return self._uuid.hex

    @property
    def bytes(self) -> bytes:
        return self._uuid.bytes

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ID) and self._uuid == other._uuid

    def __hash__(self) -> int:
        return hash(self._uuid)

    def __repr__(self) -> str:
        return f"ID({self._uuid})"

    def __str__(self) -> str:
        return str(self._uuid)


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, DateTime):
        return msgspec.msgpack.Ext(_EXT_DATETIME, _FLOAT64.pack(obj.timestamp()))
    if isinstance(obj, ID):
        return msgspec.msgpack.Ext(_EXT_UUID, obj.bytes)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def ext_hook(code: int, data: memoryview) -> Any:
    if code == _EXT_DATETIME:
        if len(data) != 8:
            raise ValueError("timestamp extension must be 8 bytes")
        return DateTime.from_timestamp(_FLOAT64.unpack(data)[0])
    if code == _EXT_UUID:
        if len(data) != 16:
            raise ValueError("UUID extension must be 16 bytes")
        return ID(uuid.UUID(bytes=bytes(data)))
    return msgspec.msgpack.Ext(code, bytes(data))


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_any_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(ext_hook=ext_hook)

encode = _encoder.encode


def decoder(type_: type[T]) -> msgspec.msgpack.Decoder[T]:
    """A decoder validating against `type_` (build once, reuse per message)."""
    return msgspec.msgpack.Decoder(type_, ext_hook=ext_hook)


def decode_any(raw: bytes) -> Any:
    try:
        return _any_decoder.decode(raw)
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:
        raise CodecError(str(exc)) from exc


# The reference decoder's limits (protocol/10-transport.md §3); msgspec has none. The C
# scanner enforces them (constants repeated there, checked equal by the tests).
MAX_STR_BYTES = MAX_BIN_BYTES = MAX_EXT_BYTES = 1024 * 1024
MAX_ARRAY_LENGTH = 131072
MAX_MAP_LENGTH = 32768
# Nesting deeper than this is a format error (msgspec alone gives up near Python's recursion
# limit, ~1000, depending on the caller's stack; the reference's msgpack at 1024).
MAX_DEPTH = _msgcheck.MAX_DEPTH


def _timestamp_range() -> tuple[float, float]:
    """The smallest and largest float64 that `DateTime.from_timestamp` accepts, found by
    bisection over the ordered bit patterns of non-negative floats (each bound is exact)."""

    def accepted(ts: float) -> bool:
        try:
            DateTime.from_timestamp(ts)
        except ValueError:
            return False
        return True

    as_bits = struct.Struct(">q")

    def magnitude(bits: int) -> float:
        value: float = _FLOAT64.unpack(as_bits.pack(bits))[0]
        return value

    bounds = []
    for sign in (1.0, -1.0):
        good, bad = 0, as_bits.unpack(_FLOAT64.pack(math.inf))[0]  # bits of 0.0 and inf
        while bad - good > 1:
            middle = (good + bad) // 2
            if accepted(sign * magnitude(middle)):
                good = middle
            else:
                bad = middle
        bounds.append(sign * magnitude(good))
    return bounds[1], bounds[0]


# ext 1 payloads outside this range are format errors (the C scanner compares floats).
TIMESTAMP_MIN, TIMESTAMP_MAX = _timestamp_range()


class CheckTooCostly(Exception):
    """`check` ran out of its budget before the end of the message (not an error)."""


def check(raw: bytes, budget: int = 0) -> None:
    """Raise CodecError unless `raw` is exactly one msgpack value the protocol accepts,
    checked everywhere, fields nobody will read included, as the reference's decoder did:
    valid UTF-8, ext 1/2 payloads, the size limits above. Done in C without building any
    object, a few nanoseconds per value whatever the shape of the message.

    With a `budget` (about one step per value), raise CheckTooCostly past it: the caller
    runs the check again off the event loop, where `budget=0` (no limit) releases the GIL.
    """
    problem = _msgcheck.check(raw, TIMESTAMP_MIN, TIMESTAMP_MAX, budget)
    if problem is None:
        return
    if problem is False:
        raise CheckTooCostly()
    raise CodecError(problem)


def top_level_str(raw: bytes, key: str) -> str | None:
    """The str value of `key` in the top-level map of a `check`ed message, else None;
    the rest of the message is skipped, not decoded."""
    span = _msgcheck.find_str_key(raw, key.encode())
    if span is None:
        return None
    try:
        return _str_decoder.decode(raw[span[0] : span[1]])
    except (msgspec.DecodeError, ValueError):
        return None


def prune(raw: bytes, keep: tuple[bytes, ...]) -> bytes:
    """A `check`ed message without the top-level entries whose key is a str not in `keep`
    (UTF-8 encoded): what a typed decoder would skip, here skipped without the GIL."""
    return _msgcheck.prune(raw, keep)


_str_decoder = msgspec.msgpack.Decoder(str)
