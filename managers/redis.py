"""RedisManager: one ``redis.asyncio`` client with short, explicit timeouts,
and the cache-aside operations the domain uses.

Redis is a cache here: its failures are counted and treated as misses, never
raised, so a slow or absent Redis costs one short timeout, never a failed
request. After a failure the cache is bypassed for a moment, so an outage does
not charge every request a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from managers import metrics
from managers.base import Manager, with_retries

log = logging.getLogger("singleton.redis")
BYPASS_AFTER_ERROR_S = 1.0

UNAVAILABLE = (RedisError, OSError, asyncio.TimeoutError)


class RedisManager(Manager):
    def __init__(self, client: aioredis.Redis, cfg: dict):
        self.client = client
        self.ttl_s = cfg["cache_ttl_s"]
        self.timeout_s = cfg["socket_timeout_s"] + cfg["connect_timeout_s"]
        self._bypass_until = 0.0

    @classmethod
    async def start(cls, cfg: dict, attempts: int = 1, retry_delay_s: float = 1.0) -> RedisManager:
        client = aioredis.Redis.from_url(
            cfg["url"],
            socket_timeout=cfg["socket_timeout_s"],
            socket_connect_timeout=cfg["connect_timeout_s"],
            # One immediate retry on a dropped connection (a restarted server),
            # never a retry loop that would outlast the request's budget.
            retry=Retry(NoBackoff(), retries=1),
            health_check_interval=30,
            max_connections=64,
        )
        inst = cls(client, cfg)
        try:
            await with_retries("redis", inst.ping, attempts, retry_delay_s)
        except BaseException:
            await client.aclose()
            raise
        cls._install(inst)
        return inst

    async def ping(self) -> None:
        async with asyncio.timeout(self.timeout_s):
            await self.client.ping()

    # -- cache-aside ---------------------------------------------------------------------
    def _failed(self, op: str, exc: BaseException) -> None:
        metrics.CACHE_ERRORS.labels(op).inc()
        if time.monotonic() >= self._bypass_until:
            log.warning("cache unavailable, reading through", extra={"op": op, "error": repr(exc)})
        self._bypass_until = time.monotonic() + BYPASS_AFTER_ERROR_S

    async def cache_get(self, key: str) -> bytes | None:
        if time.monotonic() < self._bypass_until:
            metrics.CACHE_LOOKUPS.labels("bypass").inc()
            return None
        try:
            async with asyncio.timeout(self.timeout_s):
                value = await self.client.get(key)
        except UNAVAILABLE as exc:
            metrics.CACHE_LOOKUPS.labels("error").inc()
            self._failed("get", exc)
            return None
        metrics.CACHE_LOOKUPS.labels("hit" if value is not None else "miss").inc()
        return value

    async def cache_set(self, key: str, value: bytes) -> None:
        if time.monotonic() < self._bypass_until:
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.client.set(key, value, ex=self.ttl_s)
        except UNAVAILABLE as exc:
            self._failed("set", exc)

    async def read_through(self, key: str, load: Callable[[], Awaitable[bytes]]) -> bytes:
        """Cache-aside: the cached bytes, else ``load()``'s, which are then cached."""
        cached = await self.cache_get(key)
        if cached is not None:
            return cached
        value = await load()
        await self.cache_set(key, value)
        return value

    async def cache_delete(self, *keys: str) -> None:
        """Invalidate after a commit. Tried even while bypassing: a stale entry is worse than a timeout."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.client.delete(*keys)
        except UNAVAILABLE as exc:
            self._failed("delete", exc)

    async def close(self) -> None:
        await asyncio.wait_for(self.client.aclose(), 5)
        type(self)._uninstall()
