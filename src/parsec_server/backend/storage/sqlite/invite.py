from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from parsec_server.api.codec import DateTime
from parsec_server.api.ids import InvitationType
from parsec_server.api.protocol.invite import InvitationDeletedReason
from parsec_server.backend.events import EventBus, InviteConduitUpdatedEvent
from parsec_server.backend.invite import (
    BaseInviteComponent,
    ConduitStep,
    Invitation,
    InviteDeleteBadOutcome,
)
from parsec_server.backend.invite_conduit import ConduitBadOutcome, ConduitSlots, ConduitState
from parsec_server.backend.invite_email import InvitationMailer
from parsec_server.backend.organization import BaseOrganizationComponent
from parsec_server.backend.storage.rows import (
    SQL_INVITATION_COLUMNS,
    SQL_INVITATION_JOINS,
    human_handle_of,
)
from parsec_server.backend.storage.sqlite.database import SQLiteDatabase
from parsec_server.backend.storage.sqlite.utils import (
    from_db_optional_timestamp,
    from_db_timestamp,
    from_db_uuid,
    to_db_timestamp,
)

T = TypeVar("T")

_SQL_GREETER = """
SELECT u._id AS greeter, o._id AS organization
FROM user_ u JOIN organization o ON o._id = u.organization
WHERE o.organization_id = ? AND u.user_id = ?
"""

_SQL_FIND_REUSABLE = f"""
SELECT {SQL_INVITATION_COLUMNS}
FROM invitation i {SQL_INVITATION_JOINS}
WHERE i.greeter = ? AND i.type = ? AND i.deleted_on IS NULL AND i.claimer_email IS ?
ORDER BY i._id LIMIT 1
"""

_SQL_INSERT = """
INSERT INTO invitation (organization, token, type, greeter, claimer_email, created_on)
VALUES (?, ?, ?, ?, ?, ?)
RETURNING _id
"""

_SQL_GET_BY_ID = (
    f"SELECT {SQL_INVITATION_COLUMNS} FROM invitation i {SQL_INVITATION_JOINS} WHERE i._id = ?"
)

_SQL_FIND_TO_DELETE = """
SELECT i._id, i.deleted_on
FROM invitation i
JOIN organization o ON o._id = i.organization
JOIN user_ u ON u._id = i.greeter
WHERE o.organization_id = ? AND i.token = ? AND u.user_id = ?
"""

_SQL_DELETE = "UPDATE invitation SET deleted_on = ?, deleted_reason = ? WHERE _id = ?"

_SQL_LIST = f"""
SELECT {SQL_INVITATION_COLUMNS}
FROM invitation i {SQL_INVITATION_JOINS}
JOIN organization o ON o._id = i.organization
WHERE o.organization_id = ? AND u.user_id = ? AND i.deleted_on IS NULL
ORDER BY i.created_on, i._id
"""

_SQL_GET = f"""
SELECT {SQL_INVITATION_COLUMNS}
FROM invitation i {SQL_INVITATION_JOINS}
JOIN organization o ON o._id = i.organization
WHERE o.organization_id = ? AND i.token = ?
"""

_SQL_GET_CONDUIT = """
SELECT i._id, u.user_id AS greeter_user_id, i.deleted_on, i.conduit_state,
    i.conduit_greeter_payload, i.conduit_claimer_payload
FROM invitation i
JOIN organization o ON o._id = i.organization
JOIN user_ u ON u._id = i.greeter
WHERE o.organization_id = ? AND i.token = ?
"""

_SQL_SET_CONDUIT = """
UPDATE invitation
SET conduit_state = ?, conduit_greeter_payload = ?, conduit_claimer_payload = ?
WHERE _id = ?
"""


def _invitation(row: sqlite3.Row) -> Invitation:
    return Invitation(
        token=from_db_uuid(row["token"]),
        type=InvitationType(row["type"]),
        greeter_user_id=row["greeter_user_id"],
        greeter_human_handle=human_handle_of(row, "greeter_"),
        claimer_email=row["claimer_email"],
        created_on=from_db_timestamp(row["created_on"]),
        deleted_on=from_db_optional_timestamp(row["deleted_on"]),
    )


def _new(
    conn: sqlite3.Connection,
    organization_id: str,
    greeter_user_id: str,
    type: InvitationType,
    claimer_email: str | None,
    created_on: DateTime,
) -> tuple[Invitation, bool]:
    ids = conn.execute(_SQL_GREETER, (organization_id, greeter_user_id)).fetchone()
    row = conn.execute(_SQL_FIND_REUSABLE, (ids["greeter"], type.value, claimer_email)).fetchone()
    if row is not None:
        return _invitation(row), False
    created = conn.execute(
        _SQL_INSERT,
        (
            ids["organization"],
            uuid.uuid4().bytes,
            type.value,
            ids["greeter"],
            claimer_email,
            to_db_timestamp(created_on),
        ),
    ).fetchone()
    return _invitation(conn.execute(_SQL_GET_BY_ID, (created[0],)).fetchone()), True


