"""The outbox relay's batch both ways, for ``python -m bench.spider``: a backlog of events spread
over both backends (ids unique across them, as the front's default auto-increment gives), then
batches of 500 until none is left:

- through the front: one relay (the front is one table over both backends), domain/outbox.py's
  select and mark; the mark's time is sent as a literal, because the front rejects the shipped
  ``UTC_TIMESTAMP(6)`` in an UPDATE (see the checks);
- direct: one relay per backend, side by side, the shipped statements (the per-shard relays
  routing in the service needs).

Every batch is checked: its ids ascending and above the previous batch's, and as many rows
marked as selected."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import statistics
import time

import aiomysql

from bench.spider_checks import READ_COMMITTED, RELAY_MARK, RELAY_MARK_LITERAL, RELAY_SELECT
from bench.spider_load import CPU
from bench.spider_stack import SHARDS, Stack, backend_of, id_on_shard
from domain import codec, events

BATCH = 500
CHUNK = 1000


def fill(stack: Stack, backlog: int) -> None:
    """``backlog`` payment events for users over every logical shard, ids 1..backlog."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    rows: dict[str, list[tuple]] = {name: [] for name in SHARDS}
    for i in range(1, backlog + 1):
        user_id = id_on_shard(i * 7919 % 1024)
        event = events.envelope(events.PAYMENT_CREATED, user_id, {"id": id_on_shard(0), "amount": "10.00"}, now)
        rows[backend_of(user_id)].append(
            (i, event["event_id"], event["type"], user_id, codec.dumps(event).decode(), now)
        )
    for name, batch in rows.items():
        with contextlib.closing(stack.connect(name)) as conn, conn.cursor() as cur:
            cur.execute("TRUNCATE TABLE outbox")
            for start in range(0, len(batch), CHUNK):
                cur.executemany(
                    "INSERT INTO outbox (id, event_id, event_type, partition_key, payload, created_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    batch[start : start + CHUNK],
                )


def reset(stack: Stack) -> None:
    for name in SHARDS:
        with contextlib.closing(stack.connect(name)) as conn, conn.cursor() as cur:
            cur.execute("UPDATE outbox SET published_at = NULL")


async def drain(stack: Stack, target: str, shipped_mark: bool, timeout_s: float) -> dict:
    """Batches until none is left; what came out, and what went wrong."""
    conn = await aiomysql.connect(**stack.login(target), autocommit=True, charset="utf8mb4")
    published, batches, disorder, mismatched, last = 0, 0, 0, 0, 0
    try:
        while True:
            async with conn.cursor() as cur, asyncio.timeout(timeout_s):
                for statement in READ_COMMITTED:
                    await cur.execute(statement)
                await cur.execute(RELAY_SELECT, (BATCH,))
                ids = [row[0] for row in await cur.fetchall()]
                if not ids:
                    await conn.commit()
                    break
                disorder += ids != sorted(ids) or ids[0] <= last
                last = ids[-1]
                marks = ",".join(map(str, ids))
                if shipped_mark:
                    await cur.execute(RELAY_MARK.format(marks))
                else:
                    await cur.execute(RELAY_MARK_LITERAL.format(marks), (dt.datetime.now(dt.UTC).replace(tzinfo=None),))
                mismatched += cur.rowcount != len(ids)
                await conn.commit()
                published, batches = published + len(ids), batches + 1
    finally:
        conn.close()
    return {
        "published": published,
        "batches": batches,
        "batches_out_of_order": disorder,
        "batches_marked_other": mismatched,
    }


async def relay_round(stack: Stack, via_front: bool, timeout_s: float) -> dict:
    reset(stack)
    cpu, t = CPU(stack), time.monotonic()
    if via_front:
        parts = [await drain(stack, "front", False, timeout_s)]
    else:
        parts = await asyncio.gather(*(drain(stack, name, True, timeout_s) for name in SHARDS))
    wall, cores = time.monotonic() - t, cpu.cores()
    published = sum(p["published"] for p in parts)
    out = {"route": "spider (one relay)" if via_front else f"direct ({len(SHARDS)} relays, one per backend)"}
    out |= {"events": published, "seconds": round(wall, 2), "events_per_s": round(published / wall)}
    for key in ("batches", "batches_out_of_order", "batches_marked_other"):
        out[key] = sum(p[key] for p in parts)
    return out | {"cpu_cores": cores}


async def measure(stack: Stack, backlog: int, rounds: int, timeout_s: float) -> list[dict]:
    fill(stack, backlog)
    runs = []
    for _ in range(rounds):
        for via_front in (True, False):
            runs.append(await relay_round(stack, via_front, timeout_s))
    return runs


def summary(runs: list[dict]) -> list[dict]:
    """Per route: the median of the rounds' events/s, each round's, the checks summed, and the
    median of the rounds' CPU per 1,000 events."""
    out = []
    for route in dict.fromkeys(r["route"] for r in runs):
        mine = [r for r in runs if r["route"] == route]

        def per_1000(r: dict, names: tuple[str, ...]) -> float:
            return round(sum(r["cpu_cores"].get(n, 0.0) for n in names) * r["seconds"] / r["events"] * 1e6, 1)

        out.append(
            {
                "route": route,
                "events_per_s": round(statistics.median(r["events_per_s"] for r in mine)),
                "rounds": [r["events_per_s"] for r in mine],
                "batches_out_of_order": sum(r["batches_out_of_order"] for r in mine),
                "batches_marked_other": sum(r["batches_marked_other"] for r in mine),
                "cpu_ms_per_1000": {
                    "front": statistics.median(per_1000(r, ("front",)) for r in mine),
                    "backends": statistics.median(per_1000(r, tuple(SHARDS)) for r in mine),
                },
                "runs": mine,
            }
        )
    return out
