"""Rate limits: a token bucket per API key (per client address for calls without
a valid key), with separate read and write rates, kept in Redis.

The bucket is one Lua script on Redis's own clock, so every instance shares it
and no read-modify-write race exists. When Redis cannot be reached
(``rate_limit.redis_down: local``, the default) every call, reads by valid keys
included, is checked against a token bucket of this process's own with the same
rate and burst, and Redis is asked again a second later; the metric
``singleton_rate_limit_local_total`` counts those calls and ``/health`` shows
``rate_limiter: local``. Such a limit is per process: N instances let a client
through at up to N times its rate. ``closed`` refuses the calls with 503 instead.

Not a Redis round trip per call: an instance takes a share of a bucket at once
(half a second's rate, at most 50 tokens) and spends it locally for up to
``SHARE_TTL_S``, so the common case is a dictionary lookup and a subtraction.
Every token still comes out of the shared bucket, so a client never gets more
than its limit in count; what the share changes is when:
over any window a client can be at most ``share + low_water - 1`` calls per
instance ahead of the exact bucket (a share, and what was left of the one before
it when it was topped up), for at most a second. A share left unspent is forfeited,
so a client spread over many instances may get slightly less than its limit.
An empty bucket is remembered too, until its next token is due: a client that
keeps knocking while refused costs no Redis call either. Concurrent calls that
find the share spent wait for one of them to fetch the next, instead of all asking.

A share is topped up in the background when a fifth of it is left (``low_water``),
so a busy client's calls do not wait for Redis: only its first call does, and a call
that finds the share spent before the top-up came back. One call in 50 waiting for
its refill cost GET user 323 µs of CPU a request, against 299 with top-ups (A/B,
docs/BENCHMARKS.md's history): a request that waits costs far more than its wait.
The price: an instance may hold a share and a fifth, and a client that stops
forfeits what it holds after ``SHARE_TTL_S``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from typing import NamedTuple

from domain.auth import ROLES, Principal
from domain.errors import APIError
from managers import metrics, redis
from managers.base import Manager
from managers.config import Config, RateLimitConfig
from managers.redis import RedisManager

log = logging.getLogger("singleton.ratelimit")

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ANONYMOUS = "anonymous"  # the role of a call without a valid key
for _role in (*ROLES, ANONYMOUS):  # rejections by role: zeros before the first
    metrics.RATE_LIMITED.labels(_role)
# An instance takes this much of a second's rate at once. A tenth of a second (10 tokens of
# the shipped 100/s) made a Redis round trip of every tenth call, 12-20% of GET user's
# throughput; half a second, one in 50 (docs/BENCHMARKS.md, history).
SHARE_OF_A_SECOND = 0.5
SHARE_MAX = 50
SHARE_TTL_S = 1.0  # an unspent share is forfeited after this
SHARES_MAX = 10_000  # buckets with a local share at most (per address ones included)
REDIS_RETRY_S = 1.0  # with Redis unreachable, the local buckets answer alone this long before it is asked again


def share_size(rate: Rate) -> int:
    """How many tokens of a bucket with ``rate`` an instance takes at once."""
    return max(1, min(SHARE_MAX, int(rate.per_s * SHARE_OF_A_SECOND)))


def low_water(rate: Rate) -> int:
    """Tokens left in a share when the next is taken in the background (0: never; a
    share under 5 tokens is small enough to take when spent)."""
    return share_size(rate) // 5


def key_bucket(key_id: str, method: str) -> str:
    """The Redis key of an API key's bucket for ``method``'s kind (reads, or writes)."""
    return f"rl:key:{key_id}:{'r' if method in READ_METHODS else 'w'}"


def address_bucket(remote_ip: str) -> str:
    """The Redis key of the bucket of calls from ``remote_ip`` without a valid key."""
    return f"rl:ip:{remote_ip}"


class Share:
    """Tokens this instance took from a bucket in advance, or (``refused``) an empty
    bucket remembered until its next token is due."""

    __slots__ = ("tokens", "expires", "remaining", "reset_s", "refused")

    def __init__(self, tokens: int, expires: float, remaining: int, reset_s: float, refused: bool = False):
        self.tokens, self.expires, self.remaining, self.reset_s = tokens, expires, remaining, reset_s
        self.refused = refused


class Rate(NamedTuple):
    per_s: float
    burst: int


class Verdict(NamedTuple):
    """What the response headers say about the caller's bucket (None: not limited)."""

    limit: int
    remaining: int
    reset_s: float


