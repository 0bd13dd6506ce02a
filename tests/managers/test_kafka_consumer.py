"""The readers' watch, on the real broker: a reader whose consumer fetches nothing while
messages wait for it (its partitions paused, as aiokafka's fetchers have been seen to stop
after a broker loss) is replaced, and goes on where it left off."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import uuid

import pytest
import tornado.websocket

from domain.analytics_consumer import AnalyticsConsumer
from managers.kafka_consumer import BroadcastConsumer
from tests.helpers import metric, wait_until


def restarts(name: str) -> float:
    return metric("singleton_kafka_consumer_restarts_total", {"consumer": name})


@pytest.mark.gen_test(timeout=90)
async def test_a_broadcast_reader_that_fetches_nothing_is_replaced_and_skips_nothing(api, base_url):
    user = await api.new_user()
    query = urllib.parse.urlencode({"token": await api.ws_token(user["id"]), "client_id": uuid.uuid4().hex[:12]})
    socket = await tornado.websocket.websocket_connect(
        base_url.replace("http://", "ws://") + f"/ws?{query}", connect_timeout=10
    )
    try:
        assert json.loads(await asyncio.wait_for(socket.read_message(), 10))["type"] == "connected"
        reader = BroadcastConsumer.instance()
        stuck, before = reader.consumer, restarts("broadcast")
        assert stuck is not None
        stuck.pause(*stuck.assignment())
        paid = {(await api.new_payment(user["id"]))["id"] for _ in range(3)}

        seen: list[str] = []

        async def all_arrived() -> bool:
            frame = json.loads(await asyncio.wait_for(socket.read_message(), 30))
            if frame["type"] == "payment_created":
                seen.append(frame["data"]["id"])
            return set(seen) >= paid

        await wait_until(all_arrived, timeout=40, interval=0, what="the payments on the socket")
        assert reader.consumer is not stuck and restarts("broadcast") == before + 1
        assert sorted(seen) == sorted(paid)  # each once: the new consumer began where the old one stopped
    finally:
        socket.close()


@pytest.mark.gen_test(timeout=120)
async def test_an_analytics_reader_that_fetches_nothing_is_replaced(api):
    reader = AnalyticsConsumer.instance()
    await wait_until(lambda: reader.consumer is not None and reader.consumer.assignment(), timeout=30)
    stuck, before = reader.consumer, restarts("analytics")
    assert stuck is not None
    stuck.pause(*stuck.assignment())
    user = await api.new_user()
    await api.new_payment(user["id"], amount="12.34")

    async def counted() -> bool:
        # A rebalance (a group member of an earlier test leaving) hands the stuck consumer its
        # partitions back unpaused: keep it stuck, so only its replacement can count.
        if reader.consumer is stuck and set(stuck.assignment()) - stuck.paused():
            stuck.pause(*stuck.assignment())
        code, stats, _ = await api.get(f"/api/v1/analytics/users/{user['id']}")
        return code == 200 and stats["payment_count"] == 1

    await wait_until(counted, timeout=60, interval=0.25, what="the payment counted")
    assert reader.consumer is not stuck and restarts("analytics") == before + 1
