"""Cache-aside on real Redis: hits, invalidation after commit, and reads through when Redis is gone."""

from __future__ import annotations

import asyncio

import pytest

from domain import payments, users
from managers.redis import RedisManager
from tests.helpers import metric, start_redis, stop_redis, wait_until


def lookups(result: str) -> float:
    return metric("singleton_cache_lookups_total", {"result": result})


@pytest.mark.gen_test
async def test_second_read_is_a_hit_and_an_update_replaces_the_entry(api):
    user = await api.new_user(name="Cached")
    redis = RedisManager.instance().client
    key = users.cache_key(user["id"])
    assert not await redis.exists(key)
    await api.get(f"/api/v1/users/{user['id']}")
    assert await redis.hget(key, "v") == b"1"
    hits = lookups("hit")
    code, body, headers = await api.get(f"/api/v1/users/{user['id']}")
    assert code == 200 and body == user and lookups("hit") == hits + 1
    assert headers["ETag"] == '"1"'

    await api.put(f"/api/v1/users/{user['id']}", {"name": "Changed"})
    assert await redis.hget(key, "v") == b"2"  # written through: the next read is a hit on the new version
    hits = lookups("hit")
    code, body, headers = await api.get(f"/api/v1/users/{user['id']}")
    assert body["name"] == "Changed" and headers["ETag"] == '"2"' and lookups("hit") == hits + 1


@pytest.mark.gen_test
async def test_payment_status_change_invalidates_its_cache(api):
    user = await api.new_user()
    payment = await api.new_payment(user["id"])
    await api.get(f"/api/v1/payments/{payment['id']}")
    assert await RedisManager.instance().client.exists(payments.cache_key(payment["id"]))
    await api.put(f"/api/v1/payments/{payment['id']}/status", {"status": "failed"})
    code, body, _ = await api.get(f"/api/v1/payments/{payment['id']}")
    assert body["status"] == "failed"


@pytest.mark.gen_test(timeout=180)
async def test_reads_and_writes_go_on_without_redis(api):
    user = await api.new_user(name="Before outage")
    payment = await api.new_payment(user["id"])
    await api.get(f"/api/v1/users/{user['id']}")  # now cached
    stop_redis()
    try:
        errors = lookups("error") + lookups("bypass")
        code, body, _ = await api.get(f"/api/v1/users/{user['id']}")
        assert code == 200 and body["name"] == "Before outage"
        code, body, _ = await api.put(f"/api/v1/users/{user['id']}", {"name": "During outage"})
        assert code == 200
        code, body, _ = await api.get(f"/api/v1/users/{user['id']}")
        assert code == 200 and body["name"] == "During outage"
        code, body, _ = await api.get(f"/api/v1/payments/{payment['id']}")
        assert code == 200 and body["id"] == payment["id"]
        assert lookups("error") + lookups("bypass") == errors + 3, "each of the three reads missed the cache"
    finally:
        await start_redis()

    async def cached_again():
        await api.get(f"/api/v1/users/{user['id']}")
        return await RedisManager.instance().client.exists(users.cache_key(user["id"]))

    await wait_until(cached_again, timeout=20, interval=0.3, what="the cache to be used again after Redis returned")


@pytest.mark.gen_test
async def test_a_slow_read_never_puts_back_a_version_older_than_a_committed_write(api):
    """The interleaving that used to leave version 1 cached for the TTL, forced step by
    step: a read loads version 1, an update commits version 2, then the read puts back."""
    user = await api.new_user(name="Version one")
    redis = RedisManager.instance()
    key = users.cache_key(user["id"])
    await redis.client.delete(key)
    loaded, resume = asyncio.Event(), asyncio.Event()

    async def slow_load():
        entry = await users.load(user["id"])  # version 1, from MariaDB
        loaded.set()
        await resume.wait()  # ... and slow to put it back
        return entry

    reading = asyncio.ensure_future(redis.read_through(key, slow_load))
    await asyncio.wait_for(loaded.wait(), 5)
    code, updated, _ = await api.put(f"/api/v1/users/{user['id']}", {"name": "Version two"})
    assert code == 200 and updated["version"] == 2
    resume.set()
    assert (await reading).version == 1  # the slow reader answers with what it read, and tries to cache it

    assert await redis.client.hget(key, "v") == b"2"
    code, body, headers = await api.get(f"/api/v1/users/{user['id']}")
    assert body["name"] == "Version two" and headers["ETag"] == '"2"'
