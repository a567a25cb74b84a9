"""Per-user message queues, and the append used by the realm commands.

Indexes are `max(index) + 1` per recipient, computed while the recipient's `user_` row is
locked: two appends to one user never compute the same index, and the indexes stay
contiguous, i.e. equal to the message's position in `_id` order, which is what Parsec
2.0.0 serves (`ext_message_recipient_index_idx` makes them unique).
"""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from parsec_server.api.codec import DateTime
from parsec_server.backend.message import BaseMessageComponent, Message
from parsec_server.backend.realm_types import NewMessage

_SQL_GET = """
SELECT m.index, d.device_id AS sender, m.timestamp, m.body
FROM message m
JOIN device d ON d._id = m.sender
WHERE m.recipient = (
    SELECT u._id FROM user_ u JOIN organization o ON o._id = u.organization
    WHERE o.organization_id = $1 AND u.user_id = $2
)
    AND m.index > $3::bigint  -- any offset of the protocol, not only an INTEGER
ORDER BY m.index
"""

# FOR NO KEY UPDATE: excludes the other appends (and revocations) of these users, but not
# the foreign key checks of rows referencing them.
# Lock order: always by `_id`, and (in every caller) after the realm row.
_SQL_LOCK_RECIPIENTS = """
SELECT _id FROM user_
WHERE organization = $1 AND user_id = ANY($2::text[])
ORDER BY _id
FOR NO KEY UPDATE
"""

# Runs in a statement after _SQL_LOCK_RECIPIENTS, hence on a snapshot that sees every
# message committed by the previous holders of the locks. Each recipient appears once.
_SQL_APPEND = """
WITH new AS (
    SELECT u._id AS recipient, e.ord, e.body
    FROM unnest($2::text[], $5::bytea[]) WITH ORDINALITY AS e(user_id, body, ord)
    JOIN user_ u ON u.organization = $1 AND u.user_id = e.user_id
),
inserted AS (
    INSERT INTO message (organization, recipient, index, sender, timestamp, body)
    SELECT
        $1,
        new.recipient,
        COALESCE((SELECT max(m.index) FROM message m WHERE m.recipient = new.recipient), 0) + 1,
        (SELECT _id FROM device WHERE organization = $1 AND device_id = $3),
        $4,
        new.body
    FROM new
    RETURNING recipient, index
)
SELECT u.user_id, inserted.index
FROM inserted
JOIN new ON new.recipient = inserted.recipient
JOIN user_ u ON u._id = inserted.recipient
ORDER BY new.ord
"""


async def append_messages(
    conn: asyncpg.Connection,
    organization: int,
    sender: str,
    timestamp: DateTime,
    bodies: dict[str, bytes],
) -> list[NewMessage]:
    """Append one message per recipient (user id -> body), within the caller's transaction
    (which must already hold the realm's row lock: see the lock order above). Returns the
    new messages in the order of `bodies`."""
    if not bodies:
        return []
    recipients = list(bodies)
    await conn.execute(_SQL_LOCK_RECIPIENTS, organization, recipients)
    rows = await conn.fetch(
        _SQL_APPEND,
        organization,
        recipients,
        sender,
        timestamp.dt,
        [bodies[r] for r in recipients],
    )
    return [NewMessage(row["user_id"], row["index"]) for row in rows]


class PGMessageComponent(BaseMessageComponent):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, organization_id: str, user_id: str, offset: int) -> list[Message]:
        rows = await self._pool.fetch(_SQL_GET, organization_id, user_id, offset)
        return [
            Message(row["index"], row["sender"], DateTime(row["timestamp"]), row["body"])
            for row in rows
        ]
