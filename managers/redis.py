"""RedisManager: one ``redis.asyncio`` client with short, explicit timeouts,
the cache-aside operations the domain uses, and the rate limiter's token bucket.

Redis is a cache here: a failed cache read or write is counted and treated as a
miss, never raised, so a slow or absent Redis costs one short timeout, never a
failed request. ``take_tokens`` is the exception: it raises, and the rate limiter
(domain/ratelimit.py) decides what an unreachable Redis means (``redis_down``).
After a failure Redis is bypassed for a moment, so an outage does not charge every
request a timeout. Cached entries carry their version and are only ever replaced
by a newer one (one Lua script), so a slow reader can never put back a version
older than one already committed.

One server (``redis.url``) or a Redis Cluster (``redis.cluster_nodes``), through the same
calls: every key the service uses is a command's only key (a cached resource's hash, a
rate-limit bucket), so every command and every script stays in one hash slot, whichever
node holds it. redis-py retries nothing, on either: its retry after a lost reply would
run the token-bucket script twice (a double debit), and a cluster's failover (its node
timeout, seconds) outlasts any retry a request can afford. Our own code makes a cache read
or write (idempotent) once more when its connection turned out closed, as every pooled
connection to a restarted or failed-over server does once (redis-py's cluster client checks
none before use); a bucket debit never. Otherwise a failed call is retried by the next
call after the bypass; on a cluster that call first reloads the slot map, so the cache and
the limiter are back once a replica has taken over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as ConnectionLost
from redis.exceptions import NoScriptError, RedisClusterException, RedisError
from redis.typing import EncodableT

from managers import metrics, tls
from managers.base import BackingService
from managers.config import Config, RedisConfig
from managers.metrics import CacheLookup, RedisOp

log = logging.getLogger("singleton.redis")
BYPASS_AFTER_ERROR_S = 1.0
_CONNECTION_MODULE = "redis/asyncio/connection.py"  # where redis-py's closed-writer race surfaces

# RedisClusterException is no RedisError: a cluster client raises it when no startup node
# answers, or a slot has no master it knows of.
UNAVAILABLE = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)

# A cached resource: hash fields v (version), o (owning user id), b (the response body).
_PUT_IF_NEWER = """
local cached = tonumber(redis.call('HGET', KEYS[1], 'v'))
if cached and cached >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'o', ARGV[2], 'b', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""

# A token bucket, refilled at ARGV[1] tokens/s up to ARGV[2], on the server's clock.
# Takes up to ARGV[3] whole tokens. Returns how many it took, tokens left, seconds
# until one is free (when it took none), seconds until full.
_TAKE_TOKENS = """
local rate, burst, wanted = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local taken = math.min(wanted, math.floor(tokens))
local wait = 0
if taken < 1 then wait = (1 - tokens) / rate end
tokens = tokens - taken
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {taken, tostring(tokens), tostring(wait), tostring((burst - tokens) / rate)}
"""


def client(cfg: RedisConfig) -> aioredis.Redis | RedisCluster:
    """The client ``cfg`` names: one server at ``url``, or a cluster of ``cluster_nodes``;
    over TLS with ``tls`` (config.load has checked that ``url`` says rediss:// then)."""
    options: dict[str, Any] = {
        **tls.redis_options(cfg["tls"]),
        "socket_connect_timeout": cfg["connect_timeout_s"],
        # Never a silent retry (see the module's docstring): one attempt per call.
        "retry": Retry(NoBackoff(), retries=0),
        "health_check_interval": 30,
        "max_connections": 64,  # per node on a cluster
    }
    if not cfg["cluster_nodes"]:
        # No socket timeout (None, said explicitly: redis-py's default is 5 s): every call already
        # runs under RedisManager's one deadline, and redis-py's own would add a task per write
        # (asyncio.wait_for) and a timer per read.
        options["socket_timeout"] = None
        return aioredis.Redis.from_url(cfg["url"], **options)  # rediss:// makes its connections TLS
    # A cluster keeps redis-py's read and write deadlines: its TimeoutError is what makes the
    # client refresh its slot map after a master dies, which a cancellation would not.
    options["socket_timeout"] = cfg["socket_timeout_s"]
    if tls.enabled(cfg["tls"]):
        options["ssl"] = True
    credentials = parse_url(cfg["url"])  # a cluster has one database (0): only the user and password count
    nodes = [node.rpartition(":") for node in cfg["cluster_nodes"]]
    return RedisCluster(
        startup_nodes=[ClusterNode(host, int(port)) for host, _, port in nodes],
        # Keep every configured node as a place to learn the slot map from: by default a node
        # missing from one CLUSTER SLOTS answer (a dead master, just failed over) is dropped.
        dynamic_startup_nodes=False,
        username=credentials.get("username"),
        password=credentials.get("password"),
        **options,
    )


