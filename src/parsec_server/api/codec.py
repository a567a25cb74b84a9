"""msgpack codec of the Parsec protocol.

The wire has two extension types: 1 = timestamp (big-endian float64 seconds since the
epoch, UTC) and 2 = UUID (16 raw bytes). msgspec writes `datetime` and `uuid.UUID` in
other forms, so both get their own small classes here, encoded by `enc_hook` and decoded
by `ext_hook`.
"""

from __future__ import annotations

import struct
import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

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


# The reference decoder's limits (protocol/10-transport.md §3); msgspec has none.
MAX_STR_BYTES = MAX_BIN_BYTES = MAX_EXT_BYTES = 1024 * 1024
MAX_ARRAY_LENGTH = 131072
MAX_MAP_LENGTH = 32768
_SMALLEST_OVER_LIMIT = 2 * MAX_MAP_LENGTH


def check_limits(value: Any) -> None:
    """Raise CodecError if a decoded value holds a str, bin, ext, array or map over the
    protocol's limits (iterative: nesting depth is already bounded by the decoder)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            # Cheap test first: a str of at most MAX/4 characters fits in MAX UTF-8 bytes.
            if len(item) > MAX_STR_BYTES // 4 and len(item.encode("utf8")) > MAX_STR_BYTES:
                raise CodecError("str over the size limit")
        elif isinstance(item, bytes):
            if len(item) > MAX_BIN_BYTES:
                raise CodecError("bin over the size limit")
        elif isinstance(item, list | tuple):
            if len(item) > MAX_ARRAY_LENGTH:
                raise CodecError("array over the size limit")
            stack.extend(item)
        elif isinstance(item, dict):
            if len(item) > MAX_MAP_LENGTH:
                raise CodecError("map over the size limit")
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, msgspec.msgpack.Ext) and memoryview(item.data).nbytes > MAX_EXT_BYTES:
            raise CodecError("ext over the size limit")


def decode_checked(raw: bytes) -> Any:
    """Decode a whole message as the reference does before looking at any field: every
    value is checked (UTF-8, ext payloads, limits), including fields nobody will read."""
    value = decode_any(raw)
    # No limit can be exceeded by a message smaller than the smallest one (a map of
    # MAX_MAP_LENGTH entries needs at least two bytes per entry): skip the walk.
    if len(raw) > _SMALLEST_OVER_LIMIT:
        check_limits(value)
    return value
