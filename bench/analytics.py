"""The analytics stage: the analytics store (domain/analytics.py) driven directly, in a
database of its own on the configured FerretDB. Events/s of ``AnalyticsStore.apply`` on
consumer-sized batches (new payments, 30% completions; 5 active users, as issue 9
measured, and 1,000); then a year of payments seeded directly (a marker each and the
counter documents their events imply, built with the store's own ``changes()``) and
``AnalyticsStore.summary()``, the call behind ``GET /api/v1/analytics/summary``."""

from __future__ import annotations

import datetime as dt
import random
import time
import uuid
import zlib
from collections import Counter, defaultdict

from bson import Int64
from pymongo import AsyncMongoClient

from bench.env import MONGO_DATABASE, config, log, percentile
from domain import events, payments
from domain.analytics import AnalyticsStore, Delivery, changes, marker
from domain.analytics_consumer import AnalyticsConsumer

BATCH = AnalyticsConsumer.batch_size
DATABASE = f"{MONGO_DATABASE}_analytics"
PARTITIONS = 3
YEAR = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
CURRENCIES = {"USD": 60, "EUR": 25, "JPY": 10, "KWD": 5}
FINAL = {"completed": 70, "pending": 10, "failed": 10, "processing": 5, "cancelled": 3, "refunded": 2}


def _delivery(offsets: Counter, user: str, event: dict) -> Delivery:
    """The next delivery on ``user``'s partition (one a user, as the producer keys them)."""
    partition = zlib.crc32(user.encode()) % PARTITIONS
    offsets[partition] += 1
    return Delivery(partition, offsets[partition] - 1, event)


def payment_created(rng: random.Random, user: str, at: dt.datetime, final: bool = False) -> dict:
    """A payment_created event, ``final`` with the status the payment ends in (the seeded year's)."""
    status = rng.choices(list(FINAL), list(FINAL.values()))[0] if final else "pending"
    currency = rng.choices(list(CURRENCIES), list(CURRENCIES.values()))[0]
    row = {"id": str(uuid.uuid4()), "user_id": user, "currency": currency, "description": None}
    row |= {"amount_minor": rng.randint(100, 50_000), "status": status, "version": 1}
    data = payments.to_api(row | {"created_at": at, "updated_at": at})
    return events.envelope(events.PAYMENT_CREATED, user, data, at)


async def apply_rate(db, users: int, batches: int, rng: random.Random, budget_s: float = 60) -> dict:
    """Events/s of ``apply`` over ``batches`` batches (or as many as fit in ``budget_s``)."""
    store, offsets, pending = AnalyticsStore(db), Counter(), defaultdict(list)
    ids, took, deadline = [str(uuid.uuid4()) for _ in range(users)], [], time.monotonic() + budget_s
    while len(took) < batches and time.monotonic() < deadline:
        batch = []
        for _ in range(BATCH):
            user = rng.choice(ids)
            if pending[user] and rng.random() < 0.3:
                done = {**pending[user].pop(), "status": "completed", "version": 2, "previous_status": "pending"}
                event = events.envelope(events.PAYMENT_UPDATED, user, done)
            else:
                event = payment_created(rng, user, dt.datetime.now(dt.UTC))
                pending[user].append(event["data"])
            batch.append(_delivery(offsets, user, event))
        started = time.perf_counter()
        await store.apply(batch)
        took.append(time.perf_counter() - started)
    return {"users": users, "events": len(took) * BATCH, "events_per_s": round(len(took) * BATCH / sum(took))}


def _nest(paths: Counter) -> dict:
    """``{"c.USD_pending_n": 3}`` as the document ``$inc`` would have built."""
    doc: dict = {}
    for path, value in paths.items():
        *parents, leaf = path.split(".")
        node = doc
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = Int64(value)
    return doc


