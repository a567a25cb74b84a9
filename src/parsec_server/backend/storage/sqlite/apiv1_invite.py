from __future__ import annotations

import sqlite3

from parsec_server.api.codec import DateTime
from parsec_server.backend.apiv1_invite import (
    APIV1Invitation,
    APIV1InvitationKind,
    BaseAPIV1InviteComponent,
)
from parsec_server.backend.events import EventBus, EventWaiters
from parsec_server.backend.storage.sqlite.database import SQLiteDatabase
from parsec_server.backend.storage.sqlite.utils import from_db_timestamp, to_db_timestamp
from parsec_server.backend.user import BaseUserComponent

_ORGANIZATION = "(SELECT _id FROM organization WHERE organization_id = ?1)"

# Each: register (nothing inserted when the user/device exists), get, delete.
_SQL = {
    APIV1InvitationKind.USER: (
        f"""
        INSERT INTO user_invitation (organization, user_id, creator, created_on)
        SELECT o, ?2, (SELECT _id FROM device WHERE organization = o AND device_id = ?3), ?4
        FROM (SELECT {_ORGANIZATION} AS o)
        WHERE NOT EXISTS (SELECT 1 FROM user_ WHERE organization = o AND user_id = ?2)
        ON CONFLICT (organization, user_id)
            DO UPDATE SET creator = excluded.creator, created_on = excluded.created_on
        """,
        f"""
        SELECT d.device_id AS creator, i.created_on
        FROM user_invitation i JOIN device d ON d._id = i.creator
        WHERE i.organization = {_ORGANIZATION} AND i.user_id = ?2
            AND NOT EXISTS (
                SELECT 1 FROM user_ WHERE organization = i.organization AND user_id = ?2
            )
        """,
        f"DELETE FROM user_invitation WHERE organization = {_ORGANIZATION} AND user_id = ?2",
    ),
    APIV1InvitationKind.DEVICE: (
        f"""
        INSERT INTO device_invitation (organization, device_id, creator, created_on)
        SELECT o, ?2, (SELECT _id FROM device WHERE organization = o AND device_id = ?3), ?4
        FROM (SELECT {_ORGANIZATION} AS o)
        WHERE NOT EXISTS (SELECT 1 FROM device WHERE organization = o AND device_id = ?2)
        ON CONFLICT (organization, device_id)
            DO UPDATE SET creator = excluded.creator, created_on = excluded.created_on
        """,
        f"""
        SELECT d.device_id AS creator, i.created_on
        FROM device_invitation i JOIN device d ON d._id = i.creator
        WHERE i.organization = {_ORGANIZATION} AND i.device_id = ?2
            AND NOT EXISTS (
                SELECT 1 FROM device WHERE organization = i.organization AND device_id = ?2
            )
        """,
        f"DELETE FROM device_invitation WHERE organization = {_ORGANIZATION} AND device_id = ?2",
    ),
}


def _register(
    conn: sqlite3.Connection,
    organization_id: str,
    kind: APIV1InvitationKind,
    invited_id: str,
    creator_device_id: str,
    created_on: DateTime,
) -> bool:
    cursor = conn.execute(
        _SQL[kind][0], (organization_id, invited_id, creator_device_id, to_db_timestamp(created_on))
    )
    return cursor.rowcount == 1


def _get(
    conn: sqlite3.Connection, organization_id: str, kind: APIV1InvitationKind, invited_id: str
) -> APIV1Invitation | None:
    row = conn.execute(_SQL[kind][1], (organization_id, invited_id)).fetchone()
    if row is None:
        return None
    return APIV1Invitation(row["creator"], from_db_timestamp(row["created_on"]))


def _delete(
    conn: sqlite3.Connection, organization_id: str, kind: APIV1InvitationKind, invited_id: str
) -> None:
    conn.execute(_SQL[kind][2], (organization_id, invited_id))


class SQLiteAPIV1InviteComponent(BaseAPIV1InviteComponent):
    def __init__(
        self,
        database: SQLiteDatabase,
        event_bus: EventBus,
        waiters: EventWaiters,
        user: BaseUserComponent,
    ) -> None:
        super().__init__(event_bus, waiters, user)
        self._db = database

    async def register(
        self,
        organization_id: str,
        kind: APIV1InvitationKind,
        invited_id: str,
        creator_device_id: str,
        created_on: DateTime,
    ) -> bool:
        return await self._db.write(
            _register, organization_id, kind, invited_id, creator_device_id, created_on
        )

    async def get(
        self, organization_id: str, kind: APIV1InvitationKind, invited_id: str
    ) -> APIV1Invitation | None:
        return await self._db.read(_get, organization_id, kind, invited_id)

    async def delete(
        self, organization_id: str, kind: APIV1InvitationKind, invited_id: str
    ) -> None:
        await self._db.write(_delete, organization_id, kind, invited_id)
