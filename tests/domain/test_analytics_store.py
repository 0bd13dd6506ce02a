"""The analytics store on the real FerretDB, fed deliveries directly: redelivery, a second
copy of an event, a crash between two writes, the largest write, the summary's edges,
and a cost that does not grow with a user's history.

Each test gets an empty database of its own; the live consumer writes elsewhere.
"""

from __future__ import annotations

import datetime as dt
import random
import statistics
import time
import uuid
from collections import Counter

import pytest

from domain import analytics, events, payments, refunds
from domain.analytics import (
    MAX_UPDATES_PER_COMMAND,
    READ_CONCURRENCY,
    WRITE_CONCURRENCY,
    AnalyticsStore,
    Delivery,
    totals,
)
from domain.analytics_consumer import AnalyticsConsumer
from domain.money import parse_amount
from managers.mongodb import MongoManager

BATCH = AnalyticsConsumer.batch_size

DATABASE = "singleton_test_store"
T0 = dt.datetime(2031, 3, 14, 9, 26, 53, tzinfo=dt.UTC)
MAX = 10**9


@pytest.fixture
def store(services, io_loop) -> AnalyticsStore:
    client = MongoManager.instance().client
    io_loop.run_sync(lambda: client.drop_database(DATABASE), timeout=30)
    return AnalyticsStore(client[DATABASE])


class Feed:
    """Events as Kafka would deliver them: one partition, offsets in order; it also keeps
    every payment's latest state, to count what the store should hold."""

    def __init__(self, partition: int = 0):
        self.partition, self.offset = partition, 0
        self.payments: dict[str, dict] = {}

    def deliver(self, event: dict) -> Delivery:
        delivery = Delivery(self.partition, self.offset, event)
        self.offset += 1
        return delivery

    def created(self, user_id: str, at: dt.datetime, amount: str = "10.00", currency: str = "USD") -> Delivery:
        row = {"id": str(uuid.uuid4()), "user_id": user_id, "currency": currency, "description": None}
        row |= {"amount_minor": parse_amount(amount, currency, MAX), "status": "pending", "version": 1}
        data = payments.to_api(row | {"created_at": at, "updated_at": at})
        self.payments[data["id"]] = data
        return self.deliver(events.envelope(events.PAYMENT_CREATED, user_id, data, at))

    def moved(self, payment_id: str, status: str, at: dt.datetime | None = None) -> Delivery:
        before = self.payments[payment_id]
        data = {**before, "status": status, "version": before["version"] + 1, "previous_status": before["status"]}
        self.payments[payment_id] = data
        return self.deliver(events.envelope(events.PAYMENT_UPDATED, data["user_id"], data, at))

    def refunded(self, payment_id: str, amount: str, at: dt.datetime) -> Delivery:
        """A refund of ``amount`` made at ``at``, as domain/refunds.py announces it."""
        payment = self.payments[payment_id]
        row = {"id": str(uuid.uuid4()), "payment_id": payment_id, "currency": payment["currency"]}
        row |= {"amount_minor": parse_amount(amount, payment["currency"], MAX), "reason": None}
        data = refunds.to_api(row | {"status": "succeeded", "created_at": at})
        return self.deliver(events.envelope(events.REFUND_CREATED, payment["user_id"], data, at))

    def expected(self, keep=lambda payment: True) -> dict:
        return counted(self.payments.values(), keep)


def counted(payments, keep=lambda payment: True) -> dict:
    """Totals of the payments ``keep`` selects, counted from their latest state."""
    rows: Counter = Counter()
    for p in payments:
        if keep(p):
            rows[(p["currency"], p["status"], "n")] += 1
            rows[(p["currency"], p["status"], "t")] += parse_amount(p["amount"], p["currency"], MAX)
    return totals(rows)


def created_in(start: dt.datetime, end: dt.datetime):
    return lambda p: start <= dt.datetime.fromisoformat(p["created_at"].replace("Z", "+00:00")) < end


async def user_totals(store: AnalyticsStore, user_id: str) -> dict:
    stats = await store.user_stats(user_id)
    assert stats is not None
    return {k: v for k, v in stats.items() if k != "last_activity"}


