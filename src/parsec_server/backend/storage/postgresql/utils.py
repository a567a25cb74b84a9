from __future__ import annotations

from datetime import UTC, datetime

from parsec_server.api.codec import DateTime


def to_datetime(value: datetime | None) -> DateTime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        # asyncpg writes datetime.min/max (years 1 and 9999's ends) as -infinity/infinity
        # and reads those back as naive datetime.min/max.
        value = value.replace(tzinfo=UTC)
    return DateTime(value)


def to_db_datetime(value: DateTime | None) -> datetime | None:
    return None if value is None else value.dt