T = TypeVar("T")


_TRANSPORT_CLOSED = "the handler is closed"  # uvloop's RuntimeError for a write to a closed transport


def _writer_gone(exc: AttributeError | RuntimeError) -> bool:
    """Whether ``exc`` is redis-py's asyncio connection meeting its writer gone mid-command:
    another task closed the connection between its "connected?" check and its write, as a
    failover does (redis/redis-py#3546, #4287). On asyncio's loop the writer is None by then
    (``'NoneType' object has no attribute 'writelines'``, raised in redis-py's connection
    module); on uvloop's, the writer's transport is closed (a RuntimeError, "unable to perform
    operation on <TCPTransport closed=True ...>; the handler is closed", raised under it). The
    connection was lost, no bug of ours; anywhere else either error is one."""
    frames, tb = [], exc.__traceback__
    while tb is not None:
        frames.append(Path(tb.tb_frame.f_code.co_filename))
        tb = tb.tb_next
    if isinstance(exc, RuntimeError):
        return _TRANSPORT_CLOSED in str(exc) and any(f.match(_CONNECTION_MODULE) for f in frames)
    return bool(frames) and frames[-1].match(_CONNECTION_MODULE)


async def _lost_if_writer_gone(call: Awaitable[T]) -> T:
    """``call``, with redis-py's closed-writer race raised as the lost connection it is."""
    try:
        return await call
    except (AttributeError, RuntimeError) as exc:
        if not _writer_gone(exc):
            raise
        raise ConnectionLost(f"connection closed under the command: {exc}") from exc