def mixed_batch(feed: Feed, users: list[str], payments: int, spread: dt.timedelta) -> list[Delivery]:
    """Payments spread over ``spread`` from T0 (so they touch many bucket documents), and
    half of them moved on once or twice."""
    rng = random.Random(7)
    batch = [
        feed.created(rng.choice(users), T0 + spread * rng.random(), f"{rng.randint(1, 999)}.{rng.randint(0, 99):02d}")
        for _ in range(payments)
    ]
    for payment_id in list(feed.payments)[::2]:
        batch.append(feed.moved(payment_id, "processing"))
        if rng.random() < 0.5:
            batch.append(feed.moved(payment_id, rng.choice(["completed", "failed"])))
    return batch


@pytest.mark.gen_test(timeout=60)
async def test_a_batch_delivered_again_counts_once(store):
    feed, user = Feed(), str(uuid.uuid4())
    batch = mixed_batch(feed, [user], 30, dt.timedelta(hours=5))
    assert await store.apply(batch) == len(batch)
    # Seen again as if for the first time (no reads), its guards refuse, and it reads and
    # adds nothing rather than count twice...
    assert await store.apply(batch) == 0
    assert await user_totals(store, user) == feed.expected()
    # ... and as the consumer applies a batch seen again (read first), it adds nothing,
    # with the same boundaries or others (a consumer restarted mid-way).
    assert await store.apply(batch, read=True) == 0
    assert await store.apply(batch[10:], read=True) == 0
    assert await user_totals(store, user) == feed.expected()
    assert await store.summary(T0 - dt.timedelta(days=1), T0 + dt.timedelta(days=1)) == feed.expected()


@pytest.mark.gen_test(timeout=60)
async def test_a_second_copy_of_an_event_at_a_later_offset_is_skipped(store):
    feed, user = Feed(), str(uuid.uuid4())
    first = feed.created(user, T0, "7.00", "EUR")
    later = feed.created(user, T0, "3.00", "EUR")
    again = feed.deliver(first.event)  # the outbox relay published it twice
    assert await store.apply([first, later, again]) == 2
    assert await store.apply([feed.deliver(first.event)]) == 0
    assert await user_totals(store, user) == {
        "payment_count": 2,
        "by_currency": {"EUR": {"count": 2, "total": "10.00"}},
        "by_status": {"pending": {"count": 2, "totals": {"EUR": "10.00"}}},
        "refunds": {"count": 0, "by_currency": {}},
    }
    marker = await store.db.events.find_one({"_id": first.event["event_id"]})
    assert (marker["p"], marker["o"]) == (first.partition, first.offset)


class AbandonedWrites(AnalyticsStore):
    """A consumer that gave up on its update commands at their deadline, while the server
    still ran them: while ``holding``, each command is kept unsent and the attempt fails;
    after that, the kept commands land just after the next attempt has read its counter
    documents (FerretDB finishing the abandoned writes while the consumer retries)."""

    def __init__(self, db):
        super().__init__(db)
        self.holding, self.held = True, []

    async def _bulk(self, coll, statements) -> None:
        if self.holding:
            self.held.append((coll, statements))
            raise TimeoutError("update command abandoned at the batch's deadline")
        await super()._bulk(coll, statements)

    async def _read(self, coll, ids, projection=None):
        docs = await AnalyticsStore._read(coll, ids, projection)
        if coll.name in ("user_totals", "buckets") and self.held:
            for held_coll, statements in self.held:
                await AnalyticsStore._bulk(held_coll, statements)
            self.held.clear()
        return docs


@pytest.mark.gen_test(timeout=60)
async def test_writes_abandoned_at_the_deadline_landing_during_the_retry_count_once(store):
    feed, users = Feed(), [str(uuid.uuid4()) for _ in range(6)]
    batch = mixed_batch(feed, users, 40, dt.timedelta(hours=30))
    late = AbandonedWrites(store.db)
    with pytest.raises(TimeoutError):
        await late.apply(batch)
    assert late.held, "the first attempt sent nothing"
    late.holding = False
    # The consumer reads the batch again; the abandoned writes land under it, its guards
    # refuse, and the store folds the batch once more instead of failing it.
    await late.apply(batch, read=True)
    assert not late.held
    for user in users:
        expected = feed.expected(lambda p, u=user: p["user_id"] == u)
        if expected["payment_count"]:
            assert await user_totals(store, user) == expected, user
    assert await store.summary(T0 - dt.timedelta(days=1), T0 + dt.timedelta(days=2)) == feed.expected()


