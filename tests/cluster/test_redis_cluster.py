"""The cache and the rate limiter on Redis Cluster (``redis.cluster_nodes``), and a master
SIGKILLed under load: every request answered, its replica promoted, and the cache and the
limiter back on the cluster within 10 s of the promotion, without a restart."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from domain import ratelimit, users
from managers import redis as redis_manager
from managers.redis import Cached, RedisManager
from tests.cluster.faults import (
    admin_key,
    restore,
    running_service,
    sample,
    service_config,
    service_overrides,
    sigkill,
)
from tests.helpers import wait_until

BACK_WITHIN_S = 10  # the issue: cache and limiter back on the cluster this long after the failover
PROMOTION_MARGIN_S = 5  # past the node timeout: failure agreed by the masters, the replica's election
LOAD_WORKERS = 3
LOAD_PAUSE_S = 0.03


def manager(cluster_config, name: str = "redis") -> RedisManager:
    """A RedisManager of the test's own on the cluster (not installed as the singleton)."""
    cfg = service_config(service_overrides(cluster_config, name))["redis"]
    return RedisManager(redis_manager.client(cfg), cfg)


def masters_of(client: RedisCluster, keys: list[str]) -> dict[str, str]:
    """Which master holds each key, by the client's slot map."""
    return {key: client.get_node_from_key(key).name for key in keys}


def spread(prefix: str, client: RedisCluster, per_master: int = 2) -> list[str]:
    """Keys ``prefix<n>`` until every master holds ``per_master`` of them."""
    masters = {node.name for node in client.get_primaries()}
    assert len(masters) == 3, f"the client knows the masters {masters}: initialize() it first"
    chosen: dict[str, list[str]] = {name: [] for name in masters}
    n = 0
    while any(len(keys) < per_master for keys in chosen.values()):
        key = f"{prefix}{uuid.uuid4().hex}-{n}"
        n += 1
        holder = chosen[client.get_node_from_key(key).name]
        if len(holder) < per_master:
            holder.append(key)
    return [key for keys in chosen.values() for key in keys]


@pytest.mark.gen_test(timeout=60)
async def test_cache_and_buckets_on_every_master(cluster_config):
    redis = manager(cluster_config)
    client = redis.client
    assert isinstance(client, RedisCluster)
    try:
        await redis.ping()  # every master answers
        assert len(client.get_primaries()) == 3
        await client.script_flush()  # every master without our scripts: the first calls load them (NOSCRIPT)

        entries = spread(users.cache_key(""), client)
        assert len(set(masters_of(client, entries).values())) == 3
        for n, key in enumerate(entries):
            await redis.cache_put(key, Cached(f"body {n}".encode(), 2, f"owner {n}"))
            await redis.cache_put(key, Cached(b"older", 1, "nobody"))  # never replaces a newer version
        for n, key in enumerate(entries):
            assert await redis.cache_get(key) == Cached(f"body {n}".encode(), 2, f"owner {n}")

        buckets = spread(ratelimit.key_bucket("", "GET"), client)
        assert len(set(masters_of(client, buckets).values())) == 3
        for bucket in buckets:
            first = await redis.take_tokens(bucket, per_s=1, burst=3, wanted=2)
            second = await redis.take_tokens(bucket, per_s=1, burst=3, wanted=2)
            third = await redis.take_tokens(bucket, per_s=1, burst=3, wanted=2)
            assert (first.taken, first.remaining) == (2, 1)
            assert (second.taken, second.remaining) == (1, 0)
            assert third.taken == 0 and 0 < third.retry_after_s <= 1
        assert not redis.bypassing()
    finally:
        await redis.release()


async def drop_connections(nodes: list[tuple[str, int]]) -> None:
    """Every node closes its clients' connections (as a restart does), ours while idle in the pool."""
    for host, port in nodes:
        node = Redis(host=host, port=port, socket_timeout=2, socket_connect_timeout=2)
        try:
            await asyncio.wait_for(node.client_kill_filter(_type="normal", skipme=True), 5)
        finally:
            await node.aclose()


@pytest.mark.gen_test(timeout=60)
async def test_connections_dropped_while_idle_cost_no_cache_miss(cluster_config):
    redis = manager(cluster_config)
    client = redis.client
    assert isinstance(client, RedisCluster)
    try:
        await client.initialize()
        entries = spread(users.cache_key(""), client)
        for key in entries:
            await redis.cache_put(key, Cached(b"body", 1, "owner"))
        await drop_connections(cluster_config.redis_nodes())
        for key in entries:  # the first use of each dropped connection fails, and is made again
            assert await redis.cache_get(key) == Cached(b"body", 1, "owner")
        await drop_connections(cluster_config.redis_nodes())
        for key in entries:
            await redis.cache_put(key, Cached(b"newer", 2, "owner"))
        assert not redis.bypassing()
        assert [await redis.cache_get(key) for key in entries] == [Cached(b"newer", 2, "owner")] * len(entries)
    finally:
        await redis.release()


