"""Clock tolerances: the protocol's ballpark, and the narrower window of role certificates."""

from __future__ import annotations

from parsec_server.api.codec import DateTime

BALLPARK_SECONDS = 1800.0

# A realm role certificate may be dated at most this far ahead of the server's clock (its
# past tolerance stays the ballpark). The current role of a user is the certificate with the
# greatest timestamp and a later certificate must be strictly later than it: a grant dated
# far ahead would postpone any change of that role for as long (docs/deviations.md).
ROLE_CERTIFICATE_MAX_AHEAD_SECONDS = 300.0


def timestamps_in_the_ballpark(ts: DateTime, now: DateTime) -> bool:
    return abs(ts.timestamp() - now.timestamp()) < BALLPARK_SECONDS


def role_certificate_timestamp_acceptable(ts: DateTime, now: DateTime) -> bool:
    """Within the ballpark in the past, at most 5 minutes in the future."""
    ahead = ts.timestamp() - now.timestamp()
    return -BALLPARK_SECONDS < ahead <= ROLE_CERTIFICATE_MAX_AHEAD_SECONDS
