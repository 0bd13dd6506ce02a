"""GET /health against the real servers, including one going away and coming back."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from unittest.mock import ANY

import pytest
import tornado.httpserver
import tornado.testing

from domain import auth
from managers.health import HealthMonitor
from service.app import make_ops_app
from tests.helpers import (
    DEVSTACK_DIR,
    consumer_drain,
    metric,
    read_events,
    restart,
    start_redis,
    stop_redis,
    topic_consumer,
    wait_until,
)

DEPENDENCIES = {"mysql", "mongodb", "redis", "kafka"}


async def get_health(api):
    """/health as an admin sees it (errors, latencies, lag)."""
    code, body, _ = await api.get("/health")
    return code, body


@pytest.mark.gen_test
async def test_health_is_ok_when_every_dependency_answers(api, config):
    code, body = await get_health(api)
    assert code == 200, body
    assert body["status"] == "ok"
    assert set(body["dependencies"]) == DEPENDENCIES
    deadline_ms = config["server"]["health_check_timeout_s"] * 1000
    for name, dep in body["dependencies"].items():
        assert dep["status"] == "ok", name
        # A round trip that was timed, in milliseconds, within the check's deadline: not
        # zero (never measured), not seconds (0.0008 rounds to 0.0), not past the deadline.
        assert 0 < dep["latency_ms"] < deadline_ms, (name, dep)


@pytest.mark.gen_test(timeout=180)
async def test_health_names_redis_when_it_is_down_and_recovers_without_restart(api):
    stop_redis()
    try:

        async def redis_down():
            code, body = await get_health(api)
            return body["dependencies"]["redis"]["status"] == "down" and (code, body)

        code, body = await wait_until(redis_down, timeout=10, what="the monitor to see redis down")
        # The API still works without its cache: degraded, not down, and still ready.
        assert code == 200
        assert body["status"] == "degraded" and body["ready"] is True
        assert "redis" in body["down"] and set(body["down"]) <= {"redis", "rate_limiter"}
        assert body["dependencies"]["redis"]["error"]
        assert body["dependencies"]["mysql"]["status"] == "ok"
        assert (await api.get("/health/ready"))[0] == 200
    finally:
        await start_redis()

    async def healthy():
        return (await get_health(api))[1]["status"] == "ok"

    await wait_until(healthy, timeout=20, interval=0.2, what="health back to ok after redis restarted")


@pytest.mark.gen_test(timeout=60)
async def test_the_monitor_publishes_one_health_check_event_per_interval(api, config, services):
    consumer = await topic_consumer(config["kafka"])
    try:
        # A monitor that has not published yet; it checks every couple of seconds,
        # and may publish once per health_event_interval_s (30 s).
        monitor = await restart(HealthMonitor, config)
        services.watch()  # what the replaced monitor reports and whom it tells, as at start
        for _ in range(5):
            await get_health(api)

        def health_events(seen):
            return [e for e in seen if e["type"] == "health_check"]

        seen = await read_events(consumer, health_events)
        # Several more reports are made meanwhile: none of them may publish again.
        reports: set[str] = set()

        def three_more_reports() -> bool:
            reports.add(monitor.report["checked_at"])
            return len(reports) > 3  # the one in hand when the event was read, and three after it

        await wait_until(three_more_reports, timeout=20, interval=0.01, what="three more reports")
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
async def test_without_an_admin_key_health_says_only_its_status(api):
    """Which dependencies the service has, and which is down, is for admins and operators."""
    for key in (None, (await api.as_user((await api.new_user())["id"])).key, "nope", auth.new_key(auth.ADMIN)):
        code, body, _ = await api.with_key(key).get("/health")
        assert (code, body) == (200, {"status": "ok"}), key
    code, body = await get_health(api)
    assert code == 200 and set(body["dependencies"]) == DEPENDENCIES and body["auth"] == {"status": "ok"}
    assert set(body["consumers"]) == {"broadcast", "analytics"} and body["rate_limiter"] == {"status": "ok"}


@pytest.fixture
def ops_url(services):
    """The metrics listener (make_ops_app) on a port of its own."""
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(make_ops_app())
    server.add_sockets([sock])
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.mark.gen_test
async def test_the_metrics_listener_serves_the_whole_report_without_a_key(api, ops_url):
    code, body, _ = await api.with_key(None).at(ops_url).get("/health")
    assert code == 200 and body["status"] == "ok" and body["ready"] is True
    assert set(body["dependencies"]) == DEPENDENCIES
    assert all(dep["latency_ms"] > 0 for dep in body["dependencies"].values())
    assert set(body["consumers"]) == {"broadcast", "analytics"} and body["auth"] == {"status": "ok"}


@pytest.mark.gen_test
async def test_live_and_ready_answer_in_the_shape_orchestrators_expect(api):
    anonymous = api.with_key(None)
    assert await anonymous.get("/health/live") == (200, {"status": "ok"}, ANY)
    code, body, _ = await anonymous.get("/health/ready")
    assert (code, body) == (200, {"status": "ready"})
    assert metric("singleton_ready") == 1


@pytest.mark.gen_test(timeout=120)
async def test_health_answers_within_a_second_while_a_dependency_hangs(api):
    """A frozen Redis (SIGSTOP: it accepts connections and answers nothing) must not
    hold up any health answer: they come from the monitor's last report."""
    pid_file = DEVSTACK_DIR / "run" / "redis.pid"
    if not pid_file.exists():
        pytest.skip("this checkout's devstack did not start Redis, so it may not freeze it")
    pid = int(pid_file.read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(8):
            for path in ("/health", "/health/ready", "/health/live"):
                started = time.monotonic()
                code, body, _ = await api.get(path)
                assert time.monotonic() - started < 1.0, f"{path} took {time.monotonic() - started:.2f} s"
                assert code == 200, body

        async def seen_down():
            return (await get_health(api))[1]["dependencies"]["redis"]["status"] == "down"

        await wait_until(seen_down, timeout=15, what="the monitor to report the frozen redis down")
    finally:
        os.kill(pid, signal.SIGCONT)

    async def healthy():
        return (await get_health(api))[1]["status"] == "ok"

    await wait_until(healthy, timeout=20, interval=0.2, what="health back to ok after redis thawed")
