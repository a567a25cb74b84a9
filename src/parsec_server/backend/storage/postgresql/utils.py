from __future__ import annotations

from datetime import datetime

from parsec_server.api.codec import DateTime


def to_datetime(value: datetime | None) -> DateTime | None:
    return None if value is None else DateTime(value)


def to_db_datetime(value: DateTime | None) -> datetime | None:
    return None if value is None else value.dt
