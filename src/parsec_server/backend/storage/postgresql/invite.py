from __future__ import annotations

import uuid

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from parsec_server.api.codec import DateTime
from parsec_server.api.ids import InvitationType
from parsec_server.api.protocol.invite import InvitationDeletedReason
from parsec_server.backend.events import EventBus, InviteConduitUpdatedEvent
from parsec_server.backend.invite import (
    BaseInviteComponent,
    ConduitStep,
    Invitation,
    InviteDeleteBadOutcome,
    T,
)
from parsec_server.backend.invite_conduit import ConduitBadOutcome, ConduitSlots, ConduitState
from parsec_server.backend.invite_email import InvitationMailer
from parsec_server.backend.organization import BaseOrganizationComponent
from parsec_server.backend.storage.postgresql.utils import to_datetime
from parsec_server.backend.storage.rows import (
    SQL_INVITATION_COLUMNS,
    SQL_INVITATION_JOINS,
    human_handle_of,
)

_SQL_GREETER = """
SELECT u._id AS greeter, o._id AS organization
FROM user_ u JOIN organization o ON o._id = u.organization
WHERE o.organization_id = $1 AND u.user_id = $2
"""

# Serializes the greeter's invite_new calls, so that two of them reuse one invitation.
_SQL_LOCK_GREETER = "SELECT 1 FROM user_ WHERE _id = $1 FOR UPDATE"

_SQL_FIND_REUSABLE = f"""
SELECT {SQL_INVITATION_COLUMNS}
FROM invitation i {SQL_INVITATION_JOINS}
WHERE i.greeter = $1 AND i.type = $2 AND i.deleted_on IS NULL
    AND i.claimer_email IS NOT DISTINCT FROM $3
ORDER BY i._id LIMIT 1
"""

_SQL_INSERT = f"""
WITH i AS (
    INSERT INTO invitation (organization, token, type, greeter, claimer_email, created_on)
    VALUES ($1, $2, $3, $4, $5, $6)
    RETURNING *
)
SELECT {SQL_INVITATION_COLUMNS} FROM i {SQL_INVITATION_JOINS}
"""

_SQL_DELETE = """
WITH target AS (
    SELECT i._id, i.deleted_on
    FROM invitation i
    JOIN organization o ON o._id = i.organization
    JOIN user_ u ON u._id = i.greeter
    WHERE o.organization_id = $1 AND i.token = $2 AND u.user_id = $3
    FOR UPDATE OF i
),
deleted AS (
    UPDATE invitation SET deleted_on = $4, deleted_reason = $5
    WHERE _id = (SELECT _id FROM target WHERE deleted_on IS NULL)
    RETURNING _id
)
SELECT
    EXISTS (SELECT 1 FROM target) AS found,
    EXISTS (SELECT 1 FROM deleted) AS deleted
"""

_SQL_LIST = f"""
SELECT {SQL_INVITATION_COLUMNS}
FROM invitation i {SQL_INVITATION_JOINS}
JOIN organization o ON o._id = i.organization
WHERE o.organization_id = $1 AND u.user_id = $2 AND i.deleted_on IS NULL
ORDER BY i.created_on, i._id
"""

_SQL_GET = f"""
SELECT {SQL_INVITATION_COLUMNS}
FROM invitation i {SQL_INVITATION_JOINS}
JOIN organization o ON o._id = i.organization
WHERE o.organization_id = $1 AND i.token = $2
"""

_SQL_GET_CONDUIT_FOR_UPDATE = """
SELECT i._id, u.user_id AS greeter_user_id, i.deleted_on, i.conduit_state,
    i.conduit_greeter_payload, i.conduit_claimer_payload
FROM invitation i
JOIN organization o ON o._id = i.organization
JOIN user_ u ON u._id = i.greeter
WHERE o.organization_id = $1 AND i.token = $2
FOR UPDATE OF i
"""

