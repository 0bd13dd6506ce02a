"""The managers are class-level singletons that every handler shares."""

from __future__ import annotations

import asyncio
import json

import pytest

from managers.base import Manager, NotStarted
from managers.config import ConfigManager
from managers.kafka_consumer import BroadcastConsumer
from managers.kafka_producer import KafkaProducerManager
from managers.mongodb import MongoManager
from managers.mysql import MySQLManager
from managers.redis import RedisManager


@pytest.mark.gen_test
async def test_handlers_see_the_same_manager_instances(http_client, base_url):
    seen = []
    for _ in range(3):
        response = await http_client.fetch(f"{base_url}/_test/managers")
        seen.append(json.loads(response.body))
    assert seen[0] == seen[1] == seen[2]
    assert seen[0] == {
        "ConfigManager": id(ConfigManager.instance()),
        "MySQLManager": id(MySQLManager.instance()),
        "RedisManager": id(RedisManager.instance()),
        "MongoManager": id(MongoManager.instance()),
        "KafkaProducerManager": id(KafkaProducerManager.instance()),
        "BroadcastConsumer": id(BroadcastConsumer.instance()),
    }


@pytest.mark.gen_test
async def test_each_manager_reaches_its_real_server(services):
    assert (await MySQLManager.instance().home.fetchone("SELECT 1 AS one")) == {"one": 1}
    await RedisManager.instance().ping()
    await MongoManager.instance().ping()
    await KafkaProducerManager.instance().ping()


@pytest.mark.gen_test
async def test_manager_lifecycle_instance_start_close():
    class Thing(Manager):
        @classmethod
        def start(cls):
            return cls._install(cls())

    class Other(Thing):  # a manager built on another one still has a slot of its own
        pass

    class Unrelated(Manager):
        pass

    assert not Thing.started()
    with pytest.raises(NotStarted):
        Thing.instance()
    first = Thing.start()
    assert Thing.instance() is first
    with pytest.raises(RuntimeError, match="already started"):
        Thing.start()
    # Each subclass has its own slot: starting Thing started no other manager, neither its
    # base, nor a subclass (which would inherit Thing's slot), nor a sibling.
    for cls in (Manager, Other, Unrelated):
        assert not cls.started(), cls
        with pytest.raises(NotStarted):
            cls.instance()
    second = Other.start()
    assert Other.instance() is second and Thing.instance() is first
    await first.close()
    assert not Thing.started()
    assert Other.instance() is second, "closing one manager leaves another's slot alone"
    await second.close()
    assert not Other.started()


@pytest.mark.gen_test
async def test_a_consumer_whose_loop_ended_reports_down(unit_config):
    async def loop():
        return None

    reader = BroadcastConsumer(unit_config)  # not started: its state is set by hand (pure logic)
    assert reader.status()["status"] == "down"  # no loop at all
    reader._task, reader.consumer, reader.lag = asyncio.ensure_future(loop()), object(), 7
    assert reader.status() == {"status": "ok", "lag": 7}
    await reader._task
    assert reader.status() == {"status": "down", "lag": 7}
