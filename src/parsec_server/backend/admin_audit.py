"""Where administration actions are recorded: the call point for the audit log.

Every administration action (organization created or updated, user frozen or unfrozen),
whichever door it came through (websocket command or REST API), calls
`AdministrationAudit.record` once, in the domain (`organization.py`, `user.py`, lines
marked `# AUDIT:`). Until the audit log is wired, the components hold `NULL_AUDIT`,
which records nothing.
"""

from __future__ import annotations

from typing import Protocol


class AdministrationAudit(Protocol):
    async def record(self, action: str, actor: str, target: str, outcome: str) -> None:
        """One event: `action` (`organization.create`, `organization.update`,
        `user.freeze`, `user.unfreeze`), `actor` (who, e.g. the REST API and the peer
        address), `target` (organization, or `organization/user`), `outcome` (`ok` or the
        refusal's name)."""
        ...


class _NullAudit:
    async def record(self, action: str, actor: str, target: str, outcome: str) -> None:
        return None


NULL_AUDIT: AdministrationAudit = _NullAudit()
