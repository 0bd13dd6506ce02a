"""Every change produces exactly one event on Kafka, in per-user order, through the outbox."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import pytest

from domain.outbox import OutboxRelay
from managers.kafka_producer import KafkaProducerManager
from managers.mysql import MySQLManager
from tests.helpers import (
    ROOT,
    consumer_drain,
    end_positions,
    free_port,
    metric,
    read_events,
    restart,
    topic_consumer,
    wait_until,
)
from tests.service.test_main import service_env


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
    row = await MySQLManager.instance().home.fetchone("SELECT COUNT(*) AS n FROM outbox WHERE published_at IS NULL")
    return row["n"]


def publish_failures() -> float:
    return metric("singleton_outbox_publish_failures_total")


@pytest.mark.gen_test(timeout=300)
async def test_writes_succeed_while_kafka_is_down_and_their_events_follow(api, config, tmp_path):
    loop = asyncio.get_running_loop()
    if ", started by devstack)" not in kafka("status"):
        pytest.skip("this checkout's devstack did not start Kafka, so it may not stop it")
    start = await end_positions(config["kafka"])
    # A second instance, logging at INFO to a file, lives through the outage too: what it logs is checked below.
    witness = await Instance.start(tmp_path / "witness.log", api)
    await loop.run_in_executor(None, kafka, "down")
    down_since = time.monotonic()
    try:

        async def kafka_down():
            code, health, _ = await api.get("/health")
            return health["dependencies"]["kafka"]["status"] == "down" and (code, health)

        code, health = await wait_until(kafka_down, timeout=20, what="the monitor to see kafka down")
        assert code == 200 and health["status"] == "degraded" and health["ready"] is True
        await witness.sees_kafka("down")
        user = await api.new_user(name="Offline")
        payment = await api.new_payment(user["id"])
        code, _, _ = await api.put(f"/api/v1/payments/{payment['id']}/status", {"status": "completed"})
        assert code == 200
        assert await pending() >= 3
        before = publish_failures()
        await wait_until(lambda: publish_failures() > before, timeout=30, what="the relay to fail while Kafka is down")
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_since)))  # an outage long enough to be noisy
    finally:
        await loop.run_in_executor(None, kafka, "up")

    consumer = await topic_consumer(config["kafka"], positions=start)
    try:
        seen = await read_events(consumer, lambda s: len(of_user(s, user["id"])) >= 3, timeout=60)
        assert [e["type"] for e in of_user(seen, user["id"])] == ["user_created", "payment_created", "payment_updated"]
    finally:
        await asyncio.wait_for(consumer.stop(), 15)
    await wait_until(pending_is_zero, timeout=30, what="the outbox to be marked published")

    await witness.sees_kafka("ok")  # what it logs once it sees the broker again is checked too
    lines = await witness.stop()
    noisy = [line for line in lines if line["level"] != "info" and line["logger"] != "singleton.access"]
    from_clients = [line for line in noisy if line["logger"].partition(".")[0] in ("aiokafka", "kafka")]
    assert len(from_clients) <= 3, f"one client-library warning per state change: {from_clients}"
    assert len(noisy) <= 12, f"an outage of {OUTAGE_S} s is a few lines, not thousands: {noisy}"
    assert [line["dependency"] for line in lines if line["msg"] == "dependency down"] == ["kafka"]
    assert [line["dependency"] for line in lines if line["msg"] == "dependency up"] == ["kafka"]


OUTAGE_S = 10  # long enough for many retries: the reconnect backoff of test processes stops at 1 s


async def pending_is_zero() -> bool:
    return await pending() == 0


@pytest.mark.gen_test(timeout=90)
async def test_a_stop_between_kafkas_acknowledgement_and_the_mark_publishes_nothing_twice(api, config, monkeypatch):
    """The SIGTERM double publish: the relay was cancelled after Kafka acknowledged a
    batch and before it marked the rows, and the final flush sent them again."""
    producer = KafkaProducerManager.instance()
    acknowledged, resume = asyncio.Event(), asyncio.Event()
    send_batch = producer.send_batch

    async def acknowledged_then_held(messages, topic=None):
        await send_batch(messages, topic)  # Kafka has them
        acknowledged.set()
        await resume.wait()  # ... and the stop comes before the rows are marked

    consumer = await topic_consumer(config["kafka"])
    try:
        monkeypatch.setattr(producer, "send_batch", acknowledged_then_held)
        user = await api.new_user(name="Published once")
        await asyncio.wait_for(acknowledged.wait(), 15)
        relay = OutboxRelay.instance()
        stopping = asyncio.ensure_future(relay.close())
        await wait_until(lambda: relay._stopping, what="the relay to be told to stop")
        resume.set()
        await asyncio.wait_for(stopping, 30)
        monkeypatch.undo()
        await restart(OutboxRelay, config)
        await api.put(f"/api/v1/users/{user['id']}", {"name": "Then changed"})  # goes through the new relay

        seen = await read_events(consumer, lambda s: len(of_user(s, user["id"])) >= 2)
        seen += await consumer_drain(consumer)
        assert [e["type"] for e in of_user(seen, user["id"])] == ["user_created", "user_updated"]
        assert await pending() == 0
    finally:
        resume.set()
        await asyncio.wait_for(consumer.stop(), 15)


class Instance:
    """Another service process, logging to a file, for what it says during an outage."""

    def __init__(self, proc: subprocess.Popen, log_file, api):
        self.proc, self.log_file, self.api = proc, log_file, api

    @classmethod
    async def start(cls, log_file, api) -> Instance:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(port)],
            cwd=ROOT,
            env=service_env(SINGLETON_LOGGING__LEVEL="INFO"),
            stdout=log_file.open("w"),
            stderr=subprocess.STDOUT,
        )
        service = api.at(f"http://127.0.0.1:{port}")

        async def healthy():
            assert proc.poll() is None, log_file.read_text()[-3000:]
            try:
                return (await service.get("/health"))[1]["status"] == "ok"
            except OSError:
                return False

        await wait_until(healthy, timeout=60, interval=0.2, what="the witness instance to be healthy")
        return cls(proc, log_file, service)

    async def sees_kafka(self, status: str) -> None:
        """Until this instance's own monitor reports Kafka ``status``."""

        async def seen():
            health = (await self.api.get("/health"))[1]
            return health["dependencies"]["kafka"]["status"] == status

        await wait_until(seen, timeout=30, interval=0.2, what=f"the witness to see kafka {status}")

    async def stop(self) -> list[dict]:
        self.proc.send_signal(signal.SIGTERM)
        await asyncio.get_running_loop().run_in_executor(None, lambda: self.proc.wait(timeout=30))
        text = self.log_file.read_text()
        assert self.proc.returncode == 0, text[-3000:]
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]
