"""What a handler of the administration API gets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from parsec_server.backend.app import BackendApp


@dataclass(frozen=True, slots=True)
class AdminRequest:
    app: BackendApp
    # Who acts, for the audit (`admin_audit`): the REST API and the peer's address.
    actor: str
    # The path's `{name}` segments, percent-decoded.
    path: dict[str, str]
    # The route's query and body structs, decoded and validated (None without one).
    query: Any
    body: Any
