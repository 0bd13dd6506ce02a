"""Analytics in MongoDB: raw events and per-user payment statistics, each event counted once.

``AnalyticsConsumer`` reads the topic in one consumer group shared by every
instance, writes a batch to MongoDB, and only then commits the batch's
offsets (at least once). Writes are idempotent, so a redelivered event never
counts twice:

- ``events``: one document per event, ``_id`` = ``event_id`` (a duplicate insert
  is skipped);
- ``payments``: each payment's latest state, replaced only by a higher
  ``version`` (so order and repeats do not matter); the window summary is an
  aggregation pipeline over it;
- ``user_stats``: per user, the same latest state of each of its payments and
  the time of its last event (``$max``), so its totals are one document read.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import defaultdict
from decimal import Decimal

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, KafkaError
from pymongo.errors import BulkWriteError, PyMongoError

from domain import codec, events
from domain.money import EXPONENTS, format_amount
from managers import metrics
from managers.base import Manager, reconnect
from managers.kafka_consumer import consumer_status, record_lag, stop_consumer
from managers.mongodb import MongoManager

log = logging.getLogger("singleton.analytics")
NAME = "analytics"
DUPLICATE_KEY = 11000
MAX_BACKOFF_S = 5.0
BATCH = 100
PER_EVENT_S = 0.1


def _when(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _minor(amount: str, currency: str) -> int:
    """The exact decimal string of a payment back to integer minor units."""
    return int(Decimal(amount).scaleb(EXPONENTS[currency]))


USER_COPY = ("currency", "amount_minor", "status", "version")  # what a user document keeps of a payment


def _state(payment: dict) -> dict:
    return {
        "user_id": payment["user_id"],
        "currency": payment["currency"],
        "amount_minor": _minor(payment["amount"], payment["currency"]),
        "status": payment["status"],
        "version": payment["version"],
        "created_at": _when(payment["created_at"]),
    }


def _usable(event: dict) -> bool:
    """A domain event with what the store reads; anything else (health_check, a
    malformed message) is skipped, never retried forever."""
    if not isinstance(event, dict) or event.get("type") not in events.DOMAIN_TYPES:
        return False
    try:
        _when(event["occurred_at"])
        if not (isinstance(event["event_id"], str) and isinstance(event["user_id"], str)):
            raise TypeError("event_id and user_id must be strings")
        if event["type"] in (events.PAYMENT_CREATED, events.PAYMENT_UPDATED):
            _state(event["data"])
            str(event["data"]["id"])
    except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError) as exc:
        metrics.CONSUMER_ERRORS.labels(NAME).inc()
        log.warning("skipping malformed event", extra={"consumer": NAME, "error": repr(exc)})
        return False
    return True


class AnalyticsStore:
    """The MongoDB side: idempotent writes and the aggregation pipelines."""

    def __init__(self, mongo: MongoManager):
        self.db = mongo.db

    async def ensure_indexes(self) -> None:
        await self.db.payments.create_index([("user_id", 1)])
        await self.db.payments.create_index([("created_at", 1)])
        await self.db.events.create_index([("user_id", 1), ("occurred_at", 1)])

    async def apply(self, batch: list[dict]) -> int:
        """Write a batch; return how many events were new."""
        domain_events = [e for e in batch if _usable(e)]
        if not domain_events:
            return 0
        docs = [
            {
                "_id": e["event_id"],
                "type": e["type"],
                "user_id": e["user_id"],
                "occurred_at": _when(e["occurred_at"]),
                "data": e["data"],
            }
            for e in domain_events
        ]
        try:
            await self.db.events.insert_many(docs, ordered=False)
            new = len(docs)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(err.get("code") != DUPLICATE_KEY for err in errors):
                raise
            new = len(docs) - len(errors)
        latest: dict[str, dict] = {}  # per payment, only the highest version in the batch matters
        for event in domain_events:
            if event["type"] in (events.PAYMENT_CREATED, events.PAYMENT_UPDATED):
                payment = event["data"]
                if payment["id"] not in latest or payment["version"] > latest[payment["id"]]["version"]:
                    latest[payment["id"]] = payment
        by_user: dict[str, list[dict]] = defaultdict(list)
        for payment in latest.values():
            await self._store_payment(payment)
            by_user[payment["user_id"]].append(payment)
        last_activity: dict[str, dt.datetime] = {}
        for event in domain_events:
            when = _when(event["occurred_at"])
            last_activity[event["user_id"]] = max(when, last_activity.get(event["user_id"], when))
        for user_id, when in last_activity.items():
            await self._store_user(user_id, by_user.get(user_id, []), when)
        return new

    # Every write below reads and writes one document by _id. Conditions beyond _id
    # make FerretDB 1.24 (SQLite) scan the whole collection (~60 ms here against ~8 ms).
    # A read-then-write is safe because one user's events share a partition, and a
    # partition has one reader in the group at a time.

    async def _store_payment(self, payment: dict) -> None:
        """Keep the payment's latest state; an older or repeated version changes nothing."""
        stored = await self.db.payments.find_one({"_id": payment["id"]}, {"version": 1})
        if stored is None or stored["version"] < payment["version"]:
            await self.db.payments.replace_one({"_id": payment["id"]}, _state(payment), upsert=True)

    async def _store_user(self, user_id: str, payments: list[dict], when: dt.datetime) -> None:
        """The user's copy of each payment's latest state, and its last activity."""
        doc = await self.db.user_stats.find_one({"_id": user_id}) or {}
        known = doc.get("payments", {})
        changes = {
            f"payments.{p['id']}": {k: v for k, v in _state(p).items() if k in USER_COPY}
            for p in payments
            if p["id"] not in known or known[p["id"]]["version"] < p["version"]
        }
        if changes or doc.get("last_activity") is None or doc["last_activity"] < when:
            update: dict = {"$max": {"last_activity": when}}
            if changes:
                update["$set"] = changes
            await self.db.user_stats.update_one({"_id": user_id}, update, upsert=True)

    async def _grouped(self, match: dict) -> list[dict]:
        """Count and total per (currency, status) of the payments matching ``match``.

        Two pipelines of one accumulator each: FerretDB 1.24 computes only the first
        accumulator of a ``$group`` with a compound ``_id`` and returns 0 for the rest.
        """
        key = {"currency": "$currency", "status": "$status"}

        async def group(accumulator: dict) -> dict:
            cursor = await self.db.payments.aggregate(
                [{"$match": match}, {"$group": {"_id": key, "value": accumulator}}]
            )
            return {(row["_id"]["currency"], row["_id"]["status"]): row["value"] async for row in cursor}

        counts, totals = await asyncio.gather(group({"$sum": 1}), group({"$sum": "$amount_minor"}))
        return [
            {"_id": {"currency": currency, "status": status}, "count": n, "total": totals.get((currency, status), 0)}
            for (currency, status), n in counts.items()
        ]

    async def user_stats(self, user_id: str) -> dict | None:
        """Totals from the user's document: one read, however many payments it holds."""
        doc = await self.db.user_stats.find_one({"_id": user_id})
        if doc is None:
            return None
        rows: dict[tuple[str, str], dict] = {}
        for p in doc.get("payments", {}).values():
            row = rows.setdefault(
                (p["currency"], p["status"]),
                {"_id": {"currency": p["currency"], "status": p["status"]}, "count": 0, "total": 0},
            )
            row["count"] += 1
            row["total"] += p["amount_minor"]
        return {**fold(list(rows.values())), "last_activity": doc.get("last_activity")}

    async def summary(self, start: dt.datetime, end: dt.datetime) -> dict:
        rows = await self._grouped({"created_at": {"$gte": start, "$lt": end}})
        return fold(rows)


