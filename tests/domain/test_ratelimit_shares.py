"""The rate limiter's shares (pure logic): a stand-in for Redis's token bucket, the same
arithmetic as its Lua script on a clock the test moves, so every call to Redis and every
verdict can be counted exactly. Against the real Redis: tests/handlers/test_ratelimit.py."""

from __future__ import annotations

import asyncio
import math
import types

import pytest

from domain import ratelimit
from domain.auth import USER, Principal
from domain.errors import APIError
from domain.ratelimit import RateLimiter
from managers.redis import Bucket, RedisManager
from tests.helpers import metric

ME = Principal("key-1", USER, "user-1")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class Buckets:
    """What managers/redis.py's token-bucket script does, on ``clock``."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.state: dict[str, tuple[float, float]] = {}
        self.calls: list[tuple[str, int]] = []
        self.down = False
        self.gate: asyncio.Event | None = None  # when set: each call waits for it
        self.round_trip = False  # when set: each call takes a turn of the loop, as a real one does

    async def take_tokens(self, key: str, per_s: float, burst: int, wanted: int = 1) -> Bucket:
        self.calls.append((key, wanted))
        if self.gate is not None:
            await self.gate.wait()
        if self.round_trip:
            await asyncio.sleep(0)
        if self.down:
            raise ConnectionError("redis is down")
        now = self.clock.now
        tokens, at = self.state.get(key, (burst, now))
        tokens = min(burst, tokens + max(0.0, now - at) * per_s)
        taken = min(wanted, math.floor(tokens))
        wait = (1 - tokens) / per_s if taken < 1 else 0.0
        tokens -= taken
        self.state[key] = (tokens, now)
        return Bucket(taken, int(tokens), wait, (burst - tokens) / per_s)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(ratelimit, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    return clock


@pytest.fixture
def redis(monkeypatch, clock) -> Buckets:
    buckets = Buckets(clock)
    monkeypatch.setattr(RedisManager, "instance", classmethod(lambda cls: buckets))
    return buckets


def limiter(read=(100, 50), write=(0.5, 2), anonymous=(0.5, 3), redis_down="local") -> RateLimiter:
    return RateLimiter(
        {
            "enabled": True,
            "redis_down": redis_down,
            **{f"{kind}_per_s": rate[0] for kind, rate in (("read", read), ("write", write), ("anonymous", anonymous))},
            **{f"{kind}_burst": rate[1] for kind, rate in (("read", read), ("write", write), ("anonymous", anonymous))},
        }
    )


@pytest.mark.gen_test
async def test_half_a_seconds_rate_is_taken_at_once_and_the_headers_count_down_as_the_bucket(redis):
    limits = limiter(read=(20, 50))
    verdicts = [await limits.check("GET", ME, "10.0.0.1") for _ in range(25)]
    # 20/s: shares of 10, so three calls to Redis for 25 reads, at the 1st, 11th and 21st.
    assert redis.calls == [("rl:key:key-1:r", 10)] * 3
    # What the client is told is what an exact bucket of 50 would say after each read.
    assert [v.remaining for v in verdicts] == list(range(49, 24, -1))
    assert {v.limit for v in verdicts} == {50}


@pytest.mark.gen_test
async def test_reads_writes_and_callers_without_a_key_have_buckets_of_their_own(redis):
    limits = limiter()
    await limits.check("GET", ME, "10.0.0.1")
    await limits.check("POST", ME, "10.0.0.1")
    await limits.check("GET", None, "10.0.0.1")
    await limits.check("GET", None, "10.0.0.2")
    assert [key for key, _ in redis.calls] == ["rl:key:key-1:r", "rl:key:key-1:w", "rl:ip:10.0.0.1", "rl:ip:10.0.0.2"]


@pytest.mark.gen_test
async def test_an_empty_bucket_is_refused_and_remembered_until_its_next_token(redis, clock):
    limits = limiter(write=(0.5, 2))  # a share of one token: half a second's 0.5
    refused = metric("singleton_rate_limited_total", {"role": USER})
    assert [(await limits.check("POST", ME, "ip")).remaining for _ in range(2)] == [1, 0]
    with pytest.raises(APIError) as caught:
        await limits.check("POST", ME, "ip")
    assert (caught.value.status, caught.value.code) == (429, "rate_limited")
    assert caught.value.headers == {
        "Retry-After": "2",  # one token every 2 s
        "RateLimit-Limit": "2",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "4",  # two tokens to refill
    }
    assert len(redis.calls) == 3
    # Knocking again at once is refused without asking Redis, for at most a second.
    clock.now += 0.9
    with pytest.raises(APIError):
        await limits.check("POST", ME, "ip")
    assert len(redis.calls) == 3
    # Past that second Redis is asked again: half a token more, so still refused, with the right wait.
    clock.now += 0.2
    with pytest.raises(APIError) as caught:
        await limits.check("POST", ME, "ip")
    assert caught.value.headers["Retry-After"] == "1" and len(redis.calls) == 4
    assert metric("singleton_rate_limited_total", {"role": USER}) == refused + 3
    clock.now += 0.9  # two seconds after the bucket emptied: one token
    assert (await limits.check("POST", ME, "ip")).remaining == 0


@pytest.mark.gen_test
async def test_an_unspent_share_is_forfeited_after_a_second(redis, clock):
    limits = limiter(read=(100, 50))
    await limits.check("GET", ME, "ip")  # takes 10, spends 1
    clock.now += ratelimit.SHARE_TTL_S
    await limits.check("GET", ME, "ip")
    assert len(redis.calls) == 2, "the nine left were not spent after their time"


@pytest.mark.gen_test
async def test_concurrent_calls_that_find_the_share_spent_ask_redis_once_per_share(redis):
    limits = limiter(read=(20, 50))
    redis.gate = asyncio.Event()
    calls = [asyncio.ensure_future(limits.check("GET", ME, "ip")) for _ in range(40)]
    await asyncio.sleep(0)  # every call has started: one asks Redis, the others wait for it
    assert len(redis.calls) == 1
    redis.gate.set()
    verdicts = await asyncio.gather(*calls)
    await asyncio.sleep(0)  # the top-up the last share began when it ran low
    assert len(redis.calls) == 5, "a share of 10 per call to Redis, and the next as the last ran low"
    assert sorted(v.remaining for v in verdicts) == list(range(10, 50))


def spend_without_waiting(limits: RateLimiter, method: str = "GET") -> ratelimit.Verdict | None:
    """One check that must not wait (for Redis, or for anything)."""
    call = limits.check(method, ME, "ip")
    try:
        call.send(None)
    except StopIteration as finished:
        return finished.value
    call.close()
    raise AssertionError("the call waited")


@pytest.mark.gen_test
async def test_a_share_running_low_is_topped_up_in_the_background_and_no_call_waits(redis):
    limits = limiter(read=(100, 200))  # shares of 50, the next taken when 10 are left
    await limits.check("GET", ME, "ip")  # a bucket's first call asks Redis itself
    redis.round_trip = True  # from now on, a call that asked Redis would wait
    remaining = []
    for _ in range(179):
        remaining.append(spend_without_waiting(limits).remaining)
        for _ in range(2):  # turns of the loop between calls, as between requests
            await asyncio.sleep(0)
    assert redis.calls == [("rl:key:key-1:r", 50)] * 4  # the 1st call's, then at calls 40, 90 and 140
    assert remaining == list(range(198, 19, -1)), "what an exact bucket of 200 says after each call"


@pytest.mark.gen_test
@pytest.mark.parametrize("fault", ["redis down", "bucket empty"])
async def test_a_top_up_that_finds_redis_down_or_the_bucket_empty_adds_nothing(redis, fault):
    limits = limiter(read=(100, 60 if fault == "redis down" else 50))  # shares of 50, the next at 10 left
    await limits.check("GET", ME, "ip")  # takes 50: 10 left in a bucket of 60, none in one of 50
    redis.down = fault == "redis down"
    for _ in range(39):
        spend_without_waiting(limits)
    await asyncio.sleep(0)  # the top-up, begun at 10 left, fails or takes nothing
    assert len(redis.calls) == 2
    for _ in range(10):  # the share's last tokens, spent as they were
        spend_without_waiting(limits)
    if fault == "redis down":  # then the call that finds it spent asks Redis: the local bucket of 60
        assert (await limits.check("GET", ME, "ip")).remaining == 59
    else:  # or finds the bucket empty: 429
        with pytest.raises(APIError) as caught:
            await limits.check("GET", ME, "ip")
        assert caught.value.status == 429
    assert len(redis.calls) == 3


@pytest.mark.gen_test
async def test_without_redis_each_bucket_is_kept_in_process_with_the_same_limits(redis, clock):
    limits = limiter()
    local = metric("singleton_rate_limit_local_total")
    redis.down = True
    # Writes: a burst of 2, one token every 2 s. Calls without a key: 3, one every 2 s.
    assert [(await limits.check("POST", ME, "ip")).remaining for _ in range(2)] == [1, 0]
    with pytest.raises(APIError) as caught:
        await limits.check("POST", ME, "ip")
    assert caught.value.status == 429 and caught.value.headers["Retry-After"] == "2"
    for _ in range(3):
        await limits.check("GET", None, "ip")
    with pytest.raises(APIError):
        await limits.check("GET", None, "ip")
    assert (await limits.check("GET", None, "another ip")).remaining == 2, "a bucket per address"
    # Reads by a valid key are limited the same way (a burst of 50 here), not let through.
    assert [(await limits.check("GET", ME, "ip")).remaining for _ in range(50)][-1] == 0
    with pytest.raises(APIError):
        await limits.check("GET", ME, "ip")
    assert metric("singleton_rate_limit_local_total") == local + 2 + 1 + 3 + 1 + 1 + 50 + 1
    assert limits.status() == {"status": "local"}
    # Redis is asked once when it was found out of reach, then again a second later only.
    assert len(redis.calls) == 1
    clock.now += 2.0  # a write token is back, and Redis is asked again
    assert (await limits.check("POST", ME, "ip")).remaining == 0
    assert len(redis.calls) == 2
    redis.down = False
    clock.now += 1.0
    assert await limits.check("GET", ME, "ip") is not None
    assert limits.status() == {"status": "ok"} and len(redis.calls) == 3

    closed = limiter(redis_down="closed")
    redis.down = True
    with pytest.raises(ConnectionError):
        await closed.check("GET", ME, "ip")


@pytest.mark.gen_test
async def test_a_disabled_limiter_asks_nothing(redis):
    limits = limiter()
    limits.enabled = False
    assert await limits.check("POST", ME, "ip") is None
    assert redis.calls == [] and limits.status() == {"status": "disabled"}
