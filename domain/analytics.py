"""Analytics in MongoDB: per-user counters and calendar pre-aggregates, each event counted once.

``AnalyticsConsumer`` (domain/analytics_consumer.py) hands every Kafka batch to
``AnalyticsStore.apply`` and commits the batch's offsets only once it returned.
Each event is a pure delta on counters: ``payment_created`` adds one payment and
its amount to (currency, status); ``payment_updated`` carries ``previous_status``
and moves one payment and its amount from (currency, previous_status) to
(currency, status); ``refund_created`` adds one refund and its amount to (currency,
``refunds``), a row of its own beside the statuses, placed in the buckets by the refund's
own time (a summary counts the refunds made in its window). Amounts are integer minor units (domain/money.py). Every
counter is changed with ``$inc``, so an event costs the same at a user's first
payment as at its 100,000th, and no document grows with history:

- ``events``: one marker per event, ``_id`` = ``event_id``, holding the
  (partition, offset) where the event was first read;
- ``user_totals``: per user, count and total per currency and status
  (``c.USD_pending_n``, ``c.USD_pending_t``), and the time of its last event;
- ``buckets``: the same counts per calendar slot of the payment's ``created_at``
  (a status change moves counts inside the slot of the payment's creation), per
  partition, on seven levels (domain/buckets.py): a year document holds one slot
  per month (``Y:2026:0``, ``s.11.USD_pending_n``), a month one per decade of
  days, ... a 10-minute span one per minute. A summary window reads whole months
  from years, and at most two documents of each finer level at its edges: at most
  14 small documents per partition, whatever the window;
- ``partitions``: the partitions seen, so a summary knows which buckets to read.

Why every count is exact. Every counter document stores, per partition, the
offset of the last event applied to it (``applied.<partition>``), and changes
only through one update that ``$inc``s its counters, ``$set``s that offset and
``$max``es the last activity together. A batch:

1. inserts the markers (``insert_many``, unordered; duplicate keys expected). An
   event whose marker holds another (partition, offset) is a second copy the
   outbox relay published (same key, so same partition, later offset): skipped.
   One whose marker holds its own (partition, offset) is this delivery seen again
   after a failure: processed, and step 2 stops it from counting twice;
2. writes each document it touches with one guarded update (bulk ``update``
   commands, unordered). A batch seen for the first time (``read=False``, the
   normal case) folds all its events into each document, guarded by "the
   document holds none of them": each applied offset below the first event's
   (an upsert that finds the document holding some fails on its ``_id``). A batch
   seen again (``read=True``: after a failure, after start, after a rebalance)
   first reads the documents by ``_id``, folds into each only the events above
   its applied offset, and guards the write by "that offset is unchanged"
   (compare-and-set);
3. meets a refused or unmatched write as a conflict: some document already holds
   some of the batch. That happens when an earlier attempt's write lands late (the
   consumer gave up on it at its deadline, but FerretDB still ran it), so the store
   folds the batch again with ``read=True``, a few times. Past those, or on any other
   failure, the batch fails: the consumer commits nothing, seeks back to the committed
   offsets, and applies the batch again with ``read=True``.

So a batch Kafka delivers again (not committed before a failure or a restart)
adds to each document exactly the events it lacks; so does a consumer that died
between two writes (the documents written carry their new offsets, the others
their old ones); a batch re-applied without reading cannot count twice (its
guards refuse); and a second copy of an event is never counted. A document has
one writer: a user's events share a partition, buckets are per partition, a
partition has one reader in the group, and the consumer finishes its batch before
a rebalance takes a partition away. (FerretDB's updates are read-modify-write,
not atomic between two writers of one document.)

FerretDB 1.24 shapes the queries (measured, docs/BENCHMARKS.md): only equality
filters reach PostgreSQL (``$in`` and ranges are evaluated over the whole
collection), so every read is by ``_id``; an update command of 50 statements
deadlocks its connection pool, so updates go out in commands of at most
``MAX_UPDATES_PER_COMMAND``, ``WRITE_CONCURRENCY`` at a time; ``bulk_write``
fails with a KeyError on FerretDB's reply to a refused statement, so the store
sends the ``update`` command itself; ``$group`` returns 0 for every accumulator
after the first, so the store sums documents itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from bson import Int64
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, PyMongoError

from domain import buckets, codec, events
from domain.events import Event
from domain.money import EXACT, EXPONENTS, format_amount
from domain.payments import TRANSITIONS
from managers import metrics
from managers.mongodb import MongoManager

log = logging.getLogger("singleton.analytics")
NAME = "analytics"  # the consumer's name: its metric label, its group's role
DUPLICATE_KEY = 11000
# FerretDB 1.24.2 on PostgreSQL holds a pooled connection per statement of an update
# command until the command ends, plus one to write: at 50 statements its 50-connection
# pool deadlocks, for every client. An instance holds at most
# WRITE_CONCURRENCY * (MAX_UPDATES_PER_COMMAND + 1) = 18 of them (and READ_CONCURRENCY
# for reads), which leaves room for the API and a second instance.
MAX_UPDATES_PER_COMMAND = 8
WRITE_CONCURRENCY = 2
READ_CONCURRENCY = 8  # reads by _id in flight at once (each holds a FerretDB connection)
# A batch whose guarded write is refused is folded again, reading first, this many times in
# all, waiting 0.05, 0.1, 0.2 ... s between (AnalyticsStore.apply); then the failure is the
# consumer's to report.
CONFLICT_ATTEMPTS = 5
CONFLICT_BACKOFF_S = 0.05
Document = dict[str, Any]  # a MongoDB document, filter or command part
Rows = Counter[tuple[str, ...]]  # (currency, status, "n" | "t") -> a count or a total in minor units


class Delivery(NamedTuple):
    """One Kafka record as the store sees it: where it was read, and its decoded event."""

    partition: int
    offset: int
    event: Any


class StaleWrite(PyMongoError):
    """A guarded write refused or matched nothing: the document already holds some of the
    batch, or changed since it was read."""


def minor_units(amount: str, currency: str) -> int:
    """The exact decimal string of a payment back to integer minor units."""
    minor = EXACT.create_decimal(amount).scaleb(EXPONENTS[currency], context=EXACT)
    if minor <= 0 or minor != minor.to_integral_value(context=EXACT):
        raise ValueError(f"{amount} is not a positive {currency} amount")
    return int(minor)


REFUNDS = "refunds"  # the counters' row of refunds, beside the statuses' (not a status)


def counter_moves(event: Event) -> list[tuple[str, int]]:
    """The counters (``<currency>_<status>``, or ``<currency>_refunds``) an event changes, and
    by how many payments or refunds. Flat keys: FerretDB reads and writes a document in time
    that grows with its nesting."""
    data = event["data"]
    if event["type"] == events.REFUND_CREATED:
        return [(f"{data['currency']}_{REFUNDS}", 1)]
    if event["type"] == events.PAYMENT_CREATED:
        return [(f"{data['currency']}_{data['status']}", 1)]
    if event["type"] == events.PAYMENT_UPDATED:
        return [(f"{data['currency']}_{data['previous_status']}", -1), (f"{data['currency']}_{data['status']}", 1)]
    return []


def _usable(event: Any) -> bool:
    """A domain event with what the store reads; anything else (health_check, a
    malformed message) is skipped, never retried forever."""
    if not isinstance(event, dict) or event.get("type") not in events.DOMAIN_TYPES:
        return False
    try:
        codec.from_rfc3339(event["occurred_at"])
        if not (isinstance(event["event_id"], str) and isinstance(event["user_id"], str)):
            raise TypeError("event_id and user_id must be strings")
        if event["type"] == events.REFUND_CREATED:
            minor_units(event["data"]["amount"], event["data"]["currency"])
            codec.from_rfc3339(event["data"]["created_at"])
        if event["type"] in (events.PAYMENT_CREATED, events.PAYMENT_UPDATED):
            data = event["data"]
            minor_units(data["amount"], data["currency"])
            codec.from_rfc3339(data["created_at"])
            moved = [data["previous_status"]] if event["type"] == events.PAYMENT_UPDATED else []
            for status in [data["status"], *moved]:
                if status not in TRANSITIONS:  # a counter key is made of it
                    raise ValueError(f"unknown status {status!r}")
    except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError) as exc:
        metrics.CONSUMER_ERRORS.labels(NAME).inc()
        log.warning("skipping malformed event", extra={"consumer": NAME, "error": repr(exc)})
        return False
    return True


def marker(delivery: Delivery) -> Document:
    """The ``events`` document of an event: where it was first read."""
    event = delivery.event
    return {
        "_id": event["event_id"],
        "p": delivery.partition,
        "o": Int64(delivery.offset),
        "type": event["type"],
        "user_id": event["user_id"],
        "occurred_at": codec.from_rfc3339(event["occurred_at"]),
    }


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
    for key, n in counter_moves(event):
        amount = minor_units(event["data"]["amount"], event["data"]["currency"])
        inc[f"{key}_n"] = inc.get(f"{key}_n", 0) + n
        inc[f"{key}_t"] = inc.get(f"{key}_t", 0) + n * amount
    user = {f"c.{k}": v for k, v in inc.items()}
    out = [Change("user_totals", event["user_id"], p, o, user, codec.from_rfc3339(event["occurred_at"]))]
    if inc:
        for doc_key, slot in buckets.place(codec.from_rfc3339(event["data"]["created_at"])):
            out.append(Change("buckets", f"{doc_key}:{p}", p, o, {f"s.{slot}.{k}": v for k, v in inc.items()}, None))
    return out


def _update(doc_id: str, pending: list[Change], stored: Document | None) -> Document | None:
    """One guarded update statement: ``$inc`` the counters, ``$set`` the applied offsets,
    ``$max`` the last activity.

    Not read (``stored`` None, a batch seen for the first time): every change is folded, and
    the filter requires that the document holds none of them (each applied offset below the
    first change's); a document that does fails the write (the upsert hits its ``_id``). Read
    (after a failure; ``{}`` if absent): only the changes above the stored offsets are folded,
    and the filter requires those offsets unchanged (compare-and-set)."""
    applied = (stored or {}).get("applied", {})
    inc: Counter[str] = Counter()
    last: dt.datetime | None = None
    first: dict[str, int] = {}
    newest: dict[str, int] = {}
    for change in pending:
        key = str(change.partition)
        if key in applied and change.offset <= applied[key]:
            continue  # already in the document: written before a failure
        inc.update(change.inc)
        if change.last_activity is not None:
            last = max(last or change.last_activity, change.last_activity)
        first[key] = min(first.get(key, change.offset), change.offset)
        newest[key] = max(newest.get(key, change.offset), change.offset)
    if not newest:
        return None
    guard: Document  # on each applied offset
    if stored is None:
        guard = {f"applied.{k}": {"$not": {"$gte": Int64(o)}} for k, o in first.items()}
    else:
        guard = {f"applied.{k}": applied[k] if k in applied else {"$exists": False} for k in newest}
    update: dict[str, Document] = {"$set": {f"applied.{k}": Int64(o) for k, o in newest.items()}}
    if counters := {path: Int64(n) for path, n in inc.items() if n}:
        update["$inc"] = counters
    if last is not None:
        update["$max"] = {"last_activity": last}
    return {"q": {"_id": doc_id, **guard}, "u": update, "upsert": not applied}


def add_counters(rows: Rows, counters: dict[str, int]) -> None:
    """Add ``{"USD_pending_n": 3, "USD_pending_t": 1050}`` into ``rows`` keyed (currency, status, n|t)."""
    for key, value in counters.items():
        rows[tuple(key.split("_"))] += value


def totals(rows: Rows) -> dict[str, Any]:
    """(currency, status) counts and totals into totals per currency and per status, and the
    refunds' per currency, exact."""
    by_currency: dict[str, dict[str, Any]] = {}
    by_status: dict[str, dict[str, Any]] = {}
    minor_by_currency: Counter[str] = Counter()
    refunds: dict[str, Any] = {"count": 0, "by_currency": {}}
    count = 0
    for currency, status in sorted({(c, s) for c, s, _ in rows}):
        n, total = int(rows[(currency, status, "n")]), int(rows[(currency, status, "t")])
        if n == 0:
            continue  # every payment counted here has moved on to another status
        if status == REFUNDS:
            refunds["count"] += n
            refunds["by_currency"][currency] = {"count": n, "total": format_amount(total, currency)}
            continue
        count += n
        by_currency.setdefault(currency, {"count": 0})["count"] += n
        minor_by_currency[currency] += total
        entry = by_status.setdefault(status, {"count": 0, "totals": {}})
        entry["count"] += n
        entry["totals"][currency] = format_amount(total, currency)
    for currency, total in minor_by_currency.items():
        by_currency[currency]["total"] = format_amount(total, currency)
    return {
        "payment_count": count,
        "by_currency": by_currency,
        "by_status": dict(sorted(by_status.items())),
        "refunds": refunds,
    }


async def _insert_new(coll: AsyncCollection[Document], docs: list[Document]) -> list[Any]:
    """Insert ``docs``, unordered; the ``_id`` of each that was already there (any other
    refusal raises)."""
    try:
        await coll.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(err.get("code") != DUPLICATE_KEY for err in errors):
            raise
        return [docs[err["index"]]["_id"] for err in errors]
    return []


def _chunks(items: list[Document], size: int) -> Iterable[list[Document]]:
    return (items[i : i + size] for i in range(0, len(items), size))


class AnalyticsStore:
    """The MongoDB side: markers, counters, and the reads the API serves."""

    def __init__(self, db: AsyncDatabase[Document]):
        self.db = db
        self._partitions: set[int] = set()  # known to be recorded in ``partitions``

    async def apply(self, batch: list[Delivery], read: bool = False) -> int:
        """Fold a batch into the counters; return how many events were new.

        ``read=False`` for a batch seen the first time: no reads. ``read=True`` for a batch seen
        again: each document gets exactly the events it lacks. Either way a guard that refuses
        (``StaleWrite``: a document holds some of the batch, or changed since it was read) is a
        conflict, not a failure: an earlier attempt's write has landed, typically one this
        consumer abandoned at its deadline while FerretDB still ran it. The batch is then
        folded again, reading first, up to ``CONFLICT_ATTEMPTS`` times in all."""
        usable = [d for d in batch if _usable(d.event)]
        if not usable:
            return 0
        await self._record_partitions({d.partition for d in usable})
        new: int | None = None
        for attempt in range(CONFLICT_ATTEMPTS):
            accepted, fresh = await self._first_copies(usable)
            new = fresh if new is None else new  # the markers the first attempt inserted
            try:
                await self._fold(accepted, read)
                return new
            except StaleWrite as exc:
                if attempt == CONFLICT_ATTEMPTS - 1:
                    raise
                log.debug("analytics batch met a write of its own; reading again", extra={"error": str(exc)})
                read = True
                await asyncio.sleep(CONFLICT_BACKOFF_S * 2**attempt)  # let abandoned writes land
        raise AssertionError("unreachable")

    async def _fold(self, accepted: list[Delivery], read: bool) -> None:
        """One guarded write of every document the accepted deliveries change (module docstring)."""
        pending: dict[tuple[str, str], list[Change]] = defaultdict(list)
        for delivery in accepted:
            for change in changes(delivery):
                pending[(change.collection, change.doc_id)].append(change)
        stored: dict[tuple[str, str], Document] = {}
        if read:
            names = ("user_totals", "buckets")
            ids = {name: [doc_id for coll, doc_id in pending if coll == name] for name in names}
            found = await asyncio.gather(*(self._read(self.db[n], ids[n], {"applied": 1}) for n in names))
            stored = {(n, i): docs.get(i, {}) for n, docs in zip(names, found, strict=True) for i in ids[n]}
        updates: dict[str, list[Document]] = defaultdict(list)
        for (name, doc_id), changed in pending.items():
            if (update := _update(doc_id, changed, stored.get((name, doc_id)))) is not None:
                updates[name].append(update)
        await self._write(updates)

    async def _first_copies(self, deliveries: list[Delivery]) -> tuple[list[Delivery], int]:
        """The deliveries to count (first copies, or this same delivery again) and how many
        events are new: markers record where each event was first read."""
        first: dict[str, Delivery] = {}
        for d in deliveries:
            first.setdefault(d.event["event_id"], d)
        docs = [marker(d) for d in first.values()]
        seen: dict[str, tuple[int, int]] = {doc["_id"]: (doc["p"], doc["o"]) for doc in docs}
        duplicates = await _insert_new(self.db.events, docs)
        markers = await self._read(self.db.events, duplicates, {"p": 1, "o": 1})
        if len(markers) != len(duplicates):
            raise StaleWrite("an event marker vanished between its insert and its read")
        seen.update({event_id: (m["p"], m["o"]) for event_id, m in markers.items()})
        accepted = [d for d in deliveries if seen[d.event["event_id"]] == (d.partition, d.offset)]
        return accepted, len(docs) - len(duplicates)

    async def _record_partitions(self, partitions: set[int]) -> None:
        new = sorted(partitions - self._partitions)
        if new:
            await _insert_new(self.db.partitions, [{"_id": p} for p in new])
            self._partitions.update(new)

    @staticmethod
    async def _read(
        coll: AsyncCollection[Document],
        ids: list[str],
        projection: Mapping[str, Any] | Callable[[str], Mapping[str, Any]] | None = None,
    ) -> dict[str, Document]:
        """Documents by ``_id``, one equality read each (FerretDB 1.24 evaluates ``$in`` over
        the whole collection, but takes an ``_id`` lookup to an index), READ_CONCURRENCY at a
        time. ``projection``: one for all, or a function of the ``_id``."""
        slots = asyncio.Semaphore(READ_CONCURRENCY)

        async def one(doc_id: str) -> Document | None:
            async with slots:
                return await coll.find_one({"_id": doc_id}, projection(doc_id) if callable(projection) else projection)

        return {doc["_id"]: doc for doc in await asyncio.gather(*(one(i) for i in ids)) if doc is not None}

    async def _write(self, updates: dict[str, list[Document]]) -> None:
        """Every update, in commands of at most MAX_UPDATES_PER_COMMAND, WRITE_CONCURRENCY at a time."""
        slots = asyncio.Semaphore(WRITE_CONCURRENCY)

        async def command(coll: AsyncCollection[Document], chunk: list[Document]) -> None:
            async with slots:
                await self._bulk(coll, chunk)

        tasks = [
            asyncio.ensure_future(command(self.db[name], chunk))
            for name, ops in updates.items()
            for chunk in _chunks(ops, MAX_UPDATES_PER_COMMAND)
        ]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # a failed batch leaves no write of its own running
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    @staticmethod
    async def _bulk(coll: AsyncCollection[Document], statements: list[Document]) -> None:
        """One ``update`` command, unordered; every statement must match or upsert its document.

        Sent as the command rather than through ``bulk_write``: FerretDB 1.24 answers a failed
        statement with ``writeErrors`` and no ``nModified``, which ``bulk_write`` meets with
        a KeyError (it also stops at that statement, ordered or not)."""
        reply = await coll.database.command({"update": coll.name, "updates": statements, "ordered": False})
        if reply.get("writeErrors"):
            raise StaleWrite(f"update refused: {reply['writeErrors'][0].get('errmsg')}")
        if reply.get("n") != len(statements):
            raise StaleWrite(f"{len(statements) - reply.get('n', 0)} of {len(statements)} updates matched nothing")

    async def user_stats(self, user_id: str) -> dict[str, Any] | None:
        """Totals from the user's one counters document."""
        doc = await self.db.user_totals.find_one({"_id": user_id})
        if doc is None:
            return None
        rows: Rows = Counter()
        add_counters(rows, doc.get("c", {}))
        return {**totals(rows), "last_activity": doc.get("last_activity")}

    async def summary(self, start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
        """Totals of the payments created, and the refunds made, in [start, end), both whole minutes."""
        wanted: dict[str, list[str]] = defaultdict(list)
        for level, t in buckets.cover(start, end):
            wanted[buckets.doc_key(level, t)].append(buckets.slot_key(level, t))
        partitions = [doc["_id"] async for doc in self.db.partitions.find({})]
        ids = [f"{key}:{p}" for key in wanted for p in partitions]
        docs = await self._read(
            self.db.buckets, ids, lambda i: {f"s.{slot}": 1 for slot in wanted[i.rsplit(":", 1)[0]]}
        )
        rows: Rows = Counter()
        for doc in docs.values():
            for counters in doc.get("s", {}).values():
                add_counters(rows, counters)
        return totals(rows)


# -- what the API reads (any role that runs MongoManager, with or without the consumer) ---------
async def user_stats(user_id: str) -> dict[str, Any] | None:
    return await AnalyticsStore(MongoManager.instance().db).user_stats(user_id)


async def summary(start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    return await AnalyticsStore(MongoManager.instance().db).summary(start, end)