class CrashingStore(AnalyticsStore):
    """Dies before its ``crash_at``-th update command, as a consumer killed between two writes."""

    def __init__(self, db, crash_at: int):
        super().__init__(db)
        self.crash_at, self.commands = crash_at, 0

    async def _bulk(self, coll, updates) -> None:
        self.commands += 1
        if self.commands == self.crash_at:
            raise ConnectionError(f"killed before update command {self.crash_at}")
        await super()._bulk(coll, updates)


@pytest.mark.gen_test(timeout=120)
async def test_a_crash_between_two_writes_then_the_batch_again_counts_exactly(store):
    users = [str(uuid.uuid4()) for _ in range(20)]
    probe = CrashingStore(store.db, crash_at=0)
    await probe.apply(mixed_batch(Feed(partition=5), users, 60, dt.timedelta(hours=40)))
    commands = probe.commands  # user documents, then buckets: several commands each
    assert commands >= 4
    for crash_at in range(1, commands + 1):
        await store.db.client.drop_database(DATABASE)
        feed = Feed(partition=1)
        batch = mixed_batch(feed, users, 60, dt.timedelta(hours=40))
        with pytest.raises(ConnectionError):
            await CrashingStore(store.db, crash_at).apply(batch)
        # Kafka delivers the uncommitted batch again, to a new process.
        await AnalyticsStore(store.db).apply(batch, read=True)
        for user in users:
            expected = feed.expected(lambda p, u=user: p["user_id"] == u)
            assert (await store.user_stats(user) or {}).get("payment_count", 0) == expected["payment_count"]
            if expected["payment_count"]:
                assert await user_totals(store, user) == expected, (crash_at, user)
        window = (T0 - dt.timedelta(minutes=1), T0 + dt.timedelta(days=2))
        assert await store.summary(*window) == feed.expected(), crash_at