async def seed_year(db, count: int, users: int, rng: random.Random) -> dict:
    """``count`` payments over a year: their markers and the counter documents they imply."""
    started, ids = time.perf_counter(), [str(uuid.uuid4()) for _ in range(users)]
    counters: dict[tuple[str, str], Counter] = defaultdict(Counter)
    applied: dict[tuple[str, str], dict[str, Int64]] = defaultdict(dict)
    last: dict[str, dt.datetime] = {}
    offsets: Counter = Counter()
    for first in range(0, count, 10_000):
        markers = []
        for _ in range(first, min(first + 10_000, count)):
            user, at = rng.choice(ids), YEAR + dt.timedelta(seconds=rng.randrange(365 * 86400))
            delivery = _delivery(offsets, user, payment_created(rng, user, at, final=True))
            markers.append(marker(delivery))
            for change in changes(delivery):
                key = (change.collection, change.doc_id)
                counters[key].update(change.inc)
                applied[key][str(delivery.partition)] = Int64(delivery.offset)
                if change.last_activity is not None:
                    last[change.doc_id] = max(last.get(change.doc_id, change.last_activity), change.last_activity)
        await db.events.insert_many(markers, ordered=False)
    for name in ("user_totals", "buckets"):
        docs = [
            {"_id": doc_id, **_nest(inc), "applied": applied[(coll, doc_id)]}
            | ({"last_activity": last[doc_id]} if name == "user_totals" else {})
            for (coll, doc_id), inc in counters.items()
            if coll == name
        ]
        for i in range(0, len(docs), 1000):
            await db[name].insert_many(docs[i : i + 1000], ordered=False)
    await db.partitions.insert_many([{"_id": p} for p in range(PARTITIONS)])
    seconds = round(time.perf_counter() - started)
    return {"payments": count, "users": users, "documents": len(counters), "seconds": seconds}


async def latency(call, runs: int, budget_s: float) -> dict:
    """p50/p99 of ``call()`` over ``runs`` calls, or as many as fit in ``budget_s``."""
    took, deadline = [], time.monotonic() + budget_s
    while len(took) < runs and time.monotonic() < deadline:
        started = time.perf_counter()
        await call()
        took.append((time.perf_counter() - started) * 1000)
    took.sort()
    return {"runs": len(took), "p50_ms": round(percentile(took, 50), 2), "p99_ms": round(percentile(took, 99), 2)}


async def run(seeded: int, runs: int = 300) -> dict:
    client = AsyncMongoClient(config()["mongodb"]["uri"], tz_aware=True, socketTimeoutMS=120_000)
    rng, out = random.Random(9), {"apply": []}
    try:
        for users in (5, 1000):
            await client.drop_database(DATABASE)
            out["apply"].append(await apply_rate(client[DATABASE], users, 20, rng))
            log(f"analytics: apply, {users} users: {out['apply'][-1]['events_per_s']:,} events/s")
        await client.drop_database(DATABASE)
        db, store = client[DATABASE], AnalyticsStore(client[DATABASE])
        log(f"analytics: seeding {seeded:,} payments over a year")
        out["seed"] = await seed_year(db, seeded, 10_000, rng)
        year = await store.summary(YEAR, YEAR + dt.timedelta(days=365))
        assert year["payment_count"] == seeded, year["payment_count"]

        def window(days: int):  # random minute edges, starting in the seeded year
            start = YEAR + dt.timedelta(minutes=rng.randrange(60 * 24 * 365))
            return store.summary(start, start + dt.timedelta(days=days) - dt.timedelta(minutes=rng.randrange(1, 1440)))

        calls = {
            "the year (365 whole days)": lambda: store.summary(YEAR, YEAR + dt.timedelta(days=365)),
            "up to 366 days, random minute edges": lambda: window(366),
        }
        out["summary"] = {name: await latency(call, runs, 60) for name, call in calls.items()}
        log(f"analytics: seeded in {out['seed']['seconds']} s; summary {out['summary']}")
        await client.drop_database(DATABASE)
    finally:
        await client.close()
    return out
