"""After a scenario's writes: every accepted payment followed to its row in MariaDB, its
event on Kafka and its count in analytics. "Lost" is a 201 whose row or event is
missing, or a payment analytics never counted; analytics must equal the rows exactly.
"Doubled" is a key that got two payments, a payment announced by two events, or a
payment whose row is on two physical shards (a shard move that copied without deleting).

Rows are read from every physical shard of the stack (one for the everyday stack).

Events are read with a real consumer (no group, nothing committed) from the offsets
the topic had before the scenario, up to its end once the scenario's outbox rows are
all published.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from decimal import Decimal

from aiokafka import AIOKafkaConsumer, TopicPartition

from chaos.load import Client, Write
from chaos.stack import Stack

DRAIN_DEADLINE_S = 120.0  # the outbox, after the writes ended
READ_DEADLINE_S = 60.0  # the topic, once the outbox is drained
ANALYTICS_DEADLINE_S = 180.0  # analytics equal to the rows, after the writes ended


async def _consumer(stack: Stack) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.kafka, group_id=None, enable_auto_commit=False, request_timeout_ms=10000
    )
    await asyncio.wait_for(consumer.start(), 30)
    partitions = [TopicPartition(stack.topic, p) for p in range(stack.partitions)]
    consumer.assign(partitions)
    return consumer, partitions


async def topic_ends(stack: Stack) -> dict[TopicPartition, int]:
    """Where each partition of the run's topic ends now."""
    consumer, partitions = await _consumer(stack)
    try:
        return await asyncio.wait_for(consumer.end_offsets(partitions), 30)
    finally:
        await asyncio.wait_for(consumer.stop(), 15)


async def read_events(stack: Stack, since: dict[TopicPartition, int], users: set[str]) -> list[dict]:
    """Every payment_created event of ``users`` from ``since`` to the topic's end now."""
    consumer, partitions = await _consumer(stack)
    events: list[dict] = []
    try:
        ends = await asyncio.wait_for(consumer.end_offsets(partitions), 30)
        for tp in partitions:
            consumer.seek(tp, since.get(tp, 0))
        deadline = time.monotonic() + READ_DEADLINE_S
        while [tp for tp in partitions if await asyncio.wait_for(consumer.position(tp), 15) < ends[tp]]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"reading {stack.topic} up to {ends} took over {READ_DEADLINE_S} s")
            for records in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                for record in records:
                    event = json.loads(record.value)
                    if event.get("type") == "payment_created" and event.get("user_id") in users:
                        events.append(event)
    finally:
        await asyncio.wait_for(consumer.stop(), 15)
    return events


async def outbox_drained(stack: Stack, users: list[str]) -> float | None:
    """Seconds until none of ``users``' outbox rows waits for Kafka (None: not by the deadline)."""
    started = time.monotonic()
    marks = ",".join(["%s"] * len(users))
    sql = f"SELECT COUNT(*) FROM outbox WHERE partition_key IN ({marks}) AND published_at IS NULL"
    while time.monotonic() - started < DRAIN_DEADLINE_S:
        waiting = await asyncio.to_thread(stack.query_shards, sql, tuple(users))
        if sum(rows[0][0] for rows in waiting.values()) == 0:
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    return None


def payment_rows(stack: Stack, users: list[str]) -> tuple[dict[str, tuple[str, Decimal]], Counter, Counter]:
    """The run's payment rows of ``users`` on every shard: id -> (user, amount in dollars);
    how many shards hold each payment; and how many rows each shard holds."""
    marks = ",".join(["%s"] * len(users))
    sql = f"SELECT id, user_id, amount_minor FROM payments WHERE user_id IN ({marks})"
    found = stack.query_shards(sql, tuple(users))
    rows, copies, per_shard = {}, Counter(), Counter()
    for shard, shard_rows in found.items():
        per_shard[shard] = len(shard_rows)
        for pid, uid, minor in shard_rows:
            rows[pid] = (uid, Decimal(minor) / 100)
            copies[pid] += 1
    return rows, copies, per_shard


