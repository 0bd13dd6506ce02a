"""Which Redis client the configuration builds, and how it is set up: no server needed
(building a client connects to nothing). tests/cluster/ runs the cluster for real."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from managers import config as config_module
from managers import redis as redis_manager
from managers.config import ConfigError

NODES = ["10.0.0.11:6379", "10.0.0.12:6380", "redis-3.internal:6379"]


def redis_cfg(unit_config, **values):
    return {**unit_config["redis"], **values}


def test_no_cluster_nodes_is_one_server(unit_config):
    client = redis_manager.client(redis_cfg(unit_config, cluster_nodes=[]))
    assert isinstance(client, aioredis.Redis)
    kwargs = client.connection_pool.connection_kwargs
    # One deadline per call, RedisManager's (tests/handlers/test_health.py freezes Redis):
    # redis-py's own read and write deadlines are left off.
    assert client.connection_pool.make_connection().socket_timeout is None  # redis-py's default is 5 s
    assert kwargs["socket_connect_timeout"] == unit_config["redis"]["connect_timeout_s"]
    assert kwargs["retry"].get_retries() == 0  # never a silent second run of the bucket script


def test_cluster_nodes_are_every_startup_node(unit_config):
    cfg = redis_cfg(unit_config, cluster_nodes=NODES, url="redis://app:s3cret@ignored:1/15")
    client = redis_manager.client(cfg)
    assert isinstance(client, RedisCluster)
    assert [node.name for node in client.startup_nodes] == NODES
    assert list(client.nodes_manager.startup_nodes) == NODES
    assert client.nodes_manager._dynamic_startup_nodes is False  # a failed-over master stays a startup node
    assert client.retry.get_retries() == 0
    kwargs = client.nodes_manager.connection_kwargs
    assert kwargs["socket_timeout"] == cfg["socket_timeout_s"]
    assert kwargs["socket_connect_timeout"] == cfg["connect_timeout_s"]
    assert (kwargs["username"], kwargs["password"]) == ("app", "s3cret")  # the url's database is not used


@pytest.mark.parametrize("node", ["10.0.0.11", "10.0.0.11:", ":6379", "redis://10.0.0.11:6379", "a b:6379"])
def test_a_cluster_node_is_host_colon_port(node):
    with pytest.raises(ConfigError, match=r"redis\.cluster_nodes\.0: "):
        config_module.load(env={"SINGLETON_REDIS__CLUSTER_NODES": f'["{node}"]'})
