"""Rate limits: a token bucket per API key (per client address for calls without
a valid key), with separate read and write rates, kept in Redis.

The bucket is one Lua script on Redis's own clock, so every instance shares it
and no read-modify-write race exists. When Redis cannot be reached the limiter
fails open by default (``rate_limit.fail_open``): the call goes through, the
metric ``singleton_rate_limit_fail_open`` counts it and ``/health`` shows it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from domain.auth import Principal
from domain.errors import APIError
from managers import metrics, redis
from managers.base import Manager
from managers.redis import RedisManager

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ANONYMOUS = "anonymous"


class Rate(NamedTuple):
    per_s: float
    burst: int


class Verdict(NamedTuple):
    """What the response headers say about the caller's bucket (None: not limited)."""

    limit: int
    remaining: int
    reset_s: float


class RateLimiter(Manager):
    def __init__(self, cfg: dict):
        self.enabled: bool = cfg["enabled"]
        self.fail_open: bool = cfg["fail_open"]
        self.read = Rate(cfg["read_per_s"], cfg["read_burst"])
        self.write = Rate(cfg["write_per_s"], cfg["write_burst"])
        self.anonymous = Rate(cfg["anonymous_per_s"], cfg["anonymous_burst"])
        self._failing_open = False  # the last check could not reach Redis and let the call through

    @classmethod
    def start(cls, config: dict) -> RateLimiter:
        return cls._install(cls(config["rate_limit"]))

    async def check(self, method: str, principal: Principal | None, remote_ip: str) -> Verdict | None:
        """Take a token for this call; raise 429 ``rate_limited`` when the bucket is empty."""
        if not self.enabled:
            return None
        if principal is None:
            role, bucket, rate = ANONYMOUS, f"rl:ip:{remote_ip}", self.anonymous
        else:
            kind, rate = ("r", self.read) if method in READ_METHODS else ("w", self.write)
            role, bucket = principal.role, f"rl:key:{principal.key_id}:{kind}"
        try:
            taken = await RedisManager.instance().take_token(bucket, rate.per_s, rate.burst)
        except redis.UNAVAILABLE:
            if not self.fail_open:
                raise
            metrics.RATE_LIMIT_FAIL_OPEN.inc()
            self._failing_open = True
            return None
        self._failing_open = False
        verdict = Verdict(rate.burst, taken.remaining, taken.reset_s)
        if not taken.allowed:
            metrics.RATE_LIMITED.labels(role).inc()
            raise APIError(
                429,
                "rate_limited",
                f"too many requests: {rate.per_s:g} per second, bursts of {rate.burst}",
                headers={"Retry-After": str(max(1, math.ceil(taken.retry_after_s))), **headers(verdict)},
            )
        return verdict

    def status(self) -> dict:
        """For /health: whether calls are being let through unchecked (Redis out of reach)."""
        if not self.enabled:
            return {"status": "disabled"}
        return {"status": "fail_open" if self._failing_open else "ok"}


def headers(verdict: Verdict) -> dict[str, str]:
    """The RateLimit-* response headers (IETF draft: limit, remaining, seconds to reset)."""
    return {
        "RateLimit-Limit": str(verdict.limit),
        "RateLimit-Remaining": str(verdict.remaining),
        "RateLimit-Reset": str(math.ceil(verdict.reset_s)),
    }