_SQL_SET_CONDUIT = """
UPDATE invitation
SET conduit_state = $2, conduit_greeter_payload = $3, conduit_claimer_payload = $4
WHERE _id = $1
"""


def _invitation(row: asyncpg.Record) -> Invitation:
    return Invitation(
        token=row["token"],
        type=InvitationType(row["type"]),
        greeter_user_id=row["greeter_user_id"],
        greeter_human_handle=human_handle_of(row, "greeter_"),
        claimer_email=row["claimer_email"],
        created_on=DateTime(row["created_on"]),
        deleted_on=to_datetime(row["deleted_on"]),
    )


class PGInviteComponent(BaseInviteComponent):
    def __init__(
        self,
        pool: asyncpg.Pool,
        organization: BaseOrganizationComponent,
        event_bus: EventBus,
        mailer: InvitationMailer,
    ) -> None:
        super().__init__(organization, event_bus, mailer)
        self._pool = pool

    async def new(
        self,
        organization_id: str,
        greeter_user_id: str,
        type: InvitationType,
        claimer_email: str | None,
        created_on: DateTime,
    ) -> tuple[Invitation, bool]:
        async with self._pool.acquire() as conn, conn.transaction():
            ids = await conn.fetchrow(_SQL_GREETER, organization_id, greeter_user_id)
            await conn.execute(_SQL_LOCK_GREETER, ids["greeter"])
            row = await conn.fetchrow(_SQL_FIND_REUSABLE, ids["greeter"], type.value, claimer_email)
            if row is not None:
                return _invitation(row), False
            row = await conn.fetchrow(
                _SQL_INSERT,
                ids["organization"],
                uuid.uuid4(),
                type.value,
                ids["greeter"],
                claimer_email,
                created_on.dt,
            )
            return _invitation(row), True

    async def delete(
        self,
        organization_id: str,
        greeter_user_id: str,
        token: uuid.UUID,
        on: DateTime,
        reason: InvitationDeletedReason,
    ) -> InviteDeleteBadOutcome | None:
        row = await self._pool.fetchrow(
            _SQL_DELETE, organization_id, token, greeter_user_id, on.dt, reason.value
        )
        if not row["found"]:
            return InviteDeleteBadOutcome.NOT_FOUND
        if not row["deleted"]:
            return InviteDeleteBadOutcome.ALREADY_DELETED
        return None

    async def list_open(self, organization_id: str, greeter_user_id: str) -> list[Invitation]:
        rows = await self._pool.fetch(_SQL_LIST, organization_id, greeter_user_id)
        return [_invitation(row) for row in rows]

    async def get(self, organization_id: str, token: uuid.UUID) -> Invitation | None:
        row = await self._pool.fetchrow(_SQL_GET, organization_id, token)
        return None if row is None else _invitation(row)

    async def conduit_update(
        self,
        organization_id: str,
        token: uuid.UUID,
        greeter_user_id: str | None,
        step: ConduitStep[T],
    ) -> T | ConduitBadOutcome:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_SQL_GET_CONDUIT_FOR_UPDATE, organization_id, token)
            if row is None or (
                greeter_user_id is not None and row["greeter_user_id"] != greeter_user_id
            ):
                return ConduitBadOutcome.NOT_FOUND
            if row["deleted_on"] is not None:
                return ConduitBadOutcome.ALREADY_DELETED
            slots = ConduitSlots(
                ConduitState(row["conduit_state"]),
                row["conduit_greeter_payload"],
                row["conduit_claimer_payload"],
            )
            new_slots, outcome = step(slots)
            changed = new_slots is not None and new_slots != slots
            if changed:
                assert new_slots is not None
                await conn.execute(
                    _SQL_SET_CONDUIT,
                    row["_id"],
                    new_slots.state.value,
                    new_slots.greeter_payload,
                    new_slots.claimer_payload,
                )
        # Published after the commit, so that whoever it wakes sees the change.
        if changed:
            await self._event_bus.send(
                InviteConduitUpdatedEvent(organization_id=organization_id, token=token)
            )
        return outcome
