"""Every change produces exactly one event on Kafka, in per-user order, through the outbox."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from managers.mysql import MySQLManager
from tests.helpers import ROOT, consumer_drain, end_positions, metric, read_events, topic_consumer, wait_until


def of_user(seen: list[dict], user_id: str) -> list[dict]:
    return [e for e in seen if e.get("user_id") == user_id]


@pytest.mark.gen_test(timeout=90)
async def test_one_event_per_change_in_user_order(api, config):
    consumer = await topic_consumer(config["kafka"])
    try:
        user = await api.new_user(name="Eve")
        await api.put(f"/api/v1/users/{user['id']}", {"name": "Eve II"})
        await api.put(f"/api/v1/users/{user['id']}", {"name": "Eve II"})  # no change: no event
        p1 = await api.new_payment(user["id"], amount="10.00")
        p2 = await api.new_payment(user["id"], amount="20.00", currency="JPY")
        await api.put(f"/api/v1/payments/{p1['id']}/status", {"status": "processing"})
        await api.put(f"/api/v1/payments/{p1['id']}/status", {"status": "processing"})  # no-op: no event
        await api.put(f"/api/v1/payments/{p1['id']}/status", {"status": "completed"})
        await api.put(f"/api/v1/payments/{p2['id']}/status", {"status": "refunded"})  # refused: no event
        expected = [
            ("user_created", user["id"]),
            ("user_updated", user["id"]),
            ("payment_created", p1["id"]),
            ("payment_created", p2["id"]),
            ("payment_updated", p1["id"]),
            ("payment_updated", p1["id"]),
        ]
        seen = await read_events(consumer, lambda s: len(of_user(s, user["id"])) >= len(expected))
        seen += await consumer_drain(consumer)
        mine = of_user(seen, user["id"])
        assert [(e["type"], e["data"]["id"]) for e in mine] == expected
        assert len({e["event_id"] for e in mine}) == len(mine)

        created = mine[3]
        assert created["data"]["amount"] == "20" and created["data"]["currency"] == "JPY"
        assert created["version"] == 1 and created["occurred_at"].endswith("Z")
        assert (mine[4]["data"]["previous_status"], mine[4]["data"]["status"]) == ("pending", "processing")
        assert (mine[5]["data"]["previous_status"], mine[5]["data"]["status"]) == ("processing", "completed")
        assert mine[1]["data"]["name"] == "Eve II"
    finally:
        await asyncio.wait_for(consumer.stop(), 15)


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_changes_of_one_user_keep_commit_order(api, config):
    consumer = await topic_consumer(config["kafka"])
    try:
        user = await api.new_user()
        results = await asyncio.gather(*(api.put(f"/api/v1/users/{user['id']}", {"name": f"v{i}"}) for i in range(10)))
        assert all(code == 200 for code, _, _ in results)
        seen = await read_events(consumer, lambda s: len(of_user(s, user["id"])) >= 11)
        versions = [e["data"]["version"] for e in of_user(seen, user["id"])]
        assert versions == list(range(1, 12))
    finally:
        await asyncio.wait_for(consumer.stop(), 15)


def kafka(action: str) -> str:
    result = subprocess.run(
        ["bash", "devstack/services.sh", action, "kafka"], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert result.returncode in (0, 3), result.stdout + result.stderr  # status exits 3 when down
    return result.stdout


async def pending() -> int:
    row = await MySQLManager.instance().fetchone("SELECT COUNT(*) AS n FROM outbox WHERE published_at IS NULL")
    return row["n"]


def publish_failures() -> float:
    return metric("singleton_outbox_publish_failures_total")


@pytest.mark.gen_test(timeout=300)
async def test_writes_succeed_while_kafka_is_down_and_their_events_follow(api, config):
    loop = asyncio.get_running_loop()
    if ", started by devstack)" not in kafka("status"):
        pytest.skip("this checkout's devstack did not start Kafka, so it may not stop it")
    start = await end_positions(config["kafka"])
    await loop.run_in_executor(None, kafka, "down")
    try:
        code, health, _ = await api.get("/health")
        assert code == 503 and health["down"] == ["kafka"]
        user = await api.new_user(name="Offline")
        payment = await api.new_payment(user["id"])
        code, _, _ = await api.put(f"/api/v1/payments/{payment['id']}/status", {"status": "completed"})
        assert code == 200
        assert await pending() >= 3
        before = publish_failures()
        await wait_until(lambda: publish_failures() > before, timeout=30, what="the relay to fail while Kafka is down")
    finally:
        await loop.run_in_executor(None, kafka, "up")

    consumer = await topic_consumer(config["kafka"], positions=start)
    try:
        seen = await read_events(consumer, lambda s: len(of_user(s, user["id"])) >= 3, timeout=60)
        assert [e["type"] for e in of_user(seen, user["id"])] == ["user_created", "payment_created", "payment_updated"]
    finally:
        await asyncio.wait_for(consumer.stop(), 15)
    await wait_until(pending_is_zero, timeout=30, what="the outbox to be marked published")


async def pending_is_zero() -> bool:
    return await pending() == 0
