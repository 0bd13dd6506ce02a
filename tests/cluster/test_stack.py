"""The cluster stack is the shape config.cluster.yaml describes: each check against the real
servers, over real connections, with a deadline on every call."""

from __future__ import annotations

import asyncio
import uuid

import aiomysql
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError
from pymongo import AsyncMongoClient
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from tests.helpers import wait_until

TOPIC = "singleton-events"
PARTITIONS = 12
REPLICATION = 3
MIN_INSYNC = "2"
SLOTS = 16384
DEADLINE_S = 10


async def shard_identity(cluster_config, address: tuple[str, int]) -> tuple[int, str]:
    """(@@server_id, @@datadir) of one shard, as the migration user on its database; that user
    may also create a test database there (the grants devstack gives). The service's user logs
    in too, and holds the role it takes its privileges from."""
    service_user = await asyncio.wait_for(
        aiomysql.connect(
            host=address[0],
            port=address[1],
            user=cluster_config.setting("mysql", "user"),
            password=cluster_config.file("mysql", "password_file").read_text().strip(),
            connect_timeout=DEADLINE_S,
        ),
        DEADLINE_S,
    )
    try:
        async with service_user.cursor() as cur:
            await asyncio.wait_for(cur.execute("SELECT CURRENT_ROLE()"), DEADLINE_S)
            assert await cur.fetchone() == ("singleton_app",)
    finally:
        service_user.close()
    conn = await asyncio.wait_for(
        aiomysql.connect(
            host=address[0],
            port=address[1],
            user=cluster_config.setting("mysql", "migrate_user"),
            password=cluster_config.file("mysql", "migrate_password_file").read_text().strip(),
            db=cluster_config.setting("mysql", "database"),
            connect_timeout=DEADLINE_S,
        ),
        DEADLINE_S,
    )
    try:
        async with conn.cursor() as cur:
            await asyncio.wait_for(cur.execute("SELECT @@server_id, @@datadir"), DEADLINE_S)
            server_id, datadir = await cur.fetchone()
            scratch = f"singleton_test_cluster_{uuid.uuid4().hex[:8]}"
            await asyncio.wait_for(cur.execute(f"CREATE DATABASE `{scratch}`"), DEADLINE_S)
            await asyncio.wait_for(cur.execute(f"DROP DATABASE `{scratch}`"), DEADLINE_S)
        return server_id, datadir
    finally:
        conn.close()


@pytest.mark.gen_test(timeout=60)
async def test_both_shards_answer_and_are_servers_of_their_own(cluster_config):
    shards = cluster_config.shards()
    assert sorted(shards) == ["a", "b"]
    assert cluster_config["shards"]["global"] in shards
    identities = await asyncio.gather(*(shard_identity(cluster_config, address) for address in shards.values()))
    (id_a, datadir_a), (id_b, datadir_b) = identities
    assert datadir_a != datadir_b, identities
    assert id_a != id_b, identities


def slot_range(ranges: list[str]) -> range:
    """CLUSTER NODES' ``lo-hi`` (or a single slot), as redis-py splits it."""
    return range(int(ranges[0]), int(ranges[-1]) + 1)


def redis_node(host: str, port: int) -> Redis:
    return Redis(host=host, port=port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)


@pytest.mark.gen_test(timeout=60)
async def test_redis_cluster_has_three_masters_each_with_a_replica_over_every_slot(cluster_config):
    configured = cluster_config.redis_nodes()
    assert len(configured) == 6
    for host, port in configured:
        node = redis_node(host, port)
        try:
            info = await asyncio.wait_for(node.execute_command("CLUSTER INFO"), DEADLINE_S)
        finally:
            await node.aclose()
        assert info["cluster_state"] == "ok", (host, port, info)
        assert int(info["cluster_slots_ok"]) == SLOTS, (host, port, info)
        assert int(info["cluster_known_nodes"]) == len(configured), (host, port, info)

    node = redis_node(*configured[0])
    try:
        nodes = await asyncio.wait_for(node.execute_command("CLUSTER NODES"), DEADLINE_S)
    finally:
        await node.aclose()
    assert sorted(nodes) == sorted(f"{h}:{p}" for h, p in configured), "the cluster's nodes are the configured ones"
    masters = {n["node_id"]: n for n in nodes.values() if "master" in n["flags"]}
    replicas = [n for n in nodes.values() if "slave" in n["flags"]]
    assert len(masters) == 3 and len(replicas) == 3, nodes
    assert sorted(r["master_id"] for r in replicas) == sorted(masters), "each master has exactly one replica"
    covered = sorted(slot for m in masters.values() for ranges in m["slots"] for slot in slot_range(ranges))
    assert covered == list(range(SLOTS)), "every slot is served, by one master"

    # Every replica's link to its master is up: it holds its master's data.
    for host, port in configured:
        node = redis_node(host, port)
        try:
            replication = await asyncio.wait_for(node.info("replication"), DEADLINE_S)
        finally:
            await node.aclose()
        if replication["role"] == "slave":
            assert replication["master_link_status"] == "up", (host, port, replication)

    # And a cluster client reaches every master: one key in each master's slots, written and
    # read back, the write acknowledged by that master's replica (WAIT, on the write's connection).
    client = RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in configured],
        socket_timeout=2,
        socket_connect_timeout=2,
        decode_responses=True,
    )
    try:
        await asyncio.wait_for(client.initialize(), DEADLINE_S)
        keys = {}
        for i in range(1000):
            key = f"{{cluster-stack-smoke-{i}}}"
            owner = client.get_node_from_key(key)
            keys.setdefault(owner.name, key)
            if len(keys) == len(masters):
                break
        assert len(keys) == len(masters), keys
        for name, key in keys.items():
            await asyncio.wait_for(client.set(key, "ok", ex=60), DEADLINE_S)
            assert await asyncio.wait_for(client.get(key), DEADLINE_S) == "ok"
            host, port = name.rsplit(":", 1)
            master = redis_node(host, int(port))
            try:
                async with master.pipeline(transaction=False) as pipe:
                    pipe.set(key, "acked", ex=60)
                    pipe.execute_command("WAIT", 1, 5000)
                    _, acked = await asyncio.wait_for(pipe.execute(), DEADLINE_S)
            finally:
                await master.aclose()
            assert acked == 1, f"{name}: no replica acknowledged the write"
            await asyncio.wait_for(client.delete(key), DEADLINE_S)
    finally:
        await asyncio.wait_for(client.aclose(), DEADLINE_S)


