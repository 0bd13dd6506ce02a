"""The service split by ``--role``: an API process without the relay or the analytics
consumer, beside the test session's own process (role ``all``), on the real servers."""

from __future__ import annotations

import pytest

from tests.helpers import read_events, service_process, topic_consumer, wait_until


@pytest.fixture
def api_process(io_loop):
    with service_process(io_loop, "--role", "api") as running:
        yield running


@pytest.mark.gen_test(timeout=120)
async def test_an_api_process_takes_writes_and_a_relay_elsewhere_publishes_their_events(api, config, api_process):
    """It once answered every write with a 500 after the commit: it asked its own relay,
    which an ``api`` process does not run, to publish."""
    proc, url = api_process
    other = api.at(url)

    async def ready():
        assert proc.poll() is None, proc.stderr.read()
        try:
            return (await other.get("/health/ready"))[0] == 200
        except OSError:
            return False

    await wait_until(ready, timeout=60, interval=0.2, what="the api process to be ready")
    _, health, _ = await other.get("/health")
    assert set(health["consumers"]) == {"broadcast"}  # no analytics consumer here

    consumer = await topic_consumer(config["kafka"])
    try:
        user = await other.new_user(name="Split roles")
        payment = await other.new_payment(user["id"], amount="12.34")
        code, body, _ = await other.put(f"/api/v1/payments/{payment['id']}/status", {"status": "completed"})
        assert code == 200, body
        seen = await read_events(consumer, lambda s: len([e for e in s if e.get("user_id") == user["id"]]) >= 3)
    finally:
        await consumer.stop()
    mine = [e["type"] for e in seen if e.get("user_id") == user["id"]]
    assert mine == ["user_created", "payment_created", "payment_updated"]


@pytest.fixture(params=["relay", "analytics"])
def headless_process(io_loop, request):
    with service_process(io_loop, "--role", request.param) as (proc, url):
        yield request.param, proc, url


@pytest.mark.gen_test(timeout=120)
async def test_a_process_without_the_api_answers_its_health_with_the_status_alone(api, headless_process):
    """Such a process starts no key checker and no rate limiter: its /health was a 500 for
    every caller. It gives the status alone, whatever key it is sent (the whole report is
    on its metrics listener)."""
    role, proc, url = headless_process

    async def health():
        assert proc.poll() is None, proc.stderr.read()
        try:
            answer = await api.at(url).get("/health")
        except OSError:
            return None
        # 503 until its first checks; "degraded" while its consumer group rebalances (the
        # suite's own service is in the same group): both pass, and the status alone is asked.
        return answer if answer[:2] == (200, {"status": "ok"}) else None

    code, body, _ = await wait_until(health, timeout=60, interval=0.2, what=f"the {role} process to answer")
    assert code == 200 and body == {"status": "ok"}
    code, body, _ = await api.at(url).with_key(None).get("/health")
    assert code == 200 and body == {"status": "ok"}
    assert (await api.at(url).get("/health/live"))[0] == 200