def _delete(
    conn: sqlite3.Connection,
    organization_id: str,
    greeter_user_id: str,
    token: uuid.UUID,
    on: DateTime,
    reason: InvitationDeletedReason,
) -> InviteDeleteBadOutcome | None:
    row = conn.execute(_SQL_FIND_TO_DELETE, (organization_id, token.bytes, greeter_user_id))
    found = row.fetchone()
    if found is None:
        return InviteDeleteBadOutcome.NOT_FOUND
    if found["deleted_on"] is not None:
        return InviteDeleteBadOutcome.ALREADY_DELETED
    conn.execute(_SQL_DELETE, (to_db_timestamp(on), reason.value, found["_id"]))
    return None


def _list_open(
    conn: sqlite3.Connection, organization_id: str, greeter_user_id: str
) -> list[Invitation]:
    rows = conn.execute(_SQL_LIST, (organization_id, greeter_user_id)).fetchall()
    return [_invitation(row) for row in rows]


def _get(conn: sqlite3.Connection, organization_id: str, token: uuid.UUID) -> Invitation | None:
    row = conn.execute(_SQL_GET, (organization_id, token.bytes)).fetchone()
    return None if row is None else _invitation(row)


def _conduit_update(
    conn: sqlite3.Connection,
    organization_id: str,
    token: uuid.UUID,
    greeter_user_id: str | None,
    step: ConduitStep[T],
) -> tuple[T | ConduitBadOutcome, bool]:
    """The outcome, and whether the conduit changed."""
    row = conn.execute(_SQL_GET_CONDUIT, (organization_id, token.bytes)).fetchone()
    if row is None or (greeter_user_id is not None and row["greeter_user_id"] != greeter_user_id):
        return ConduitBadOutcome.NOT_FOUND, False
    if row["deleted_on"] is not None:
        return ConduitBadOutcome.ALREADY_DELETED, False
    slots = ConduitSlots(
        ConduitState(row["conduit_state"]),
        row["conduit_greeter_payload"],
        row["conduit_claimer_payload"],
    )
    new_slots, outcome = step(slots)
    if new_slots is None or new_slots == slots:
        return outcome, False
    conn.execute(
        _SQL_SET_CONDUIT,
        (new_slots.state.value, new_slots.greeter_payload, new_slots.claimer_payload, row["_id"]),
    )
    return outcome, True


class SQLiteInviteComponent(BaseInviteComponent):
    def __init__(
        self,
        database: SQLiteDatabase,
        organization: BaseOrganizationComponent,
        event_bus: EventBus,
        mailer: InvitationMailer,
    ) -> None:
        super().__init__(organization, event_bus, mailer)
        self._db = database

    async def new(
        self,
        organization_id: str,
        greeter_user_id: str,
        type: InvitationType,
        claimer_email: str | None,
        created_on: DateTime,
    ) -> tuple[Invitation, bool]:
        return await self._db.write(
            _new, organization_id, greeter_user_id, type, claimer_email, created_on
        )

    async def delete(
        self,
        organization_id: str,
        greeter_user_id: str,
        token: uuid.UUID,
        on: DateTime,
        reason: InvitationDeletedReason,
    ) -> InviteDeleteBadOutcome | None:
        return await self._db.write(_delete, organization_id, greeter_user_id, token, on, reason)

    async def list_open(self, organization_id: str, greeter_user_id: str) -> list[Invitation]:
        return await self._db.read(_list_open, organization_id, greeter_user_id)

    async def get(self, organization_id: str, token: uuid.UUID) -> Invitation | None:
        return await self._db.read(_get, organization_id, token)

    async def conduit_update(
        self,
        organization_id: str,
        token: uuid.UUID,
        greeter_user_id: str | None,
        step: ConduitStep[T],
    ) -> T | ConduitBadOutcome:
        update: Callable[[sqlite3.Connection], tuple[T | ConduitBadOutcome, bool]] = partial(
            _conduit_update,
            organization_id=organization_id,
            token=token,
            greeter_user_id=greeter_user_id,
            step=step,
        )
        outcome, changed = await self._db.write(update)
        # Published after the commit, so that whoever it wakes sees the change.
        if changed:
            await self._event_bus.send(
                InviteConduitUpdatedEvent(organization_id=organization_id, token=token)
            )
        return outcome
