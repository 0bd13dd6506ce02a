"""Analytics through the running service and its consumer, on the real Kafka and FerretDB:
statistics per user, a window summary, each event counted once, the group's lag."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from decimal import Decimal

import pytest
from aiokafka import AIOKafkaConsumer
from pymongo.errors import AutoReconnect

from domain import codec
from domain.analytics_consumer import AnalyticsConsumer
from managers.kafka_producer import KafkaProducerManager
from managers.mongodb import MongoManager
from tests.helpers import end_positions, metric, read_events, topic_consumer, wait_until

MISSING = "00000000-0000-4000-8000-000000000000"


async def stats_when(api, user_id: str, predicate, timeout: float = 30) -> dict:
    async def ready():
        code, body, _ = await api.get(f"/api/v1/analytics/users/{user_id}")
        return body if code == 200 and predicate(body) else None

    return await wait_until(ready, timeout=timeout, interval=0.2, what=f"analytics for {user_id}")


@pytest.mark.gen_test(timeout=90)
async def test_user_statistics_follow_the_events(api):
    user = await api.new_user()
    code, empty, _ = await api.get(f"/api/v1/analytics/users/{user['id']}")
    assert code == 200 and empty["payment_count"] == 0  # nothing yet, or still only user_created
    a = await api.new_payment(user["id"], amount="10.00", currency="USD")
    await api.new_payment(user["id"], amount="5.50", currency="USD")
    await api.new_payment(user["id"], amount="500", currency="JPY")
    await api.put(f"/api/v1/payments/{a['id']}/status", {"status": "completed"})

    stats = await stats_when(api, user["id"], lambda s: s["payment_count"] == 3 and "completed" in s["by_status"])
    assert stats["by_currency"] == {"JPY": {"count": 1, "total": "500"}, "USD": {"count": 2, "total": "15.50"}}
    assert stats["by_status"] == {
        "completed": {"count": 1, "totals": {"USD": "10.00"}},
        "pending": {"count": 2, "totals": {"JPY": "500", "USD": "5.50"}},
    }
    assert stats["last_activity"].endswith("Z")


@pytest.mark.gen_test(timeout=90)
async def test_a_second_copy_of_an_event_is_counted_once(api, config):
    user = await api.new_user()
    consumer = await topic_consumer(config["kafka"])
    try:
        first = await api.new_payment(user["id"], amount="7.00", currency="EUR")
        seen = await read_events(consumer, lambda s: any(e["data"].get("id") == first["id"] for e in s))
    finally:
        await asyncio.wait_for(consumer.stop(), 15)
    event = next(e for e in seen if e["data"].get("id") == first["id"])
    await stats_when(api, user["id"], lambda s: s["payment_count"] == 1)

    # The same event again, as the outbox relay re-publishes it after a crash between
    # publish and mark (same key, so same partition, a later offset), then a new payment
    # behind it: once the new one is counted, the copy was read too.
    await KafkaProducerManager.instance().send(codec.dumps(event), key=user["id"].encode())
    second = await api.new_payment(user["id"], amount="3.00", currency="EUR")
    stats = await stats_when(api, user["id"], lambda s: s["payment_count"] >= 2)
    assert stats["payment_count"] == 2
    assert stats["by_currency"] == {"EUR": {"count": 2, "total": "10.00"}}
    events = MongoManager.instance().db.events
    assert await events.count_documents({"_id": event["event_id"]}) == 1
    assert await events.count_documents({"user_id": user["id"], "type": "payment_created"}) == 2
    assert second["id"] != first["id"]


def summary_query(start: dt.datetime, end: dt.datetime) -> str:
    return f"/api/v1/analytics/summary?from={codec.rfc3339(start)}&to={codec.rfc3339(end)}".replace("+", "%2B")


async def summary_of(api, start: dt.datetime, end: dt.datetime) -> dict:
    code, summary, _ = await api.get(summary_query(start, end))
    assert code == 200, summary
    return summary


def added(before: dict, after: dict, currency: str) -> tuple[int, Decimal]:
    """What ``after`` holds beyond ``before`` in ``currency``: payments, and their total."""

    def counts(summary: dict) -> tuple[int, Decimal]:
        entry = summary["by_currency"].get(currency, {"count": 0, "total": "0"})
        return entry["count"], Decimal(entry["total"])

    (n0, t0), (n1, t1) = counts(before), counts(after)
    return n1 - n0, t1 - t0


@pytest.mark.gen_test(timeout=90)
async def test_summary_totals_a_time_window(api):
    # The window holds this test's payments, and those of runs of the suite a few minutes
    # earlier (the test database stays): count what this test adds.
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    end = start + dt.timedelta(minutes=5)
    before = await summary_of(api, start, end)
    user = await api.new_user()
    for amount in ("1.250", "2.500"):
        await api.new_payment(user["id"], amount=amount, currency="BHD")
    await api.new_payment(user["id"], amount="9.999", currency="OMR")
    await stats_when(api, user["id"], lambda s: s["payment_count"] == 3)

    after = await summary_of(api, start, end)
    assert added(before, after, "BHD") == (2, Decimal("3.750"))
    assert added(before, after, "OMR") == (1, Decimal("9.999"))
    assert after["payment_count"] - before["payment_count"] == 3


@pytest.mark.gen_test
async def test_summary_window_is_rounded_down_to_the_minute(api):
    start = dt.datetime(2026, 3, 1, 10, 17, 42, 123000, tzinfo=dt.UTC)
    end = dt.datetime(2026, 3, 2, 8, 5, 0, 1000, tzinfo=dt.UTC)
    code, summary, _ = await api.get(summary_query(start, end))
    assert code == 200
    assert (summary["from"], summary["to"]) == ("2026-03-01T10:17:00.000Z", "2026-03-02T08:05:00.000Z")

    code, day, _ = await api.get("/api/v1/analytics/summary?to=2026-03-02T08:05:30Z")
    assert code == 200 and (day["from"], day["to"]) == ("2026-03-01T08:05:00.000Z", "2026-03-02T08:05:00.000Z")
    code, body, _ = await api.get(summary_query(start, start + dt.timedelta(seconds=10)))
    assert code == 400 and body["error"]["code"] == "invalid_window"


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("from=yesterday", "invalid_time"),
        ("from=2026-01-01T00:00:00", "invalid_time"),
        ("from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", "invalid_window"),
        ("from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", "invalid_window"),
    ],
)
async def test_summary_rejects_bad_windows(api, query, error):
    code, body, _ = await api.get(f"/api/v1/analytics/summary?{query}")
    assert code == 400 and body["error"]["code"] == error


@pytest.mark.gen_test
async def test_analytics_for_an_unknown_user_is_404(api):
    code, _, _ = await api.get(f"/api/v1/analytics/users/{MISSING}")
    assert code == 404
    code, _, _ = await api.get(f"/api/v1/analytics/users/{uuid.uuid4().hex}")
    assert code == 404


@pytest.mark.gen_test(timeout=90)
async def test_a_malformed_event_is_skipped_and_the_consumer_goes_on(api):
    user = await api.new_user()
    key = user["id"].encode()
    producer = KafkaProducerManager.instance()
    for junk in (
        b"not json",
        codec.dumps({"type": "payment_created", "user_id": user["id"], "event_id": str(uuid.uuid4())}),
        codec.dumps(
            {
                "type": "payment_created",
                "user_id": user["id"],
                "event_id": str(uuid.uuid4()),
                "occurred_at": "2026-11-25T00:00:00Z",
                "data": {"id": "x", "amount": "1.00", "currency": "XXX"},
            }
        ),
    ):
        await producer.send(junk, key=key)
    await api.new_payment(user["id"], amount="2.00")
    stats = await stats_when(api, user["id"], lambda s: s["payment_count"] >= 1)
    assert stats["payment_count"] == 1
    code, health, _ = await api.get("/health")
    assert health["consumers"]["analytics"]["status"] == "ok"
    assert health["consumers"]["broadcast"]["status"] == "ok"


@pytest.mark.gen_test(timeout=90)
async def test_a_consumer_killed_between_two_writes_counts_exactly_once_it_reads_the_batch_again(api, monkeypatch):
    """The live consumer: the batch holding the user's payment has written the user's
    counters when the bucket write fails. Nothing is committed; the batch comes again."""
    store = AnalyticsConsumer.instance().store
    user = await api.new_user()
    crashed: list[str] = []
    counted = asyncio.Event()
    bulk = store._bulk

    async def dying(coll, statements):
        # TND: a currency only this test uses, so these are the statements of its payment.
        if crashed or not any("TND_" in path for st in statements for path in st["u"].get("$inc", {})):
            return await bulk(coll, statements)
        if coll.name == "user_totals":
            await bulk(coll, statements)
            counted.set()
            return
        await asyncio.wait_for(counted.wait(), 10)
        crashed.append(coll.name)
        raise AutoReconnect("killed between the user's counters and the buckets")

    monkeypatch.setattr(store, "_bulk", dying)
    errors = metric("singleton_kafka_consumer_errors_total", {"consumer": "analytics"})
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    end = start + dt.timedelta(minutes=5)
    before = await summary_of(api, start, end)
    await api.new_payment(user["id"], amount="41.000", currency="TND")
    await wait_until(lambda: crashed, timeout=30, what="the injected failure")

    async def bucketed():
        after = await summary_of(api, start, end)
        return added(before, after, "TND")[0] and after

    after = await wait_until(bucketed, timeout=30, interval=0.2, what="the buckets written on the second delivery")
    assert added(before, after, "TND") == (1, Decimal("41.000"))
    stats = await stats_when(api, user["id"], lambda s: s["payment_count"] >= 1)
    assert stats["payment_count"] == 1 and stats["by_currency"] == {"TND": {"count": 1, "total": "41.000"}}
    assert metric("singleton_kafka_consumer_errors_total", {"consumer": "analytics"}) > errors


@pytest.mark.gen_test(timeout=60)
async def test_lag_is_the_groups_backlog_before_the_first_fetch(services, config):
    """A new consumer of a group that committed offsets 4 short of the end of every
    partition reports that backlog before reading anything."""
    kafka = {**config["kafka"], "analytics_group": f"singleton-analytics-lag-{uuid.uuid4().hex[:8]}"}
    committer = AIOKafkaConsumer(
        bootstrap_servers=kafka["bootstrap_servers"], group_id=kafka["analytics_group"], enable_auto_commit=False
    )
    await asyncio.wait_for(committer.start(), 15)
    try:
        tps = sorted(await end_positions(kafka))
        committer.assign(tps)
        ends = await committer.end_offsets(tps)
        starts = await committer.beginning_offsets(tps)
        await asyncio.wait_for(committer.commit({tp: max(ends[tp] - 4, starts[tp]) for tp in tps}), 15)
    finally:
        await asyncio.wait_for(committer.stop(), 15)
    expected = sum(ends[tp] - max(ends[tp] - 4, starts[tp]) for tp in tps)
    assert expected > 0

    consumer = AnalyticsConsumer({**config, "kafka": kafka})
    try:
        await consumer._connect()  # what the loop does before its first fetch (it reads the lag too)
        assert consumer.lag == expected
        assert consumer.status() == {"status": "down", "lag": expected}  # no loop: it reads nothing
    finally:
        if consumer.consumer is not None:  # not close(): a consumer that was never start()ed
            await asyncio.wait_for(consumer.consumer.stop(), 15)


@pytest.mark.gen_test(timeout=60)
async def test_health_reports_the_analytics_lag_and_it_drains_to_zero(api):
    user = await api.new_user()
    await api.new_payment(user["id"], amount="5.00")
    await stats_when(api, user["id"], lambda s: s["payment_count"] == 1)

    async def drained():
        code, health, _ = await api.get("/health")
        return health["consumers"]["analytics"]["lag"] == 0

    await wait_until(drained, timeout=30, interval=0.2, what="the analytics lag back to 0")


@pytest.mark.gen_test(timeout=90)
async def test_lag_keeps_growing_while_the_store_refuses_every_batch(api, config):
    """MongoDB out of reach: nothing is committed, so the lag /health reports must grow
    with every event written meanwhile (it was once refreshed only after a stored batch)."""
    kafka = {**config["kafka"], "analytics_group": f"singleton-analytics-down-{uuid.uuid4().hex[:8]}"}
    consumer = AnalyticsConsumer({**config, "kafka": kafka})

    async def unreachable(batch, read=False):
        raise AutoReconnect("MongoDB is down")

    # The store itself refuses, not just its writes: a new group reads the topic from the
    # start, and the shared store would skip every event the service's consumer counted.
    consumer.store.apply = unreachable
    await api.new_user()  # a batch to refuse, whatever the topic held before
    consumer._run_in_background(consumer._run(), "test-analytics-down")
    try:
        await wait_until(lambda: consumer.failures.failing, timeout=30, what="the first refused batch")
        before = consumer.lag
        assert before is not None
        for _ in range(3):
            await api.new_user()
        await wait_until(lambda: consumer.lag >= before + 3, timeout=30, interval=0.1, what="the lag to grow by 3")
        assert consumer.status()["status"] == "down"
    finally:
        await consumer.release()