@pytest.mark.gen_test(timeout=120)
async def test_the_largest_write_the_store_sends_works(store):
    """A full consumer batch of distinct users: update commands of MAX_UPDATES_PER_COMMAND
    statements, WRITE_CONCURRENCY at a time: all upserts, then all guarded updates, then
    all compare-and-set updates after reads. FerretDB 1.24.2 on PostgreSQL deadlocks at
    50 statements; this shape must not."""
    assert WRITE_CONCURRENCY * (MAX_UPDATES_PER_COMMAND + 1) + READ_CONCURRENCY < 50
    sizes: list[int] = []

    class Recording(AnalyticsStore):
        async def _bulk(self, coll, updates) -> None:
            sizes.append(len(updates))
            await super()._bulk(coll, updates)

    recording, feed = Recording(store.db), Feed()
    users = [str(uuid.uuid4()) for _ in range(BATCH)]
    first = [feed.created(u, T0) for u in users]
    assert await recording.apply(first) == BATCH
    assert await recording.apply([feed.moved(p, "processing") for p in feed.payments]) == BATCH
    assert await recording.apply([feed.moved(p, "completed") for p in feed.payments], read=True) == BATCH
    assert max(sizes) == MAX_UPDATES_PER_COMMAND
    assert sizes.count(MAX_UPDATES_PER_COMMAND) >= 3 * (BATCH // MAX_UPDATES_PER_COMMAND)
    assert await user_totals(recording, users[-1]) == feed.expected(lambda p: p["user_id"] == users[-1])
    assert (await recording.summary(T0 - dt.timedelta(minutes=1), T0 + dt.timedelta(minutes=1)))["by_status"] == {
        "completed": {"count": BATCH, "totals": {"USD": f"{10 * BATCH}.00"}}
    }


@pytest.mark.gen_test(timeout=60)
async def test_summary_counts_whole_minutes_at_each_edge(store):
    """A window from 10:17 to two days later at 13:42: minutes and hours of partial days at
    both ends, whole days in between. Payments just inside and just outside each edge."""
    feed, user = Feed(), str(uuid.uuid4())
    start, end = dt.datetime(2031, 5, 30, 10, 17, tzinfo=dt.UTC), dt.datetime(2031, 6, 2, 13, 42, tzinfo=dt.UTC)
    second = dt.timedelta(seconds=1)
    inside = [
        start,  # first minute
        start + dt.timedelta(seconds=59),  # end of the first minute
        dt.datetime(2031, 5, 30, 10, 59, 59, tzinfo=dt.UTC),  # last minute of the partial first hour
        dt.datetime(2031, 5, 30, 11, 0, tzinfo=dt.UTC),  # first whole hour
        dt.datetime(2031, 5, 31, 0, 0, tzinfo=dt.UTC),  # first whole day (in May)
        dt.datetime(2031, 6, 1, 23, 59, 59, tzinfo=dt.UTC),  # last whole day (in June)
        dt.datetime(2031, 6, 2, 12, 59, 59, tzinfo=dt.UTC),  # last whole hour
        dt.datetime(2031, 6, 2, 13, 0, tzinfo=dt.UTC),  # first minute of the partial last hour
        end - second,  # last moment of the window
    ]
    outside = [start - second, start - dt.timedelta(days=1), end, end + dt.timedelta(minutes=1)]
    deliveries = [feed.created(user, at, "1.00") for at in inside + outside]
    deliveries.append(feed.moved(next(iter(feed.payments)), "completed", at=end + dt.timedelta(days=3)))
    await store.apply(deliveries)

    summary = await store.summary(start, end)
    assert summary["payment_count"] == len(inside)
    assert summary == feed.expected(created_in(start, end))
    # The status change (made days later) moved the count inside the slot of the creation.
    assert summary["by_status"]["completed"]["count"] == 1
    assert (await store.summary(start, start + dt.timedelta(minutes=1)))["payment_count"] == 2
    assert (await store.summary(end - dt.timedelta(minutes=1), end))["payment_count"] == 1
    assert (await store.summary(end, end + dt.timedelta(days=3)))["payment_count"] == 2


@pytest.mark.gen_test(timeout=60)
async def test_summary_matches_a_count_of_the_payments_for_any_window(store):
    feed = Feed(partition=2)
    users = [str(uuid.uuid4()) for _ in range(5)]
    await store.apply(mixed_batch(feed, users, 200, dt.timedelta(days=40)))
    # a second partition writes its own buckets
    other = Feed(partition=0)
    await store.apply(mixed_batch(other, users, 50, dt.timedelta(days=40)))
    rng = random.Random(11)
    for _ in range(12):
        a = T0.replace(second=0) + dt.timedelta(minutes=rng.randint(-600, 60 * 24 * 41))
        b = a + dt.timedelta(minutes=rng.randint(1, 60 * 24 * 30))
        both = [*feed.payments.values(), *other.payments.values()]
        assert await store.summary(a, b) == counted(both, created_in(a, b)), (a, b)


@pytest.mark.gen_test(timeout=240)
async def test_an_event_costs_the_same_after_twenty_thousand_payments(store):
    """A user's first payment (and its first status change) in an empty store against one
    more payment (and its status change) of a user with 20,000, in a second database:
    measured in turns, 25 pairs, so the machine's noise falls on both alike. The medians
    may differ by noise, not by history.

    The 20,000 go through the store's own apply path, in consumer-sized batches, created
    over the two weeks before the current hour, so the calendar documents fill as they
    would; new payments land in the current hour, as new payments do. (A calendar
    document holds at most 60 slots, filled by its hour's traffic whoever pays: moving a
    payment of a full hour costs more than one of an empty hour, by a bounded factor.)"""
    client = MongoManager.instance().client
    await client.drop_database(f"{DATABASE}_empty")
    empty, feed, reps = AnalyticsStore(client[f"{DATABASE}_empty"]), Feed(), 25
    heavy, span, end = str(uuid.uuid4()), dt.timedelta(days=14), T0.replace(minute=0, second=0)
    history = [feed.created(heavy, end - span + span * i / 20_000) for i in range(20_000)]
    for i in range(0, len(history), BATCH):
        await store.apply(history[i : i + BATCH])
    assert (await store.user_stats(heavy))["payment_count"] == 20_000

    async def took(target: AnalyticsStore, delivery: Delivery) -> float:
        started = time.perf_counter()
        await target.apply([delivery])
        return time.perf_counter() - started

    times: dict[str, list[float]] = {"first": [], "more": [], "first move": [], "one more move": []}
    for _ in range(reps):
        fresh, more = feed.created(str(uuid.uuid4()), T0), feed.created(heavy, T0)
        times["first"].append(await took(empty, fresh))
        times["more"].append(await took(store, more))
        times["first move"].append(await took(empty, feed.moved(fresh.event["data"]["id"], "completed", T0)))
        times["one more move"].append(await took(store, feed.moved(more.event["data"]["id"], "completed", T0)))
    median = {k: statistics.median(v) for k, v in times.items()}
    ratios = {
        "payment": median["more"] / median["first"],
        "status change": median["one more move"] / median["first move"],
    }
    print(f"medians (ms): { {k: round(v * 1000, 1) for k, v in median.items()} }; after 20,000 / first: {ratios}")
    assert all(r <= 2 for r in ratios.values()), ratios
    stats = await store.user_stats(heavy)
    assert (stats["payment_count"], stats["by_status"]["completed"]["count"]) == (20_000 + reps, reps)


def test_deliveries_carry_what_the_store_reads():
    """A status the service does not know (it would become a counter key), or a change of
    status without the one it left, is malformed: skipped, never retried."""
    feed = Feed()
    good = feed.created("u", T0)
    odd = feed.created("u", T0)
    odd.event["data"]["status"] = "weird.status"
    moved = feed.moved(good.event["data"]["id"], "completed")
    blind = feed.moved(good.event["data"]["id"], "refunded")
    del blind.event["data"]["previous_status"]
    assert analytics._usable(good.event) and analytics._usable(moved.event)
    assert not analytics._usable(odd.event) and not analytics._usable(blind.event)


@pytest.mark.gen_test(timeout=60)
async def test_refunds_count_once_per_currency_by_their_own_time(store):
    """A refund is a pure delta on its own row: a batch delivered again, and a second copy
    of a refund's event, count it once; a summary counts the refunds made in its window,
    whenever their payment was made."""
    feed, user = Feed(), str(uuid.uuid4())
    usd, kwd = feed.created(user, T0, "100.00"), feed.created(user, T0, "2.500", "KWD")
    usd_id, kwd_id = usd.event["data"]["id"], kwd.event["data"]["id"]
    later = T0 + dt.timedelta(days=40)
    batch = [
        usd,
        kwd,
        feed.refunded(usd_id, "10.00", T0 + dt.timedelta(minutes=5)),
        feed.refunded(usd_id, "0.01", later),
        feed.refunded(kwd_id, "1.125", later),
    ]
    batch.append(feed.deliver(batch[2].event))  # the relay published it twice
    assert await store.apply(batch) == 5
    assert await store.apply(batch, read=True) == 0  # the batch again, after a failure
    refunds_of = (await user_totals(store, user))["refunds"]
    assert refunds_of == {
        "count": 3,
        "by_currency": {"KWD": {"count": 1, "total": "1.125"}, "USD": {"count": 2, "total": "10.01"}},
    }
    assert (await user_totals(store, user))["payment_count"] == 2  # a refund is no payment
    first_day = await store.summary(T0 - dt.timedelta(days=1), T0 + dt.timedelta(days=1))
    assert first_day["refunds"] == {"count": 1, "by_currency": {"USD": {"count": 1, "total": "10.00"}}}
    assert first_day["payment_count"] == 2
    forty_days_on = await store.summary(later - dt.timedelta(days=1), later + dt.timedelta(days=1))
    assert forty_days_on["payment_count"] == 0  # the payments were made 40 days before
    assert forty_days_on["refunds"]["by_currency"] == {
        "KWD": {"count": 1, "total": "1.125"},
        "USD": {"count": 1, "total": "0.01"},
    }
