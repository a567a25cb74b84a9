"""Per-user message queues, and the append used by the realm commands.

Indexes are `max(index) + 1` per recipient, computed in the writer thread: two appends
never run at once, so the indexes stay contiguous, i.e. equal to the message's position
in `_id` order (`ext_message_recipient_index_idx` makes them unique).
"""

from __future__ import annotations

import sqlite3

from parsec_server.api.codec import DateTime
from parsec_server.backend.message import BaseMessageComponent, Message
from parsec_server.backend.realm_types import NewMessage
from parsec_server.backend.storage.sqlite.database import SQLiteDatabase
from parsec_server.backend.storage.sqlite.utils import from_db_timestamp, to_db_timestamp

_SQL_GET = """
SELECT m."index", d.device_id AS sender, m.timestamp, m.body
FROM message m
JOIN device d ON d._id = m.sender
WHERE m.recipient = (
    SELECT u._id FROM user_ u JOIN organization o ON o._id = u.organization
    WHERE o.organization_id = ? AND u.user_id = ?
)
    AND m."index" > ?
ORDER BY m."index"
"""

_SQL_SENDER = "SELECT _id FROM device WHERE organization = ? AND device_id = ?"

_SQL_APPEND = """
INSERT INTO message (organization, recipient, "index", sender, timestamp, body)
SELECT
    ?1, u._id,
    COALESCE((SELECT max(m."index") FROM message m WHERE m.recipient = u._id), 0) + 1,
    ?3, ?4, ?5
FROM user_ u WHERE u.organization = ?1 AND u.user_id = ?2
RETURNING "index"
"""


def append_messages(
    conn: sqlite3.Connection,
    organization: int,
    sender: str,
    timestamp: DateTime,
    bodies: dict[str, bytes],
) -> list[NewMessage]:
    """Append one message per recipient (user id -> body), within the caller's write
    transaction. Returns the new messages in the order of `bodies`."""
    if not bodies:
        return []
    sender_id = conn.execute(_SQL_SENDER, (organization, sender)).fetchone()[0]
    at = to_db_timestamp(timestamp)
    appended = []
    for recipient, body in bodies.items():
        row = conn.execute(_SQL_APPEND, (organization, recipient, sender_id, at, body)).fetchone()
        if row is not None:
            appended.append(NewMessage(recipient, row[0]))
    return appended


def _get(
    conn: sqlite3.Connection, organization_id: str, user_id: str, offset: int
) -> list[Message]:
    rows = conn.execute(_SQL_GET, (organization_id, user_id, offset)).fetchall()
    return [
        Message(row["index"], row["sender"], from_db_timestamp(row["timestamp"]), row["body"])
        for row in rows
    ]


class SQLiteMessageComponent(BaseMessageComponent):
    def __init__(self, database: SQLiteDatabase) -> None:
        self._db = database

    async def get(self, organization_id: str, user_id: str, offset: int) -> list[Message]:
        return await self._db.read(_get, organization_id, user_id, offset)
