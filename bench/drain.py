"""After a write run: how long until every outbox event was on Kafka, and until the
analytics consumer group had committed them all (its lag, read from Kafka: committed
offsets against the topic's end), the same way for one process or several."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.env import ANALYTICS_GROUP, KAFKA_TOPIC, config, mysql_query

POLL_S = 0.05


async def measure(ended_at: float, timeout_s: float) -> dict:
    """Seconds from ``ended_at`` (the run's end, epoch) until no outbox row was left unpublished
    (``outbox_drained_s``) and until the analytics lag was 0 (``analytics_caught_up_s``)."""
    bootstrap = config()["kafka"]["bootstrap_servers"]
    admin, ends = AIOKafkaAdminClient(bootstrap_servers=bootstrap), AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await admin.start()
    await ends.start()
    out: dict = {}
    deadline = time.monotonic() + timeout_s
    try:
        await ends.topics()  # metadata, for the partitions
        tps = [TopicPartition(KAFKA_TOPIC, p) for p in sorted(ends.partitions_for_topic(KAFKA_TOPIC) or ())]
        while time.monotonic() < deadline:
            # every physical shard's outbox (one connection each time: a poll every 50 ms)
            pending = sum(n for (n,) in mysql_query("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL"))
            committed = await admin.list_consumer_group_offsets(ANALYTICS_GROUP)
            end = await ends.end_offsets(tps)
            lag = sum(n - (committed[tp].offset if tp in committed else 0) for tp, n in end.items())
            if pending == 0:
                out.setdefault("outbox_drained_s", round(time.time() - ended_at, 2))
            if pending == 0 and lag == 0:
                out["analytics_caught_up_s"] = round(time.time() - ended_at, 2)
                break
            await asyncio.sleep(POLL_S)
    finally:
        await ends.stop()
        await admin.close()
    return out