class LocalBucket:
    """A token bucket of this process's own, used while Redis is out of reach."""

    __slots__ = ("tokens", "at")

    def __init__(self, tokens: float, at: float):
        self.tokens, self.at = tokens, at


class RateLimiter(Manager):
    health_path = "rate_limiter"

    def __init__(self, cfg: RateLimitConfig):
        self.enabled: bool = cfg["enabled"]
        self.redis_down: str = cfg["redis_down"]  # local | closed
        self.read = Rate(cfg["read_per_s"], cfg["read_burst"])
        self.write = Rate(cfg["write_per_s"], cfg["write_burst"])
        self.anonymous = Rate(cfg["anonymous_per_s"], cfg["anonymous_burst"])
        self._local_until = 0.0  # Redis was out of reach: the local buckets answer alone until then
        self._using_local = False  # the last call that needed Redis could not reach it
        self._local: OrderedDict[str, LocalBucket] = OrderedDict()
        self._shares: OrderedDict[str, Share] = OrderedDict()
        self._refills: dict[str, asyncio.Future[None]] = {}  # buckets whose share is being asked for
        self._top_ups: set[asyncio.Task[None]] = set()  # held until done (the loop keeps weak references)

    @classmethod
    def start(cls, config: Config) -> RateLimiter:
        return cls._install(cls(config["rate_limit"]))

    async def check(self, method: str, principal: Principal | None, remote_ip: str) -> Verdict | None:
        """Take a token for this call; raise 429 ``rate_limited`` when the bucket is empty."""
        if not self.enabled:
            return None
        if principal is None:
            role, bucket, rate = ANONYMOUS, address_bucket(remote_ip), self.anonymous
        else:
            rate = self.read if method in READ_METHODS else self.write
            role, bucket = principal.role, key_bucket(principal.key_id, method)
        if self.redis_down == "local" and time.monotonic() < self._local_until:
            return self._take_local(bucket, rate, role)
        while (verdict := self._spend_share(bucket, rate, role)) is None:
            refilling = self._refills.get(bucket)
            if refilling is None:
                return await self._refill(bucket, rate, role)
            await asyncio.shield(refilling)  # one request asks Redis for the share; the others wait for it
        return verdict

    def _spend_share(self, bucket: str, rate: Rate, role: str) -> Verdict | None:
        """A token of this instance's share of ``bucket``, or None when it has none to give."""
        now = time.monotonic()
        share = self._shares.get(bucket)
        if share is None or share.expires <= now:
            return None
        if share.tokens > 0:
            share.tokens -= 1
            if share.tokens == low_water(rate) and share.tokens and bucket not in self._refills:
                self._top_up(bucket, rate)
            return Verdict(rate.burst, share.remaining + share.tokens, share.reset_s)
        if share.refused:
            raise refused(rate, role, share.expires - now, Verdict(rate.burst, 0, share.reset_s))
        return None

    async def _refill(self, bucket: str, rate: Rate, role: str) -> Verdict | None:
        """Take a new share of ``bucket`` from Redis, and one of its tokens for this call."""
        done = self._refills[bucket] = asyncio.get_running_loop().create_future()
        try:
            return await self._take_share(bucket, rate, role)
        finally:
            del self._refills[bucket]
            done.set_result(None)

    async def _take_share(self, bucket: str, rate: Rate, role: str) -> Verdict | None:
        now = time.monotonic()
        wanted = share_size(rate)
        try:
            taken = await RedisManager.instance().take_tokens(bucket, rate.per_s, rate.burst, wanted)
        except redis.UNAVAILABLE:
            if self.redis_down != "local":
                raise
            self._using_local = True
            self._local_until = time.monotonic() + REDIS_RETRY_S
            return self._take_local(bucket, rate, role)
        self._using_local = False
        if taken.taken < 1:
            remember = min(taken.retry_after_s, SHARE_TTL_S)
            self._keep(bucket, Share(0, now + remember, 0, taken.reset_s, refused=True))
            raise refused(rate, role, taken.retry_after_s, Verdict(rate.burst, 0, taken.reset_s))
        self._keep(bucket, Share(taken.taken - 1, now + SHARE_TTL_S, taken.remaining, taken.reset_s))
        return Verdict(rate.burst, taken.remaining + taken.taken - 1, taken.reset_s)

    def _top_up(self, bucket: str, rate: Rate) -> None:
        """Take ``bucket``'s next share in the background, while this one has tokens left.
        A call that finds the share spent meanwhile waits for it, as for any refill."""
        done = self._refills[bucket] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._topped_up(bucket, rate, done), name="rate-limit-top-up")
        self._top_ups.add(task)
        task.add_done_callback(self._top_ups.discard)

    async def _topped_up(self, bucket: str, rate: Rate, done: asyncio.Future[None]) -> None:
        try:
            taken = await RedisManager.instance().take_tokens(bucket, rate.per_s, rate.burst, share_size(rate))
        except Exception as exc:
            # Redis out of reach (RedisManager says so): the share's last tokens are spent, then
            # the call that finds it spent asks Redis itself (the local bucket, or 503).
            if not RedisManager.is_unavailable(exc):
                log.error("rate limit top-up failed", exc_info=exc)
            return
        finally:
            del self._refills[bucket]
            done.set_result(None)  # its waiters run after this task's step: the share is updated by then
        if taken.taken < 1:  # the bucket is empty: the share's last tokens go, then 429 as usual
            return
        now = time.monotonic()
        share = self._shares.get(bucket)
        if share is None or share.expires <= now or share.refused:
            self._keep(bucket, Share(taken.taken, now + SHARE_TTL_S, taken.remaining, taken.reset_s))
            return
        share.tokens += taken.taken
        share.expires, share.remaining, share.reset_s = now + SHARE_TTL_S, taken.remaining, taken.reset_s

    def _take_local(self, bucket: str, rate: Rate, role: str) -> Verdict:
        """A token of this process's own bucket (Redis out of reach), or 429."""
        metrics.RATE_LIMIT_LOCAL.inc()
        now = time.monotonic()
        local = self._local.get(bucket)
        if local is None:
            local = self._local[bucket] = LocalBucket(rate.burst, now)
            while len(self._local) > SHARES_MAX:
                self._local.popitem(last=False)
        self._local.move_to_end(bucket)
        local.tokens = min(rate.burst, local.tokens + (now - local.at) * rate.per_s)
        local.at = now
        if local.tokens < 1:
            retry_after_s = (1 - local.tokens) / rate.per_s
            raise refused(rate, role, retry_after_s, Verdict(rate.burst, 0, (rate.burst - local.tokens) / rate.per_s))
        local.tokens -= 1
        return Verdict(rate.burst, math.floor(local.tokens), (rate.burst - local.tokens) / rate.per_s)

    def _keep(self, bucket: str, share: Share) -> None:
        self._shares[bucket] = share
        self._shares.move_to_end(bucket)
        while len(self._shares) > SHARES_MAX:
            self._shares.popitem(last=False)

    def status(self) -> dict[str, str]:
        """For /health: whether calls are checked per process only (Redis out of reach)."""
        if not self.enabled:
            return {"status": "disabled"}
        return {"status": "local" if self._using_local else "ok"}


def refused(rate: Rate, role: str, retry_after_s: float, verdict: Verdict) -> APIError:
    metrics.RATE_LIMITED.labels(role).inc()
    return APIError(
        429,
        "rate_limited",
        f"too many requests: {rate.per_s:g} per second, bursts of {rate.burst}",
        headers={"Retry-After": str(max(1, math.ceil(retry_after_s))), **headers(verdict)},
    )


def headers(verdict: Verdict) -> dict[str, str]:
    """The RateLimit-* response headers (IETF draft: limit, remaining, seconds to reset)."""
    return {
        "RateLimit-Limit": str(verdict.limit),
        "RateLimit-Remaining": str(verdict.remaining),
        "RateLimit-Reset": str(math.ceil(verdict.reset_s)),
    }
