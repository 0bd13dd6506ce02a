"""Analytics on the real FerretDB: statistics per user, a window summary, each event counted once."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest

from domain import codec
from managers.kafka_producer import KafkaProducerManager
from managers.mongodb import MongoManager
from tests.helpers import read_events, topic_consumer, wait_until

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
    assert code == 200 and empty["payment_count"] in (0,)  # nothing yet, or still only user_created
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
async def test_a_redelivered_event_is_counted_once(api, config):
    user = await api.new_user()
    consumer = await topic_consumer(config["kafka"])
    try:
        first = await api.new_payment(user["id"], amount="7.00", currency="EUR")
        seen = await read_events(consumer, lambda s: any(e["data"].get("id") == first["id"] for e in s))
    finally:
        await asyncio.wait_for(consumer.stop(), 15)
    event = next(e for e in seen if e["data"].get("id") == first["id"])
    await stats_when(api, user["id"], lambda s: s["payment_count"] == 1)

    # The same event again, as Kafka would redeliver it (same key, so same partition),
    # then a new payment behind it: once the new one is counted, the copy was read too.
    await KafkaProducerManager.instance().send(codec.dumps(event), key=user["id"].encode())
    second = await api.new_payment(user["id"], amount="3.00", currency="EUR")
    stats = await stats_when(api, user["id"], lambda s: s["payment_count"] >= 2)
    assert stats["payment_count"] == 2
    assert stats["by_currency"] == {"EUR": {"count": 2, "total": "10.00"}}
    events = MongoManager.instance().db.events
    assert await events.count_documents({"_id": event["event_id"]}) == 1
    assert await events.count_documents({"user_id": user["id"], "type": "payment_created"}) == 2
    assert second["id"] != first["id"]


@pytest.mark.gen_test(timeout=90)
async def test_summary_totals_a_time_window(api):
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    user = await api.new_user()
    # Currencies no other test uses, so the window holds only these.
    for amount in ("1.250", "2.500"):
        await api.new_payment(user["id"], amount=amount, currency="BHD")
    await api.new_payment(user["id"], amount="9.999", currency="OMR")
    await stats_when(api, user["id"], lambda s: s["payment_count"] == 3)
    end = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    window = f"from={codec.rfc3339(start)}&to={codec.rfc3339(end)}".replace("+", "%2B")

    code, summary, _ = await api.get(f"/api/v1/analytics/summary?{window}")
    assert code == 200
    assert summary["by_currency"]["BHD"] == {"count": 2, "total": "3.750"}
    assert summary["by_currency"]["OMR"] == {"count": 1, "total": "9.999"}
    assert summary["by_status"]["pending"]["totals"]["BHD"] == "3.750"

    earlier = f"from={codec.rfc3339(start - dt.timedelta(hours=2))}&to={codec.rfc3339(start - dt.timedelta(hours=1))}"
    code, before, _ = await api.get(f"/api/v1/analytics/summary?{earlier}")
    assert code == 200 and "BHD" not in before["by_currency"] or before["by_currency"]["BHD"]["total"] != "3.750"


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
