"""The one clock tolerance of the protocol."""

from __future__ import annotations

from parsec_server.api.codec import DateTime

BALLPARK_SECONDS = 1800.0


def timestamps_in_the_ballpark(ts: DateTime, now: DateTime) -> bool:
    return abs(ts.timestamp() - now.timestamp()) < BALLPARK_SECONDS
