"""What a reconnecting client missed: that user's events committed after ``last_event_id``,
published to Kafka yet or not (one that also arrives live is dropped by the hub).

The outbox keeps published events for ``outbox.retention_hours``; a client
further behind than that, or than ``websocket.replay_max_events``, is told to
refetch over REST instead.
"""

from __future__ import annotations

from managers.mysql import MySQLManager


async def missed_events(user_id: str, last_event_id: str, max_events: int) -> list[tuple[str, bytes]] | None:
    """``(event_id, payload)`` in order, or None when the gap cannot be replayed."""
    db = MySQLManager.instance().for_id(user_id)
    anchor = await db.fetchone(
        "SELECT id FROM outbox WHERE event_id = %s AND partition_key = %s", (last_event_id, user_id)
    )
    if anchor is None:
        return None
    # Every committed event, published yet or not: one that also arrives live later is
    # dropped by the hub as a duplicate, so nothing falls between replay and live.
    rows = await db.fetchall(
        "SELECT event_id, payload FROM outbox WHERE partition_key = %s AND id > %s ORDER BY id LIMIT %s",
        (user_id, anchor["id"], max_events + 1),
    )
    if len(rows) > max_events:
        return None
    return [(row["event_id"], row["payload"].encode()) for row in rows]
