"""Values as the SQLite schema stores them (migrations/0001_initial.sql): timestamps as
integer microseconds since the Unix epoch (UTC), UUIDs as their 16 bytes."""

from __future__ import annotations

import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from parsec_server.api.codec import DateTime

T = TypeVar("T")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_db_timestamp(value: DateTime) -> int:
    return (value.dt - _EPOCH) // _MICROSECOND


def to_db_optional_timestamp(value: DateTime | None) -> int | None:
    return None if value is None else (value.dt - _EPOCH) // _MICROSECOND


def from_db_timestamp(value: int) -> DateTime:
    return DateTime(_EPOCH + timedelta(microseconds=value))


def from_db_optional_timestamp(value: int | None) -> DateTime | None:
    return None if value is None else DateTime(_EPOCH + timedelta(microseconds=value))


def now_timestamp() -> int:
    return (datetime.now(UTC) - _EPOCH) // _MICROSECOND


def from_db_uuid(value: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=value)


def complete_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never suspends (it only awaits coroutines that
    complete at once): lets a shared async walk run inside a database thread, on one
    transaction, with synchronous fetches."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("the coroutine suspended")
