"""GET /health against the real servers, including one going away and coming back."""

from __future__ import annotations

import asyncio

import pytest

from service.health import HealthMonitor
from tests.helpers import consumer_drain, read_events, run_make, stop_redis, topic_consumer, wait_until

DEPENDENCIES = {"mysql", "mongodb", "redis", "kafka"}


async def get_health(api):
    """/health as an admin sees it (errors, latencies, lag)."""
    code, body, _ = await api.get("/health")
    return code, body


@pytest.mark.gen_test
async def test_health_is_ok_when_every_dependency_answers(api):
    code, body = await get_health(api)
    assert code == 200, body
    assert body["status"] == "ok"
    assert set(body["dependencies"]) == DEPENDENCIES
    for name, dep in body["dependencies"].items():
        assert dep["status"] == "ok", name
        assert dep["latency_ms"] >= 0


@pytest.mark.gen_test(timeout=180)
async def test_health_names_redis_when_it_is_down_and_recovers_without_restart(api):
    stop_redis()
    try:
        code, body = await get_health(api)
        assert code == 503
        assert body["status"] == "degraded"
        assert body["down"] == ["redis"]
        assert body["dependencies"]["redis"]["status"] == "down"
        assert body["dependencies"]["redis"]["error"]
        assert body["dependencies"]["mysql"]["status"] == "ok"
    finally:
        started = await asyncio.get_running_loop().run_in_executor(None, run_make, "services")
        assert started.returncode == 0, started.stdout + started.stderr

    async def healthy():
        return (await get_health(api))[0] == 200

    await wait_until(healthy, timeout=20, interval=0.2, what="health back to 200 after redis restarted")


@pytest.fixture
def fresh_monitor(services, config, io_loop):
    """A monitor that has not published yet, so the test sees its first event."""
    io_loop.run_sync(HealthMonitor.instance().close)
    HealthMonitor.start(config["server"], config["kafka"])
    yield HealthMonitor.instance()


@pytest.mark.gen_test(timeout=60)
async def test_health_publishes_one_health_check_event_per_interval(api, config, fresh_monitor):
    consumer = await topic_consumer(config["kafka"])
    try:
        for _ in range(5):
            await get_health(api)

        def health_events(seen):
            return [e for e in seen if e["type"] == "health_check"]

        seen = await read_events(consumer, health_events)
        # Anything else the polls might have produced arrives with the first one; give
        # stragglers a bounded moment, then count.
        seen += await consumer_drain(consumer)
        events = health_events(seen)
        assert len(events) == 1, events
        event = events[0]
        assert event["data"]["status"] == "ok"
        assert set(event["data"]["dependencies"]) == DEPENDENCIES
        assert event["version"] == 1 and event["event_id"] and event["occurred_at"].endswith("Z")
    finally:
        await asyncio.wait_for(consumer.stop(), 15)


@pytest.mark.gen_test
async def test_without_an_admin_key_health_says_only_each_parts_status(api):
    for key in (None, (await api.as_user((await api.new_user())["id"])).key):
        code, body, _ = await api.with_key(key).get("/health")
        assert code == 200
        assert body["status"] == "ok"
        assert set(body["dependencies"]) == DEPENDENCIES
        assert all(set(dep) == {"status"} for dep in body["dependencies"].values())
        assert all(set(c) == {"status"} for c in body["consumers"].values())
        assert "rate_limiter" not in body and "down" not in body