def per_user(rows: dict[str, tuple[str, Decimal]], users: list[str]) -> dict[str, tuple[int, Decimal]]:
    out = {u: (0, Decimal("0.00")) for u in users}
    for uid, amount in rows.values():
        n, total = out[uid]
        out[uid] = (n + 1, total + amount)
    return out


async def analytics_caught_up(client: Client, expected: dict[str, tuple[int, Decimal]], since: float) -> dict:
    """Poll each user's analytics until they equal ``expected`` (count and USD total);
    stops early on a count above the rows, which can never come right again."""
    seen: dict[str, tuple[int, Decimal]] = {}
    deadline = since + ANALYTICS_DEADLINE_S
    while True:
        for user, want in expected.items():
            if seen.get(user) == want:
                continue
            try:
                code, stats, _ = await client.request("GET", f"/api/v1/analytics/users/{user}", timeout_s=5)
            except OSError:
                continue
            if code == 200:
                usd = stats["by_currency"].get("USD", {})
                seen[user] = (stats["payment_count"], Decimal(usd.get("total", "0.00")))
        exact = all(seen.get(u) == want for u, want in expected.items())
        over = any(seen.get(u, (0,))[0] > want[0] for u, want in expected.items())
        if exact or over or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    counted = sum(n for n, _ in seen.values())
    return {
        "exact": exact,
        "catch_up_s": round(time.monotonic() - since, 1) if exact else None,
        "counted": counted,
        "expected": sum(n for n, _ in expected.values()),
        "wrong_users": {u: [str(x) for x in seen.get(u, ("none",))] for u, w in expected.items() if seen.get(u) != w},
    }


async def account(stack: Stack, client: Client, writes: list[Write], users: list[str], since, ended: float) -> dict:
    """The whole accounting of one scenario (``ended``: when its last write ended)."""
    accepted = {w.payment_id: w for w in writes if w.accepted}
    drain_s = await outbox_drained(stack, users)
    rows, copies, per_shard = await asyncio.to_thread(payment_rows, stack, users)
    events = await read_events(stack, since, set(users))
    event_ids = Counter(e["event_id"] for e in events)
    # payment id -> how many distinct events announce it (a second copy of one event is a duplicate, not this)
    events_of = Counter({e["event_id"]: e["data"]["id"] for e in events}.values())
    analytics = await analytics_caught_up(client, per_user(rows, users), ended)
    missing_rows = [p for p in accepted if p not in rows]
    missing_events = [p for p in accepted if p not in events_of]
    uncounted = max(0, analytics["expected"] - analytics["counted"]) if not analytics["exact"] else 0
    keys_with_two_payments = sum(1 for w in writes if len(w.payment_ids) > 1)
    payments_with_two_events = sum(1 for n in events_of.values() if n > 1)
    rows_on_two_shards = sum(1 for n in copies.values() if n > 1)
    return {
        "writes": len(writes),
        "accepted": len({w.key for w in writes if w.accepted}),
        "keys_with_two_payments": keys_with_two_payments,
        "rows": len(rows),
        "rows_by_shard": dict(per_shard),
        "rows_on_two_shards": rows_on_two_shards,
        "rows_not_accepted": len([p for p in rows if p not in accepted]),
        "missing_rows": len(missing_rows),
        "events": len(event_ids),
        "event_duplicates": sum(event_ids.values()) - len(event_ids),
        "payments_with_two_events": payments_with_two_events,
        "events_without_row": len([p for p in events_of if p not in rows]),
        "missing_events": len(missing_events),
        "outbox_drain_s": None if drain_s is None else round(drain_s, 1),
        "analytics": analytics,
        "lost": len(set(missing_rows) | set(missing_events)) + uncounted,
        "doubled": keys_with_two_payments + payments_with_two_events + rows_on_two_shards,
        "lost_examples": sorted(set(missing_rows) | set(missing_events))[:5],
    }