def fold(rows: list[dict]) -> dict:
    """Grouped (currency, status) rows into totals per currency and per status, exact."""
    by_currency: dict[str, dict] = {}
    by_status: dict[str, dict] = defaultdict(lambda: {"count": 0, "totals": {}})
    minor_by_currency: dict[str, int] = defaultdict(int)
    minor_by_status: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    count = 0
    for row in rows:
        currency, status = row["_id"]["currency"], row["_id"]["status"]
        n, total = int(row["count"]), int(row["total"])
        count += n
        by_currency.setdefault(currency, {"count": 0})["count"] += n
        minor_by_currency[currency] += total
        by_status[status]["count"] += n
        minor_by_status[status][currency] += total
    for currency, total in minor_by_currency.items():
        by_currency[currency]["total"] = format_amount(total, currency)
    for status, totals in minor_by_status.items():
        by_status[status]["totals"] = {c: format_amount(t, c) for c, t in sorted(totals.items())}
    return {
        "payment_count": count,
        "by_currency": dict(sorted(by_currency.items())),
        "by_status": dict(sorted(by_status.items())),
    }


class AnalyticsConsumer(Manager):
    def __init__(self, cfg: dict, reconnect_cfg: dict, store: AnalyticsStore):
        self.cfg = cfg
        self.reconnect_cfg = reconnect_cfg
        self.store = store
        self.timeout_s: float = cfg["request_timeout_s"]
        self.consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None
        self._failing = False
        self.lag = 0

    @classmethod
    def start(cls, config: dict) -> AnalyticsConsumer:
        """Install the consumer; it connects in the background (Kafka or MongoDB may be down now)."""
        inst = cls._install(cls(config["kafka"], config["reconnect"], AnalyticsStore(MongoManager.instance())))
        inst._task = asyncio.create_task(inst._run(), name="kafka-analytics-consumer")
        return inst

    async def _prepare(self) -> None:
        await asyncio.wait_for(self.store.ensure_indexes(), self.timeout_s)
        await self._open()

    async def _open(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.cfg["bootstrap_servers"],
            client_id=f"{self.cfg['client_id']}-analytics",
            group_id=self.cfg["analytics_group"],
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=BATCH,
            request_timeout_ms=int(self.timeout_s * 1000) + 1000,
        )
        try:
            await asyncio.wait_for(consumer.start(), self.timeout_s)
        except BaseException:
            await asyncio.wait_for(consumer.stop(), self.timeout_s)
            raise
        # Subscribing after start() joins the group in the background: a join can wait
        # for a departed member's session to expire, and startup should not.
        consumer.subscribe([self.cfg["topic"]])
        self.consumer = consumer

    async def _run(self) -> None:
        await reconnect("analytics", self._prepare, **self.reconnect_cfg)
        backoff = 0.5
        while True:
            try:
                await self._consume_batch()
                backoff = 0.5
                if self._failing:
                    log.info("analytics batches are stored again")
                    self._failing = False
            except asyncio.CancelledError:
                raise
            except (TimeoutError, PyMongoError, CommitFailedError, KafkaError) as exc:
                metrics.CONSUMER_ERRORS.labels(NAME).inc()
                if not self._failing:  # one line per outage, not one per retry
                    log.warning("analytics batch not stored; will retry", extra={"error": repr(exc)[:2000]})
                self._failing = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _consume_batch(self) -> None:
        assert self.consumer is not None
        consumer = self.consumer
        batches = await consumer.getmany(timeout_ms=500, max_records=BATCH)
        if batches:
            decoded = []
            for record in (r for rs in batches.values() for r in rs):
                try:
                    decoded.append(codec.loads(record.value))
                except codec.InvalidJSON:
                    metrics.CONSUMER_ERRORS.labels(NAME).inc()
            try:
                started = time.perf_counter()
                # Each event costs a few MongoDB round trips: the deadline grows with the batch.
                await asyncio.wait_for(self.store.apply(decoded), self.timeout_s + PER_EVENT_S * len(decoded))
                elapsed = time.perf_counter() - started
                metrics.ANALYTICS_WRITE_DURATION.observe(elapsed)
                log.debug("analytics batch stored", extra={"events": len(decoded), "seconds": round(elapsed, 3)})
                await asyncio.wait_for(consumer.commit(), self.timeout_s)
            except BaseException:
                # Not committed: read the batch again (aiokafka would otherwise skip it, #1046).
                for tp, records in batches.items():
                    consumer.seek(tp, records[0].offset)
                raise
            for event in decoded:
                metrics.EVENTS_CONSUMED.labels(NAME, metrics.event_label(event.get("type"))).inc()
        self.lag = await record_lag(consumer, NAME)

    def status(self) -> dict:
        return consumer_status(self._task, self.lag, self.consumer is not None and not self._failing)

    async def release(self) -> None:
        await stop_consumer(self._task, self.consumer, self.timeout_s, NAME)