async def _again_if_dropped(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, made once more if its connection was found closed (the client has replaced
    it by then). Only for what may run twice: never a bucket debit, whose script may have
    run before the reply was lost."""
    try:
        return await _lost_if_writer_gone(call())
    except ConnectionLost:
        return await _lost_if_writer_gone(call())


async def _run(script: AsyncScript, key: str, *args: EncodableT) -> Any:
    """``script`` on its one key. redis-py loads a script the server lacks (NOSCRIPT: a new
    master after a failover, a restarted server) and runs it again; a slot that moved to
    yet another master in between answers NOSCRIPT once more, and the script has not run
    there, so a second try of our own is safe."""
    try:
        return await _lost_if_writer_gone(script(keys=[key], args=args))
    except NoScriptError:
        return await _lost_if_writer_gone(script(keys=[key], args=args))


class Cached(NamedTuple):
    """A resource as the cache keeps it: its response body, version (the ETag) and owner."""

    body: bytes
    version: int
    owner: str


class Bucket(NamedTuple):
    taken: int
    remaining: int
    retry_after_s: float
    reset_s: float


class RedisManager(BackingService):
    dependency = "redis"
    unavailable = UNAVAILABLE
    log_sources = ("redis",)

    def __init__(self, client: aioredis.Redis | RedisCluster, cfg: RedisConfig):
        self.client = client
        self.ttl_s = cfg["cache_ttl_s"]
        self.timeout_s = cfg["socket_timeout_s"] + cfg["connect_timeout_s"]
        self._bypass_until = 0.0
        self._failing = False
        # Scripts are sent by hash; redis-py reloads one the server lost (NOSCRIPT) after a restart.
        self._put_if_newer = client.register_script(_PUT_IF_NEWER)
        self._take_tokens = client.register_script(_TAKE_TOKENS)

    @classmethod
    def start(cls, config: Config) -> RedisManager:
        """Install the manager; the client connects on first use, so Redis may be down now."""
        cfg = config["redis"]
        return cls._install(cls(client(cfg), cfg))

    async def ping(self) -> None:
        """A round trip to the server; on a cluster, to every master (each holds a share
        of the slots, so one that does not answer is a share of the cache gone)."""
        async with asyncio.timeout(self.timeout_s):
            if isinstance(self.client, RedisCluster):
                await self.client.ping(target_nodes=RedisCluster.PRIMARIES)
            else:
                await self.client.ping()
        self._succeeded()

    # -- cache-aside ---------------------------------------------------------------------
    def _failed(self, op: RedisOp, exc: BaseException) -> None:
        metrics.CACHE_ERRORS.labels(op).inc()
        if not self._failing:  # one line per outage; HealthMonitor logs when it ends
            # redis-py 8's repr is only "network:ConnectionError": the text says why (a refused
            # connection, a certificate that does not verify).
            error = f"{type(exc).__name__}: {exc}"
            log.warning("redis unavailable: reading through, rate limits per process", extra={"op": op, "error": error})
        self._failing = True
        self._bypass_until = time.monotonic() + BYPASS_AFTER_ERROR_S

    def _succeeded(self) -> None:
        self._failing = False

    def bypassing(self) -> bool:
        """True for a moment after a failed call: Redis is not tried meanwhile."""
        return time.monotonic() < self._bypass_until

    async def cache_get(self, key: str) -> Cached | None:
        if self.bypassing():
            metrics.CACHE_LOOKUP[CacheLookup.BYPASS].inc()
            return None
        try:
            async with asyncio.timeout(self.timeout_s):
                version, owner, body = await _again_if_dropped(lambda: self.client.hmget(key, ("v", "o", "b")))
        except UNAVAILABLE as exc:
            metrics.CACHE_LOOKUP[CacheLookup.ERROR].inc()
            self._failed(RedisOp.GET, exc)
            return None
        # Absent (None), or not whole, is a miss; replies are bytes (no decode_responses).
        if not isinstance(body, bytes) or not isinstance(version, bytes) or not isinstance(owner, bytes):
            metrics.CACHE_LOOKUP[CacheLookup.MISS].inc()
            return None
        metrics.CACHE_LOOKUP[CacheLookup.HIT].inc()
        return Cached(body, int(version), owner.decode())

    async def cache_put(self, key: str, entry: Cached) -> None:
        """Store ``entry`` unless the cache already holds this version or a newer one.

        Readers and writers both put what they have: a read that loaded version 1
        before a write committed version 2 can no longer overwrite it.
        """
        if self.bypassing():
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                args = (entry.version, entry.owner, entry.body, self.ttl_s)
                await _again_if_dropped(lambda: _run(self._put_if_newer, key, *args))
        except UNAVAILABLE as exc:
            self._failed(RedisOp.SET, exc)

    async def read_through(self, key: str, load: Callable[[], Awaitable[Cached]]) -> Cached:
        """Cache-aside: the cached entry, else ``load()``'s, which is then cached."""
        cached = await self.cache_get(key)
        if cached is not None:
            return cached
        entry = await load()
        await self.cache_put(key, entry)
        return entry

    # -- rate limiting -------------------------------------------------------------------
    async def take_tokens(self, key: str, per_s: float, burst: int, wanted: int = 1) -> Bucket:
        """Take up to ``wanted`` tokens from the bucket ``key`` (created full); raises when
        Redis is out of reach."""
        if self.bypassing():
            raise ConnectionError("redis recently failed; not retried yet")
        try:
            async with asyncio.timeout(self.timeout_s):
                taken, remaining, retry_after, reset = await _run(self._take_tokens, key, per_s, burst, wanted)
        except UNAVAILABLE as exc:
            self._failed(RedisOp.RATE_LIMIT, exc)
            raise
        return Bucket(int(taken), int(float(remaining)), float(retry_after), float(reset))

    async def release(self) -> None:
        await asyncio.wait_for(self.client.aclose(), 5)
