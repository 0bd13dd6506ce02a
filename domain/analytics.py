"""Analytics in MongoDB: per-user counters and calendar pre-aggregates, each event counted once.

``AnalyticsConsumer`` (domain/analytics_consumer.py) hands every Kafka batch to
``AnalyticsStore.apply`` and commits the batch's offsets only once it returned.
Each event is a pure delta on counters: ``payment_created`` adds one payment and
its amount to (currency, status); ``payment_updated`` carries ``previous_status``
and moves one payment and its amount from (currency, previous_status) to
(currency, status). Amounts are integer minor units (domain/money.py). Every
counter is changed with ``$inc``, so an event costs the same at a user's first
payment as at its 100,000th, and no document grows with history:

- ``events``: one marker per event, ``_id`` = ``event_id``, holding the
  (partition, offset) where the event was first read;
- ``user_totals``: per user, count and total per currency and status, and the
  time of its last event (``$max``);
- ``buckets``: the same counts per calendar slot of the payment's ``created_at``
  (a status change moves counts inside the slot of the payment's creation), per
  partition: a month document holds one slot per day (``M:2026-11:0``), a day
  document one per hour (``D:2026-11-26:0``), an hour document one per minute
  (``H:2026-11-26T01:0``). A summary window reads whole days from months, the
  hours of its two partial days and the minutes of its two partial hours: at
  most 17 documents per partition for a year;
- ``partitions``: the partitions seen, so a summary knows which buckets to read.

Why every count is exact. Every counter document stores, per partition, the
offset of the last event applied to it (``applied.<partition>``). A batch:

1. inserts the markers (``insert_many``, unordered; duplicate keys expected). An
   event whose marker holds another (partition, offset) is a second copy the
   outbox relay published (same key, so same partition, later offset): skipped.
   One whose marker holds its own (partition, offset) is this delivery seen again
   after a failure: processed, and step 3 stops it from counting twice;
2. reads the documents the batch touches, by ``_id``;
3. folds into each document only the events above its ``applied`` offset and
   writes it with one update filtered on that offset being unchanged
   (compare-and-set): ``$inc`` the counters, ``$set`` the offset, ``$max`` the
   last activity. Counters and offset live in one document, so they change together;
4. fails the batch on any failed or unmatched write. The consumer then commits
   nothing, seeks back to the committed offsets and reads the batch again.

So a batch Kafka delivers again (not committed before a failure or a restart)
adds to each document exactly the events it lacks; so does a consumer that died
between two writes (the documents written carry their new offsets, the others
their old ones); and a second copy of an event is never counted. A document has
one writer: a user's events share a partition, buckets are per partition, a
partition has one reader in the group, and the consumer finishes its batch before
a rebalance takes a partition away. (FerretDB's updates are read-modify-write,
not atomic between two writers of one document.)

FerretDB 1.24 shapes the queries (measured, docs/BENCHMARKS.md): only equality
filters reach PostgreSQL (``$in`` and ranges are evaluated over the whole
collection), so every read is by ``_id``; an update command of 50 statements
deadlocks its connection pool, so updates go out in commands of at most
``MAX_UPDATES_PER_COMMAND``; ``$group`` returns 0 for every accumulator after the
first, so the store sums documents itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from decimal import Decimal
from typing import Any, NamedTuple

from bson import Int64
from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, PyMongoError

from domain import events
from domain.money import EXPONENTS, format_amount
from domain.payments import TRANSITIONS
from managers import metrics

log = logging.getLogger("singleton.analytics")
NAME = "analytics"
DUPLICATE_KEY = 11000
# FerretDB 1.24.2 on PostgreSQL holds a pooled connection per statement of an update
# command until the command ends: 50 statements exhaust its 50-connection pool and
# deadlock it. 16 leaves room for reads, the API and other instances.
MAX_UPDATES_PER_COMMAND = 16
READ_CONCURRENCY = 8  # reads by _id in flight at once (each holds a FerretDB connection)
DAY, HOUR, MINUTE = dt.timedelta(days=1), dt.timedelta(hours=1), dt.timedelta(minutes=1)


class Level(NamedTuple):
    """One level of the calendar: documents named by ``doc`` hold one slot per ``unit``."""

    prefix: str
    doc: str
    slot: str
    unit: dt.timedelta


LEVELS = (Level("M", "%Y-%m", "%d", DAY), Level("D", "%Y-%m-%d", "%H", HOUR), Level("H", "%Y-%m-%dT%H", "%M", MINUTE))


class Delivery(NamedTuple):
    """One Kafka record as the store sees it: where it was read, and its decoded event."""

    partition: int
    offset: int
    event: Any


class StaleWrite(PyMongoError):
    """A compare-and-set update matched nothing: the document changed since it was read."""


def _when(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.UTC)


def _minor(amount: str, currency: str) -> int:
    """The exact decimal string of a payment back to integer minor units."""
    minor = Decimal(amount).scaleb(EXPONENTS[currency])
    if minor <= 0 or minor != minor.to_integral_value():
        raise ValueError(f"{amount} is not a positive {currency} amount")
    return int(minor)


def _moves(event: dict) -> list[tuple[str, int]]:
    """The counter paths (``<currency>.<status>``) an event changes, and by how many payments."""
    data = event["data"]
    if event["type"] == events.PAYMENT_CREATED:
        return [(f"{data['currency']}.{data['status']}", 1)]
    if event["type"] == events.PAYMENT_UPDATED:
        return [(f"{data['currency']}.{data['previous_status']}", -1), (f"{data['currency']}.{data['status']}", 1)]
    return []


def _usable(event: Any) -> bool:
    """A domain event with what the store reads; anything else (health_check, a
    malformed message) is skipped, never retried forever."""
    if not isinstance(event, dict) or event.get("type") not in events.DOMAIN_TYPES:
        return False
    try:
        _when(event["occurred_at"])
        if not (isinstance(event["event_id"], str) and isinstance(event["user_id"], str)):
            raise TypeError("event_id and user_id must be strings")
        if event["type"] in (events.PAYMENT_CREATED, events.PAYMENT_UPDATED):
            data = event["data"]
            _minor(data["amount"], data["currency"])
            _when(data["created_at"])
            for status in {data["status"], data.get("previous_status", data["status"])}:
                if status not in TRANSITIONS:
                    raise ValueError(f"unknown status {status!r}")
    except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError) as exc:
        metrics.CONSUMER_ERRORS.labels(NAME).inc()
        log.warning("skipping malformed event", extra={"consumer": NAME, "error": repr(exc)})
        return False
    return True


def _slots(created_at: dt.datetime, partition: int) -> list[tuple[str, str]]:
    """(bucket document id, slot) of a payment created at ``created_at``, on every level."""
    return [(f"{lv.prefix}:{created_at:{lv.doc}}:{partition}", f"{created_at:{lv.slot}}") for lv in LEVELS]


class Change(NamedTuple):
    """What one event adds to one document."""

    collection: str
    doc_id: str
    partition: int
    offset: int
    inc: dict[str, int]
    last_activity: dt.datetime | None


def changes(delivery: Delivery) -> list[Change]:
    """Every document an event changes, and how (``$inc`` paths; the user's last activity)."""
    event, p, o = delivery.event, delivery.partition, delivery.offset
    inc: dict[str, int] = {}
    for path, n in _moves(event):
        amount = _minor(event["data"]["amount"], event["data"]["currency"])
        inc[f"{path}.n"] = inc.get(f"{path}.n", 0) + n
        inc[f"{path}.t"] = inc.get(f"{path}.t", 0) + n * amount
    user = {f"c.{k}": v for k, v in inc.items()}
    out = [Change("user_totals", event["user_id"], p, o, user, _when(event["occurred_at"]))]
    if inc:
        for doc_id, slot in _slots(_when(event["data"]["created_at"]), p):
            out.append(Change("buckets", doc_id, p, o, {f"s.{slot}.{k}": v for k, v in inc.items()}, None))
    return out


def _update(doc_id: str, stored: dict | None, pending: list[Change]) -> UpdateOne | None:
    """One compare-and-set update folding the changes above the document's applied offsets."""
    applied = (stored or {}).get("applied", {})
    inc: Counter[str] = Counter()
    last: dt.datetime | None = None
    newest: dict[str, int] = {}
    for change in pending:
        key = str(change.partition)
        if key in applied and change.offset <= applied[key]:
            continue  # already in the document: written before a failure
        inc.update(change.inc)
        if change.last_activity is not None:
            last = max(last or change.last_activity, change.last_activity)
        newest[key] = max(newest.get(key, change.offset), change.offset)
    if not newest:
        return None
    cas = {f"applied.{k}": applied[k] if k in applied else {"$exists": False} for k in newest}
    update: dict[str, dict] = {"$set": {f"applied.{k}": Int64(o) for k, o in newest.items()}}
    if counters := {path: Int64(n) for path, n in inc.items() if n}:
        update["$inc"] = counters
    if last is not None:
        update["$max"] = {"last_activity": last}
    return UpdateOne({"_id": doc_id, **cas}, update, upsert=stored is None)


def _tally(rows: Counter, counters: dict) -> None:
    """Add ``{currency: {status: {n, t}}}`` into ``rows`` keyed (currency, status)."""
    for currency, statuses in counters.items():
        for status, c in statuses.items():
            rows[(currency, status, "n")] += c.get("n", 0)
            rows[(currency, status, "t")] += c.get("t", 0)


def fold(rows: Counter) -> dict:
    """(currency, status) counts and totals into totals per currency and per status, exact."""
    by_currency: dict[str, dict] = {}
    by_status: dict[str, dict] = {}
    minor_by_currency: Counter[str] = Counter()
    count = 0
    for currency, status in sorted({(c, s) for c, s, _ in rows}):
        n, total = int(rows[(currency, status, "n")]), int(rows[(currency, status, "t")])
        if n == 0:
            continue  # every payment counted here has moved on to another status
        count += n
        by_currency.setdefault(currency, {"count": 0})["count"] += n
        minor_by_currency[currency] += total
        entry = by_status.setdefault(status, {"count": 0, "totals": {}})
        entry["count"] += n
        entry["totals"][currency] = format_amount(total, currency)
    for currency, total in minor_by_currency.items():
        by_currency[currency]["total"] = format_amount(total, currency)
    return {"payment_count": count, "by_currency": by_currency, "by_status": dict(sorted(by_status.items()))}


def _floor(t: dt.datetime, unit: dt.timedelta) -> dt.datetime:
    t = t.replace(second=0, microsecond=0)
    if unit >= HOUR:
        t = t.replace(minute=0)
    return t.replace(hour=0) if unit >= DAY else t


def cover(start: dt.datetime, end: dt.datetime, level: int = 0) -> list[tuple[int, dt.datetime]]:
    """Minute-aligned [start, end) as whole slots, (level, slot start), coarsest where they fit."""
    unit = LEVELS[level].unit
    first = _floor(start, unit)
    first += unit if first < start else dt.timedelta()
    last = _floor(end, unit)
    if level == len(LEVELS) - 1 or first >= last:
        return _steps(start, end, level) if level == len(LEVELS) - 1 else cover(start, end, level + 1)
    return cover(start, first, level + 1) + _steps(first, last, level) + cover(last, end, level + 1)


def _steps(start: dt.datetime, end: dt.datetime, level: int) -> list[tuple[int, dt.datetime]]:
    out, t = [], start
    while t < end:
        out.append((level, t))
        t += LEVELS[level].unit
    return out


def _chunks(items: list, size: int) -> Iterable[list]:
    return (items[i : i + size] for i in range(0, len(items), size))


class AnalyticsStore:
    """The MongoDB side: markers, counters, and the reads the API serves."""

    def __init__(self, db: AsyncDatabase):
        self.db = db
        self._partitions: set[int] = set()  # known to be recorded in ``partitions``

    async def apply(self, batch: list[Delivery]) -> int:
        """Fold a batch into the counters; return how many events were new."""
        usable = [d for d in batch if _usable(d.event)]
        if not usable:
            return 0
        await self._record_partitions({d.partition for d in usable})
        accepted, new = await self._first_copies(usable)
        pending: dict[tuple[str, str], list[Change]] = defaultdict(list)
        for delivery in accepted:
            for change in changes(delivery):
                pending[(change.collection, change.doc_id)].append(change)
        names = ("user_totals", "buckets")
        ids = {name: [doc_id for coll, doc_id in pending if coll == name] for name in names}
        stored = await asyncio.gather(*(self._read(self.db[n], ids[n], {"applied": 1}) for n in names))
        for name, docs in zip(names, stored, strict=True):
            updates = [_update(i, docs.get(i), pending[(name, i)]) for i in ids[name]]
            await self._write(self.db[name], [u for u in updates if u is not None])
        return new

    async def _first_copies(self, deliveries: list[Delivery]) -> tuple[list[Delivery], int]:
        """The deliveries to count (first copies, or this same delivery again) and how many
        events are new: markers record where each event was first read."""
        first: dict[str, Delivery] = {}
        for d in deliveries:
            first.setdefault(d.event["event_id"], d)
        docs = [
            {
                "_id": event_id,
                "p": d.partition,
                "o": Int64(d.offset),
                "type": d.event["type"],
                "user_id": d.event["user_id"],
                "occurred_at": _when(d.event["occurred_at"]),
            }
            for event_id, d in first.items()
        ]
        seen: dict[str, tuple[int, int]] = {doc["_id"]: (doc["p"], doc["o"]) for doc in docs}
        duplicates: list[str] = []
        try:
            await self.db.events.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(err.get("code") != DUPLICATE_KEY for err in errors):
                raise
            duplicates = [docs[err["index"]]["_id"] for err in errors]
        markers = await self._read(self.db.events, duplicates, {"p": 1, "o": 1})
        if len(markers) != len(duplicates):
            raise StaleWrite("an event marker vanished between its insert and its read")
        seen.update({event_id: (m["p"], m["o"]) for event_id, m in markers.items()})
        accepted = [d for d in deliveries if seen[d.event["event_id"]] == (d.partition, d.offset)]
        return accepted, len(docs) - len(duplicates)

    async def _record_partitions(self, partitions: set[int]) -> None:
        new = sorted(partitions - self._partitions)
        if new:
            try:
                await self.db.partitions.insert_many([{"_id": p} for p in new], ordered=False)
            except BulkWriteError as exc:
                if any(err.get("code") != DUPLICATE_KEY for err in exc.details.get("writeErrors", [])):
                    raise
            self._partitions.update(new)

    @staticmethod
    async def _read(coll: AsyncCollection, ids: list[str], projection: dict | None = None) -> dict[str, dict]:
        """Documents by ``_id``, one equality read each: FerretDB 1.24 evaluates ``$in``
        over the whole collection, but takes an ``_id`` lookup to an index."""
        found: dict[str, dict] = {}
        for chunk in _chunks(ids, READ_CONCURRENCY):
            docs = await asyncio.gather(*(coll.find_one({"_id": i}, projection) for i in chunk))
            found.update({doc["_id"]: doc for doc in docs if doc is not None})
        return found

    async def _write(self, coll: AsyncCollection, updates: list[UpdateOne]) -> None:
        for chunk in _chunks(updates, MAX_UPDATES_PER_COMMAND):
            await self._bulk(coll, chunk)

    @staticmethod
    async def _bulk(coll: AsyncCollection, updates: list[UpdateOne]) -> None:
        """One update command; every statement must match (or upsert) its document."""
        result = await coll.bulk_write(updates, ordered=False)
        if result.matched_count + result.upserted_count != len(updates):
            raise StaleWrite(f"{len(updates) - result.matched_count - result.upserted_count} stale writes")

    async def user_stats(self, user_id: str) -> dict | None:
        """Totals from the user's one counters document."""
        doc = await self.db.user_totals.find_one({"_id": user_id})
        if doc is None:
            return None
        rows: Counter = Counter()
        _tally(rows, doc.get("c", {}))
        return {**fold(rows), "last_activity": doc.get("last_activity")}

    async def summary(self, start: dt.datetime, end: dt.datetime) -> dict:
        """Totals of the payments created in [start, end), both whole minutes."""
        wanted: dict[str, list[str]] = defaultdict(list)
        for level, t in cover(start, end):
            lv = LEVELS[level]
            wanted[f"{lv.prefix}:{t:{lv.doc}}"].append(f"{t:{lv.slot}}")
        partitions = [doc["_id"] async for doc in self.db.partitions.find({})]
        docs = await self._read(self.db.buckets, [f"{key}:{p}" for key in wanted for p in partitions])
        rows: Counter = Counter()
        for doc_id, doc in docs.items():
            slots = doc.get("s", {})
            for slot in wanted[doc_id.rsplit(":", 1)[0]]:
                _tally(rows, slots.get(slot, {}))
        return fold(rows)
