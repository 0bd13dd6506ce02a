"""Two service processes sharing only the backing services."""

from __future__ import annotations

import time
import urllib.parse

import pytest

from managers.mongodb import MongoManager
from tests.handlers.test_ws import Client
from tests.helpers import service_process, wait_healthy, wait_until


@pytest.fixture(scope="module")
def second_instance(io_loop, services):
    """One more service process for the module's tests (a start and a stop are seconds each)."""
    with service_process(io_loop) as (proc, url):
        io_loop.run_sync(lambda: wait_healthy(proc, urllib.parse.urlsplit(url).port), timeout=70)
        yield proc, url


@pytest.mark.gen_test(timeout=120)
async def test_a_change_made_on_one_instance_reaches_a_client_of_the_other(api, second_instance):
    _, other_url = second_instance

    user = await api.new_user()
    client = await Client.connect(api, user["id"], "elsewhere", base_url=other_url)
    try:
        payment = await api.new_payment(user["id"], amount="33.00")  # made through the first instance
        frame = await client.next_frame("payment_created", timeout=20, id=payment["id"])
    finally:
        client.close()

    async def counted_once():
        code, stats, _ = await api.get(f"/api/v1/analytics/users/{user['id']}")
        return code == 200 and stats["payment_count"] == 1 and stats

    stats = await wait_until(counted_once, timeout=60, interval=0.3, what="analytics to count the payment")
    assert stats["by_currency"] == {"USD": {"count": 1, "total": "33.00"}}
    assert await MongoManager.instance().db.events.count_documents({"_id": frame["event_id"]}) == 1


@pytest.mark.gen_test(timeout=120)
async def test_a_revoked_key_stops_working_on_another_instance_within_the_stated_delay(api, config, second_instance):
    _, other_url = second_instance
    user = await api.new_user()
    me = (await api.as_user(user["id"])).at(other_url)
    assert (await me.get(f"/api/v1/users/{user['id']}"))[0] == 200  # the other instance caches the verdict

    code, listing, _ = await api.get("/api/v1/api-keys")
    [row] = [k for k in listing["items"] if me.key.startswith(k["prefix"])]
    assert (await api.delete(f"/api/v1/api-keys/{row['id']}"))[0] == 200  # revoked through this instance
    revoked_at = time.monotonic()

    async def refused():
        return (await me.get(f"/api/v1/users/{user['id']}"))[0] == 401

    await wait_until(refused, timeout=10, interval=0.1, what="the other instance to refuse the revoked key")
    delay = time.monotonic() - revoked_at
    assert delay <= config["auth"]["key_cache_ttl_s"] + 1, f"took {delay:.2f} s"
    assert delay <= 5
