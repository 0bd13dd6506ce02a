"""Rate limits on real Redis: 429 with its headers, per key and per address, and
per-process buckets (or 503, if configured closed) when Redis is gone."""

from __future__ import annotations

import asyncio
import time

import pytest

from domain.ratelimit import Rate, RateLimiter, address_bucket, low_water, share_size
from managers.redis import RedisManager
from tests.helpers import metric, start_redis, stop_redis, wait_until


def forget_the_address_share() -> None:
    """Drop the tokens this instance holds of 127.0.0.1's bucket (taken at the suite's high
    rate by an earlier test's first use of a key), so the next call asks Redis at the test's rate."""
    RateLimiter.instance()._shares.pop(address_bucket("127.0.0.1"), None)


def rejected(role: str) -> float:
    return metric("singleton_rate_limited_total", {"role": role})


@pytest.mark.gen_test
async def test_a_key_over_its_write_rate_gets_429_with_headers(api, monkeypatch):
    user = await api.new_user()
    me = await api.as_user(user["id"])  # a fresh key: a bucket of its own
    monkeypatch.setattr(RateLimiter.instance(), "write", Rate(per_s=0.5, burst=2))
    before = rejected("user")
    body = {"user_id": user["id"], "amount": "1.00", "currency": "USD"}
    codes, headers = [], []
    started = time.monotonic()
    for _ in range(3):
        code, _, h = await me.post("/api/v1/payments", body)
        codes.append(code)
        headers.append(h)
    took = time.monotonic() - started
    assert codes == [201, 201, 429]
    assert headers[0]["RateLimit-Limit"] == "2" and headers[0]["RateLimit-Remaining"] == "1"
    assert headers[1]["RateLimit-Remaining"] == "0"
    limited = headers[2]
    assert limited["RateLimit-Limit"] == "2" and limited["RateLimit-Remaining"] == "0"
    # One token every 2 s, two to fill the bucket, counted from the first call: 2 s and 4 s,
    # rounded up; a second less if the three calls took longer than one (a slow machine).
    assert (limited["Retry-After"], limited["RateLimit-Reset"]) in (
        {("2", "4")} if took < 1 else {("2", "4"), ("1", "3")}
    )
    assert rejected("user") == before + 1

    # Reads have a bucket of their own: the same key still reads.
    assert (await me.get(f"/api/v1/users/{user['id']}"))[0] == 200
    # And the rejection is about this key only: the admin key still writes.
    assert (await api.post("/api/v1/payments", body))[0] == 201


@pytest.mark.gen_test
async def test_calls_without_a_valid_key_are_limited_per_address(api, monkeypatch):
    monkeypatch.setattr(RateLimiter.instance(), "anonymous", Rate(per_s=0.5, burst=3))
    forget_the_address_share()
    before = rejected("anonymous")
    anonymous, guesser = api.with_key(None), api.with_key("sk_admin_" + "x" * 32)
    codes = [(await anonymous.get("/health"))[0] for _ in range(2)]
    codes += [(await guesser.get("/api/v1/api-keys"))[0] for _ in range(2)]
    assert codes == [200, 200, 401, 429], "key guessing and public calls share the address's bucket"
    assert rejected("anonymous") == before + 1
    assert (await api.get("/api/v1/api-keys"))[0] == 200, "a valid key has its own bucket"