async def kafka_admin(cluster_config) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=[f"{h}:{p}" for h, p in cluster_config.kafka_brokers()], request_timeout_ms=5000
    )
    await asyncio.wait_for(admin.start(), DEADLINE_S)
    return admin


def replicated_on_all(topic: dict, brokers: set[int]) -> bool:
    return bool(topic["partitions"]) and all(
        set(p["replicas"]) == brokers and set(p["isr"]) == brokers for p in topic["partitions"]
    )


@pytest.mark.gen_test(timeout=60)
async def test_kafka_topic_has_12_partitions_on_three_brokers_in_sync_and_min_insync_2(cluster_config):
    admin = await kafka_admin(cluster_config)
    try:
        cluster = await asyncio.wait_for(admin.describe_cluster(), DEADLINE_S)
        brokers = {b["node_id"] for b in cluster["brokers"]}
        assert len(brokers) == REPLICATION, cluster
        assert {(b["host"], b["port"]) for b in cluster["brokers"]} == set(cluster_config.kafka_brokers())

        (topic,) = await asyncio.wait_for(admin.describe_topics([TOPIC]), DEADLINE_S)
        assert topic["error_code"] == 0, topic
        assert len(topic["partitions"]) == PARTITIONS
        assert replicated_on_all(topic, brokers), topic["partitions"]

        (response,) = await asyncio.wait_for(
            admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, TOPIC)]), DEADLINE_S
        )
        (resource,) = response.to_object()["resources"]
        configs = {entry["config_names"]: entry["config_value"] for entry in resource["config_entries"]}
        assert configs["min.insync.replicas"] == MIN_INSYNC
    finally:
        await asyncio.wait_for(admin.close(), DEADLINE_S)


@pytest.mark.gen_test(timeout=90)
async def test_kafka_consumer_offsets_are_replicated_on_three_brokers(cluster_config):
    """A group's coordinator lookup makes Kafka create __consumer_offsets (at its first use),
    with offsets.topic.replication.factor: each of its partitions on all three brokers."""
    admin = await kafka_admin(cluster_config)
    try:
        cluster = await asyncio.wait_for(admin.describe_cluster(), DEADLINE_S)
        brokers = {b["node_id"] for b in cluster["brokers"]}

        async def coordinator() -> bool:
            try:
                found = await asyncio.wait_for(admin.find_coordinator("singleton-cluster-stack-smoke"), DEADLINE_S)
            except (KafkaError, TimeoutError):  # no coordinator yet while the topic is created
                return False
            return found in brokers

        await wait_until(coordinator, timeout=60, interval=0.5, what="a group coordinator")

        async def offsets() -> dict:
            (topic,) = await asyncio.wait_for(admin.describe_topics(["__consumer_offsets"]), DEADLINE_S)
            return topic

        topic = await offsets()
        assert topic["error_code"] == 0, topic
        assert topic["partitions"] and all(len(p["replicas"]) == REPLICATION for p in topic["partitions"]), topic

        async def in_sync() -> bool:
            return replicated_on_all(await offsets(), brokers)

        await wait_until(in_sync, timeout=30, interval=0.5, what="every replica of __consumer_offsets in sync")
    finally:
        await asyncio.wait_for(admin.close(), DEADLINE_S)


@pytest.mark.gen_test(timeout=60)
async def test_ferretdb_answers_ping(cluster_config):
    host, port = cluster_config.mongodb()
    client: AsyncMongoClient = AsyncMongoClient(
        host=host, port=port, serverSelectionTimeoutMS=5000, connectTimeoutMS=5000, socketTimeoutMS=5000
    )
    try:
        reply = await asyncio.wait_for(client.admin.command("ping"), DEADLINE_S)
        assert reply["ok"] == 1.0
    finally:
        await asyncio.wait_for(client.close(), DEADLINE_S)
