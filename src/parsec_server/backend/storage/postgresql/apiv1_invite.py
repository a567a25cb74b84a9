from __future__ import annotations

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from parsec_server.api.codec import DateTime
from parsec_server.backend.apiv1_invite import (
    APIV1Invitation,
    APIV1InvitationKind,
    BaseAPIV1InviteComponent,
)
from parsec_server.backend.events import EventBus, EventWaiters
from parsec_server.backend.user import BaseUserComponent

_ORGANIZATION = "(SELECT _id FROM organization WHERE organization_id = $1)"

# Each: register (no row back when the user/device exists), get, delete.
_SQL = {
    APIV1InvitationKind.USER: (
        f"""
        INSERT INTO user_invitation (organization, user_id, creator, created_on)
        SELECT o, $2::text, (SELECT _id FROM device WHERE organization = o AND device_id = $3), $4
        FROM {_ORGANIZATION} AS t(o)
        WHERE NOT EXISTS (SELECT 1 FROM user_ WHERE organization = o AND user_id = $2::text)
        ON CONFLICT (organization, user_id)
            DO UPDATE SET creator = EXCLUDED.creator, created_on = EXCLUDED.created_on
        RETURNING _id
        """,
        f"""
        SELECT d.device_id AS creator, i.created_on
        FROM user_invitation i JOIN device d ON d._id = i.creator
        WHERE i.organization = {_ORGANIZATION} AND i.user_id = $2
            AND NOT EXISTS (
                SELECT 1 FROM user_ WHERE organization = i.organization AND user_id = $2
            )
        """,
        f"DELETE FROM user_invitation WHERE organization = {_ORGANIZATION} AND user_id = $2",
    ),
    APIV1InvitationKind.DEVICE: (
        f"""
        INSERT INTO device_invitation (organization, device_id, creator, created_on)
        SELECT o, $2::text, (SELECT _id FROM device WHERE organization = o AND device_id = $3), $4
        FROM {_ORGANIZATION} AS t(o)
        WHERE NOT EXISTS (SELECT 1 FROM device WHERE organization = o AND device_id = $2::text)
        ON CONFLICT (organization, device_id)
            DO UPDATE SET creator = EXCLUDED.creator, created_on = EXCLUDED.created_on
        RETURNING _id
        """,
        f"""
        SELECT d.device_id AS creator, i.created_on
        FROM device_invitation i JOIN device d ON d._id = i.creator
        WHERE i.organization = {_ORGANIZATION} AND i.device_id = $2
            AND NOT EXISTS (
                SELECT 1 FROM device WHERE organization = i.organization AND device_id = $2
            )
        """,
        f"DELETE FROM device_invitation WHERE organization = {_ORGANIZATION} AND device_id = $2",
    ),
}


class PGAPIV1InviteComponent(BaseAPIV1InviteComponent):
    def __init__(
        self,
        pool: asyncpg.Pool,
        event_bus: EventBus,
        waiters: EventWaiters,
        user: BaseUserComponent,
    ) -> None:
        super().__init__(event_bus, waiters, user)
        self._pool = pool

    async def register(
        self,
        organization_id: str,
        kind: APIV1InvitationKind,
        invited_id: str,
        creator_device_id: str,
        created_on: DateTime,
    ) -> bool:
        sql = _SQL[kind][0]
        row = await self._pool.fetchrow(
            sql, organization_id, invited_id, creator_device_id, created_on.dt
        )
        return row is not None

    async def get(
        self, organization_id: str, kind: APIV1InvitationKind, invited_id: str
    ) -> APIV1Invitation | None:
        row = await self._pool.fetchrow(_SQL[kind][1], organization_id, invited_id)
        if row is None:
            return None
        return APIV1Invitation(row["creator"], DateTime(row["created_on"]))

    async def delete(
        self, organization_id: str, kind: APIV1InvitationKind, invited_id: str
    ) -> None:
        await self._pool.execute(_SQL[kind][2], organization_id, invited_id)