def unused_address(host: str) -> str:
    """``host:port`` where nothing listens (a port the kernel just gave and took back)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return f"{host}:{s.getsockname()[1]}"


@pytest.mark.gen_test(timeout=60)
async def test_a_cluster_out_of_reach_is_a_cache_miss_and_a_limiter_error(cluster_config):
    host, _ = cluster_config.redis_nodes()[0]
    overrides = service_overrides(cluster_config, "redis")
    overrides["redis"]["cluster_nodes"] = [unused_address(host)]
    cfg = service_config(overrides)["redis"]
    redis = RedisManager(redis_manager.client(cfg), cfg)
    try:
        assert await redis.cache_get("user:nobody") is None
        assert redis.bypassing()
        await redis.cache_put("user:nobody", Cached(b"{}", 1, "nobody"))  # no raise: a cache write that failed
        with pytest.raises(redis_manager.UNAVAILABLE):
            await redis.take_tokens("rl:ip:192.0.2.1", per_s=1, burst=1)
        with pytest.raises(redis_manager.UNAVAILABLE):
            await redis.ping()
    finally:
        await redis.release()


# -- a master SIGKILLed under load ----------------------------------------------------------


async def cluster_nodes(host: str, port: int) -> list[list[str]]:
    """CLUSTER NODES as one node sees it, a list of fields per node."""
    node = Redis(host=host, port=port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)
    try:
        text = await asyncio.wait_for(node.execute_command("CLUSTER", "NODES"), 5)
    finally:
        await node.aclose()
    return [line.split() for line in text.splitlines() if line.strip()]


def serves(fields: list[str], slot: int) -> bool:
    for part in fields[8:]:
        if part.startswith("["):  # a slot being migrated
            continue
        low, _, high = part.partition("-")
        if int(low) <= slot <= int(high or low):
            return True
    return False


async def master_of_slot(survivor: tuple[str, int], slot: int) -> str | None:
    """The address of the master serving ``slot``, as ``survivor`` sees it, unless it is
    flagged failing; None when the survivor does not answer."""
    try:
        nodes = await cluster_nodes(*survivor)
    except (TimeoutError, RedisError, OSError):
        return None
    for fields in nodes:
        if "master" in fields[2] and "fail" not in fields[2] and serves(fields, slot):
            return fields[1].split("@")[0]
    return None


async def replicas_in_sync(nodes: list[tuple[str, int]]) -> bool:
    """Every node answers, and every replica's link to its master is up (it has the data,
    so it may take over)."""
    for host, port in nodes:
        node = Redis(host=host, port=port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)
        try:
            info = await asyncio.wait_for(node.info("replication"), 5)
        except (TimeoutError, RedisError, OSError):
            return False
        finally:
            await node.aclose()
        if info["role"] == "slave" and info.get("master_link_status") != "up":
            return False
    return True


@dataclass
class Load:
    """GET the user (a cache read, a limiter check) from a few workers, every answer kept."""

    service: object
    key: str
    user_id: str
    answers: list[tuple[float, int | str, float]] = field(default_factory=list)  # (started, status, seconds)
    running: bool = True

    async def worker(self, n: int) -> None:
        path = f"/api/v1/users/{self.user_id}"
        i = 0
        while self.running:
            started = time.monotonic()
            if (i + n) % 10 == 0:  # now and then a write: the cache entry is put again (put_if_newer)
                code, _ = await self.service.request("PUT", path, self.key, {"name": f"Renamed {n}-{i}"})
            else:
                code, _ = await self.service.request("GET", path, self.key)
            self.answers.append((started, code, time.monotonic() - started))
            i += 1
            await asyncio.sleep(LOAD_PAUSE_S)


@dataclass
class Counters:
    """The service's cache hits and checks on per-process buckets (Redis out of reach), sampled from its /metrics."""

    service: object
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (when, hits, fail_open)

    async def run(self) -> None:
        while True:
            try:
                text = await self.service.metrics()
            except OSError:
                await asyncio.sleep(0.1)
                continue
            hits = sample(text, "singleton_cache_lookups_total", {"result": "hit"})
            self.samples.append((time.monotonic(), hits, sample(text, "singleton_rate_limit_local_total")))
            await asyncio.sleep(0.1)

    def cache_back(self, after: float) -> float | None:
        """When a cache hit was first counted after ``after``."""
        for (_, hits_before, _), (t, hits, _) in zip(self.samples, self.samples[1:], strict=False):
            if t > after and hits > hits_before:
                return t
        return None

    def limiter_back(self, after: float, steady_s: float = 2.0) -> float | None:
        """The start of the first stretch after ``after``, ``steady_s`` long, in which no
        check went to the per-process buckets (the limiter took its tokens from Redis again)."""
        later = [(t, fail_open) for t, _, fail_open in self.samples if t > after]
        for i, (t, fail_open) in enumerate(later):
            rest = [(u, f) for u, f in later[i:] if u <= t + steady_s]
            if rest[-1][0] >= t + steady_s * 0.9 and all(f == fail_open for _, f in rest):
                return t
        return None


