"""What a handler of the administration API gets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from parsec_server.backend.audit import Actor

if TYPE_CHECKING:
    from parsec_server.backend.app import BackendApp


@dataclass(frozen=True, slots=True)
class AdminRequest:
    app: BackendApp
    # Who acts, for the audit log: the administration token's holder, at the peer's address.
    actor: Actor
    # The path's `{name}` segments, percent-decoded.
    path: dict[str, str]
    # The route's query and body structs, decoded and validated (None without one).
    query: Any
    body: Any