@pytest.mark.gen_test(timeout=180)
async def test_with_redis_gone_each_process_limits_on_its_own_buckets_and_says_so(api, monkeypatch):
    """Redis stopped for real: writes, calls without a key and reads by a valid key are
    limited by this process's own buckets, with the same rates (not let through)."""
    user = await api.new_user()
    me = await api.as_user(user["id"])  # a fresh key: buckets of its own
    limits = RateLimiter.instance()
    forget_the_address_share()  # its first lookup takes a token of 127.0.0.1's bucket
    suite_read = limits.read
    monkeypatch.setattr(limits, "write", Rate(per_s=0.01, burst=3))
    monkeypatch.setattr(limits, "read", Rate(per_s=0.01, burst=2))
    body = {"user_id": user["id"], "amount": "1.00", "currency": "USD"}
    assert (await me.get(f"/api/v1/users/{user['id']}"))[0] == 200  # the key's verdict is cached: no lookup below
    monkeypatch.setattr(limits, "anonymous", Rate(per_s=0.01, burst=2))
    local = metric("singleton_rate_limit_local_total")
    stop_redis()
    try:
        writes = [(await me.post("/api/v1/payments", body))[0] for _ in range(5)]
        assert writes == [201, 201, 201, 429, 429], "a write burst past the limit is refused with Redis down"
        anonymous = [(await api.with_key(None).get("/health"))[0] for _ in range(3)]
        assert anonymous == [200, 200, 429], "so are calls without a key"
        # The read bucket already gave one token through Redis (its share is kept a second):
        # reads by a valid key are limited too, once Redis is found out of reach.
        reads = [(await me.get(f"/api/v1/users/{user['id']}"))[0] for _ in range(4)]
        assert reads.count(429) >= 1 and reads[-1] == 429, reads
        assert metric("singleton_rate_limit_local_total") >= local + 5 + 3 + 1
        code, error, headers = await me.post("/api/v1/payments", body)
        assert code == 429 and error["error"]["code"] == "rate_limited" and int(headers["Retry-After"]) >= 1

        # The admin's reads of /health below are limited too: at the suite's rate again, so
        # the polls last until the monitor's next check (health_probe_interval_s) shows it.
        monkeypatch.setattr(limits, "read", suite_read)

        async def shown():
            code, health, _ = await api.get("/health")
            return health["rate_limiter"] == {"status": "local"} and (code, health)

        code, health = await wait_until(shown, timeout=10, what="/health to show the limiter local")
        assert code == 200 and health["status"] == "degraded" and "rate_limiter" in health["down"]

        monkeypatch.setattr(limits, "redis_down", "closed")
        code, error, headers = await me.post("/api/v1/payments", body)
        assert code == 503 and error["error"]["code"] == "dependency_unavailable" and headers["Retry-After"]
        monkeypatch.setattr(limits, "redis_down", "local")
    finally:
        await start_redis()

    async def limiting_again():
        code, _, _ = await api.get(f"/api/v1/users/{user['id']}")
        return code == 200 and RateLimiter.instance().status() == {"status": "ok"}

    await wait_until(limiting_again, timeout=20, interval=0.3, what="the limiter to use Redis again")


def redis_calls_at_100_reads_per_s(monkeypatch) -> list:
    """Reads limited to 100/s (a burst of 50); the list fills with the limiter's Redis calls
    for keys' buckets (a key's first lookup also takes a token of its address's)."""
    monkeypatch.setattr(RateLimiter.instance(), "read", Rate(per_s=100, burst=50))
    calls = []
    take_tokens = RedisManager.take_tokens

    async def counted(self, *args, **kwargs):
        if args[0].startswith("rl:key:"):
            calls.append(args)
        return await take_tokens(self, *args, **kwargs)

    monkeypatch.setattr(RedisManager, "take_tokens", counted)
    return calls


@pytest.mark.gen_test
async def test_an_instance_spends_a_small_share_of_a_bucket_without_asking_redis(api, monkeypatch):
    """A share of the rate is taken at once and spent locally: at 100 reads/s, one Redis
    call per share (50 reads), the next taken in the background when 10 are left, and
    never more reads than the bucket holds."""
    user = await api.new_user()
    me = await api.as_user(user["id"])
    calls = redis_calls_at_100_reads_per_s(monkeypatch)
    limiter = RateLimiter.instance()
    share, low = share_size(limiter.read), low_water(limiter.read)
    assert (share, low) == (50, 10)
    started = time.monotonic()
    codes = []
    for n in range(1, 81):
        codes.append((await me.get(f"/api/v1/users/{user['id']}"))[0])
        if n in (share - low - 1, share - low):  # the read that leaves 10 begins the next share
            await wait_until(lambda: not limiter._refills, timeout=5)
            assert len(calls) == (1 if n < share - low else 2), f"{len(calls)} Redis calls for {n} reads"
    elapsed = time.monotonic() - started
    assert codes.count(200) >= 50, "at least the bucket's 50"
    # At most what the bucket held and refilled, plus the share not yet spent (the stated bound).
    assert codes.count(200) <= 50 + 100 * elapsed + (share - 1), (codes.count(200), elapsed)


@pytest.mark.gen_test
async def test_concurrent_calls_that_find_the_share_spent_ask_redis_once(api, monkeypatch):
    user = await api.new_user()
    me = await api.as_user(user["id"])
    calls = redis_calls_at_100_reads_per_s(monkeypatch)
    share = share_size(RateLimiter.instance().read)
    reads = share - low_water(RateLimiter.instance().read) - 1  # fewer than would begin the next share
    results = await asyncio.gather(*(me.get(f"/api/v1/users/{user['id']}") for _ in range(reads)))
    assert [code for code, _, _ in results] == [200] * reads
    assert len(calls) == 1, f"{len(calls)} Redis calls for {reads} concurrent reads (a share is {share})"