@pytest.mark.gen_test(timeout=300)
async def test_a_master_killed_under_load(cluster_config, tmp_path):
    overrides = service_overrides(cluster_config, "redis_failover")
    key = await admin_key(overrides)
    topology = manager(cluster_config, "redis_failover")
    killed = None
    try:
        async with running_service(overrides, tmp_path / "service.log") as service:
            code, user = await service.request(
                "POST", "/api/v1/users", key, {"email": f"{uuid.uuid4().hex}@example.com", "name": "Cached"}
            )
            assert code == 201, user
            assert isinstance(topology.client, RedisCluster)
            await topology.client.initialize()
            cache_key = users.cache_key(user["id"])
            victim = topology.client.get_node_from_key(cache_key)
            slot = topology.client.keyslot(cache_key)

            # A user key whose read bucket is on the same master as the user's cache entry.
            for _ in range(60):
                code, created = await service.request(
                    "POST", "/api/v1/api-keys", key, {"role": "user", "user_id": user["id"]}
                )
                assert code == 201, created
                if topology.client.get_node_from_key(ratelimit.key_bucket(created["id"], "GET")) == victim:
                    break
            else:
                pytest.fail("no key's bucket on the victim's master in 60 tries")
            user_key = created["key"]

            node_timeout_s = await node_timeout(victim.host, victim.port)
            survivor = next(a for a in cluster_config.redis_nodes() if a != (victim.host, victim.port))
            await wait_until(
                lambda: replicas_in_sync(cluster_config.redis_nodes()),
                timeout=30,
                interval=0.2,
                what="replicas in sync",
            )

            load = Load(service, user_key, user["id"])
            counters = Counters(service)
            tasks = [asyncio.create_task(load.worker(n)) for n in range(LOAD_WORKERS)]
            sampler = asyncio.create_task(counters.run())
            try:
                # Steady first: the entry is cached and hit, the limiter on Redis.
                await wait_until(
                    lambda: counters.cache_back(0) is not None and len(load.answers) > 50,
                    timeout=30,
                    what="cache hits under load",
                )
                killed_at = time.monotonic()
                killed = sigkill(victim.host, victim.port)
                with pytest.raises(redis_manager.UNAVAILABLE):  # a ping is every master's answer
                    await topology.ping()

                async def promoted() -> bool:
                    master = await master_of_slot(survivor, slot)
                    return master is not None and master != victim.name

                await wait_until(
                    promoted, timeout=node_timeout_s + PROMOTION_MARGIN_S + 5, interval=0.1, what="the replica promoted"
                )
                promoted_at = time.monotonic()
                await wait_until(
                    lambda: counters.cache_back(promoted_at) and counters.limiter_back(promoted_at),
                    timeout=BACK_WITHIN_S + 5,
                    interval=0.2,
                    what="cache hits and no per-process limiting after the promotion",
                )

                async def every_master_answers() -> bool:
                    try:
                        await topology.ping()
                    except redis_manager.UNAVAILABLE:
                        return False
                    return True

                await wait_until(every_master_answers, timeout=10, interval=0.2, what="a ping of the new masters")
            finally:
                load.running = False
                await asyncio.gather(*tasks)
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)

            promotion_s = promoted_at - killed_at
            cache_back_s = counters.cache_back(promoted_at) - promoted_at
            limiter_back_s = counters.limiter_back(promoted_at) - promoted_at
            statuses = Counter(code for _, code, _ in load.answers)
            slowest = max(seconds for _, _, seconds in load.answers)
            print(
                f"\nredis failover: node timeout {node_timeout_s:.1f} s, promoted {promotion_s:.1f} s after the kill;"
                f" cache back {cache_back_s:.1f} s, limiter back {limiter_back_s:.1f} s after it;"
                f" {len(load.answers)} requests {dict(statuses)}, slowest {slowest:.2f} s"
            )
            assert set(statuses) == {200}, statuses  # every request served: cache bypass, limiter per process
            assert promotion_s <= node_timeout_s + PROMOTION_MARGIN_S
            assert cache_back_s <= BACK_WITHIN_S and limiter_back_s <= BACK_WITHIN_S
            during = [c for t, c, _ in load.answers if killed_at <= t <= promoted_at]
            assert during, "no request was made while the master was down"
    finally:
        await topology.release()
        if killed is not None:
            await restore("redis-cluster")  # the killed node rejoins as a replica; ready once every replica syncs


async def node_timeout(host: str, port: int) -> float:
    """The node's cluster-node-timeout, in seconds."""
    node = Redis(host=host, port=port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)
    try:
        config = await asyncio.wait_for(node.config_get("cluster-node-timeout"), 5)
    finally:
        await node.aclose()
    return int(config["cluster-node-timeout"]) / 1000
