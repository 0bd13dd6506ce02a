"""``python -m bench.analytics`` (``make bench-analytics``): the analytics store on the FerretDB
the config names (``SINGLETON_MONGODB__URI``), in a database of its own, without HTTP.

1. apply: events/s of ``AnalyticsStore.apply`` on consumer-sized batches (``BATCH`` events,
   offsets in order per partition, partition by user as the producer keys them): new
   payments and, for 30% of the events, a pending one completed; 5 active users (the load
   issue 9 measured) and 1,000;
2. summary: 1,000,000 payments over a year seeded directly, a marker each and the counter
   documents their events imply, built with the store's own ``changes()`` (a payment seeded
   as created in its final status makes the counters its created and updated events make);
   then ``AnalyticsStore.summary()``, the call behind ``GET /api/v1/analytics/summary``;
3. lookup: one ``find`` by ``_id`` among the 1,000,000 markers.

Results go to docs/bench/analytics.json under the backend's name (``FERRETDB_BACKEND``,
default postgresql: run once per backend), and docs/BENCHMARKS.md is rewritten.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import statistics
import time
import uuid
import zlib
from collections import Counter, defaultdict

from bson import Int64
from pymongo import AsyncMongoClient

from bench import report
from bench.env import DOCS_BENCH, log, machine
from domain import events, payments
from domain.analytics import AnalyticsStore, Delivery, changes, marker
from domain.analytics_consumer import AnalyticsConsumer
from managers import config

BATCH = AnalyticsConsumer.batch_size

DATABASE = "singleton_bench_analytics"
PARTITIONS = 3
YEAR = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
CURRENCIES = {"USD": 60, "EUR": 25, "JPY": 10, "KWD": 5}
FINAL = {"completed": 70, "pending": 10, "failed": 10, "processing": 5, "cancelled": 3, "refunded": 2}


def _pick(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), list(weights.values()))[0]


def _created(rng: random.Random, user: str, at: dt.datetime, status: str = "pending") -> dict:
    row = {"id": str(uuid.uuid4()), "user_id": user, "currency": _pick(rng, CURRENCIES), "description": None}
    row |= {"amount_minor": rng.randint(100, 50_000), "status": status, "version": 1}
    data = payments.to_api(row | {"created_at": at, "updated_at": at})
    return events.envelope(events.PAYMENT_CREATED, user, data, at)


async def apply_rate(db, users: int, batches: int, rng: random.Random, budget_s: float = 60) -> dict:
    """Events/s of ``apply`` on ``batches`` batches (or those that fit in ``budget_s``) of new
    payments and completions."""
    store, offsets, pending = AnalyticsStore(db), Counter(), defaultdict(list)
    ids = [str(uuid.uuid4()) for _ in range(users)]
    took, count, deadline = [], 0, time.monotonic() + budget_s
    while len(took) < batches and time.monotonic() < deadline:
        batch = []
        for _ in range(BATCH):
            user = rng.choice(ids)
            p = zlib.crc32(user.encode()) % PARTITIONS  # one partition per user, as the producer keys them
            if pending[user] and rng.random() < 0.3:
                done = {**pending[user].pop(), "status": "completed", "version": 2, "previous_status": "pending"}
                event = events.envelope(events.PAYMENT_UPDATED, user, done)
            else:
                event = _created(rng, user, dt.datetime.now(dt.UTC))
                pending[user].append(event["data"])
            batch.append(Delivery(p, offsets[p], event))
            offsets[p] += 1
        started = time.perf_counter()
        await store.apply(batch)
        took.append(time.perf_counter() - started)
        count += len(batch)
    batch_ms = {"p50": round(statistics.median(took) * 1000, 1), "max": round(max(took) * 1000, 1)}
    return {"users": users, "events": count, "events_per_s": round(count / sum(took)), "batch_ms": batch_ms}


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
    sample: list[str] = []
    for first in range(0, count, 10_000):
        markers = []
        for _ in range(first, min(first + 10_000, count)):
            user, at = rng.choice(ids), YEAR + dt.timedelta(seconds=rng.randrange(365 * 86400))
            p = zlib.crc32(user.encode()) % PARTITIONS
            delivery = Delivery(p, offsets[p], _created(rng, user, at, _pick(rng, FINAL)))
            offsets[p] += 1
            markers.append(marker(delivery))
            if offsets[p] % 9973 == 0:  # markers to look up later, from every part of the collection
                sample.append(delivery.event["event_id"])
            for change in changes(delivery):
                key = (change.collection, change.doc_id)
                counters[key].update(change.inc)
                applied[key][str(p)] = Int64(delivery.offset)
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
    took = round(time.perf_counter() - started)
    return {"payments": count, "users": users, "documents": len(counters), "seconds": took, "sample": sample}


async def latency(call, runs: int, budget_s: float) -> dict:
    """p50/p99 of ``call()`` over ``runs`` calls, or as many as fit in ``budget_s``."""
    took: list[float] = []
    deadline = time.monotonic() + budget_s
    while len(took) < runs and time.monotonic() < deadline:
        started = time.perf_counter()
        await call()
        took.append(time.perf_counter() - started)
    p99 = statistics.quantiles(took, n=100)[98] if len(took) >= 2 else took[0]
    return {"runs": len(took), "p50_ms": round(statistics.median(took) * 1000, 2), "p99_ms": round(p99 * 1000, 2)}


async def run(uri: str, seeded: int = 1_000_000, runs: int = 300) -> dict:
    client = AsyncMongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=5000, socketTimeoutMS=120_000)
    rng = random.Random(9)
    try:
        out: dict = {"apply": [], "load_before": os.getloadavg()}
        for users in (5, 1000):
            await client.drop_database(DATABASE)
            out["apply"].append(await apply_rate(client[DATABASE], users, 20, rng))
            log(f"apply, {users} users: {out['apply'][-1]}")
        await client.drop_database(DATABASE)
        db = client[DATABASE]
        out["seed"] = await seed_year(db, seeded, 10_000, rng)
        sample = out["seed"].pop("sample")
        log(f"seeded: {out['seed']}")
        store = AnalyticsStore(db)
        year = await store.summary(YEAR, YEAR + dt.timedelta(days=365))
        assert year["payment_count"] == seeded, year["payment_count"]

        def window(days: int):  # random minute edges, starting in the seeded year
            start = YEAR + dt.timedelta(minutes=rng.randrange(60 * 24 * 365))
            return store.summary(start, start + dt.timedelta(days=days) - dt.timedelta(minutes=rng.randrange(1, 1440)))

        calls = {
            "the year (365 whole days)": lambda: store.summary(YEAR, YEAR + dt.timedelta(days=365)),
            "up to 366 days, random minute edges": lambda: window(366),
            "up to one day, random minute edges": lambda: window(1),
        }
        out["summary"] = {name: await latency(call, runs, 120) for name, call in calls.items()}
        log(f"summary: {out['summary']}")
        out["lookup"] = await latency(lambda: db.events.find_one({"_id": rng.choice(sample)}), 20, 60)
        log(f"find by _id among {seeded:,} markers: {out['lookup']}")
    finally:
        await client.close()
    return out


def main() -> None:
    backend, started = os.environ.get("FERRETDB_BACKEND") or "postgresql", dt.datetime.now(dt.UTC)
    payments_seeded = int(os.environ.get("BENCH_ANALYTICS_PAYMENTS") or 10**6)
    result = asyncio.run(run(config.load()["mongodb"]["uri"], payments_seeded))
    result |= {"date": started.isoformat(timespec="seconds"), "machine": machine(), "load_after": os.getloadavg()}
    path = DOCS_BENCH / "analytics.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(data | {backend: result}, indent=2) + "\n")
    log(f"wrote {path}")
    if (DOCS_BENCH / "results.json").exists():
        log(f"wrote {report.write(replot=False)}")


if __name__ == "__main__":
    main()
