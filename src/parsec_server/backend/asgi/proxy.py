"""Behind a reverse proxy: which peers' `X-Forwarded-For` / `X-Forwarded-Proto` headers are
believed (`--proxy-trusted-addresses`, docs/deployment.md).

The headers themselves are applied by uvicorn's proxy headers middleware (on plain HTTP
requests and websocket upgrades alike): from a trusted peer, the ASGI `client` becomes the
rightmost address of `X-Forwarded-For` that is not itself trusted, and the `scheme` the
value of `X-Forwarded-Proto`; from any other peer both headers are ignored. This module
validates the setting (uvicorn silently treats a malformed entry as a host name that never
matches) and reads the resulting peer address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

TRUST_EVERY_PEER = "*"
_SEPARATORS = re.compile(r"[\s,]+")


def parse_trusted_addresses(text: str) -> tuple[str, ...]:
    """`"10.0.0.1, 192.168.0.0/16 ::1"` -> normalized entries; `*` alone trusts every
    peer. A network's host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`). Raises
    ValueError naming the first entry that is neither an IP address nor a network."""
    entries = [entry for entry in _SEPARATORS.split(text.strip()) if entry]
    if entries == [TRUST_EVERY_PEER]:
        return (TRUST_EVERY_PEER,)
    normalized: list[str] = []
    for entry in entries:
        try:
            if "/" in entry:
                normalized.append(str(ipaddress.ip_network(entry, strict=False)))
            else:
                normalized.append(str(ipaddress.ip_address(entry)))
        except ValueError:
            if entry == TRUST_EVERY_PEER:
                raise ValueError("`*` (every peer) cannot be combined with addresses") from None
            raise ValueError(
                f"`{entry}` is neither an IP address nor a network such as 10.0.0.0/8"
            ) from None
    return tuple(dict.fromkeys(normalized))


def peer_address(scope: Mapping[str, Any]) -> str | None:
    """The client's IP address of an ASGI scope (after the proxy headers were applied)."""
    client = scope.get("client")
    return str(client[0]) if client else None
