"""KafkaConsumerManager: this instance's own reader of every partition.

It joins no consumer group: each service instance assigns itself all
partitions of the topic, starting at the latest offset, so every instance sees
every event and can reach its own WebSocket clients. Events are dispatched by
``type`` to the callbacks registered with ``subscribe``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from managers import metrics
from managers.base import Manager, with_retries

log = logging.getLogger("singleton.kafka")
# Called with the decoded event and its raw bytes (which can be forwarded as they are).
EventCallback = Callable[[dict, bytes], Awaitable[None]]
NAME = "broadcast"


async def record_lag(consumer: AIOKafkaConsumer, name: str) -> int:
    """Messages between each assigned partition's high-water mark and our position."""
    lag = 0
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if high is not None:
            lag += max(high - await consumer.position(tp), 0)
    metrics.CONSUMER_LAG.labels(name).set(lag)
    return lag


async def group_lag(consumer: AIOKafkaConsumer, topic: str, timeout_s: float) -> int:
    """What the consumer's group has yet to read on every partition of ``topic``: end offsets
    minus the group's committed offsets (the beginning where it committed none). Needs no
    assignment and no fetch, so it is known from the start and counts other members' partitions."""
    async with asyncio.timeout(timeout_s):
        while not (partitions := consumer.partitions_for_topic(topic)):  # noqa: ASYNC110 (no event for metadata)
            await asyncio.sleep(0.05)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        ends = await consumer.end_offsets(tps)
        committed = dict(zip(tps, await asyncio.gather(*(consumer.committed(tp) for tp in tps)), strict=True))
        missing = [tp for tp, offset in committed.items() if offset is None]
        starts = await consumer.beginning_offsets(missing) if missing else {}
    return sum(max(ends[tp] - (starts[tp] if offset is None else offset), 0) for tp, offset in committed.items())


def consumer_status(task: asyncio.Task | None, lag: int | None) -> dict:
    """For /health: a consumer whose loop has ended is down (aiokafka#1037: watch them)."""
    return {"status": "ok" if task is not None and not task.done() else "down", "lag": lag}


async def stop_consumer(
    task: asyncio.Task | None, consumer: AIOKafkaConsumer | None, timeout_s: float, name: str
) -> None:
    """Cancel a consumer's loop, then stop the consumer under a deadline."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    if consumer is not None:
        try:
            await asyncio.wait_for(consumer.stop(), timeout_s)
        except Exception as exc:
            log.warning("kafka consumer stop failed", extra={"consumer": name, "error": repr(exc)})


class KafkaConsumerManager(Manager):
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.topic: str = cfg["topic"]
        self.timeout_s: float = cfg["request_timeout_s"]
        self.consumer: AIOKafkaConsumer | None = None
        self._callbacks: dict[str, list[EventCallback]] = defaultdict(list)
        self._task: asyncio.Task | None = None
        self.lag = 0

    @classmethod
    async def start(cls, cfg: dict, attempts: int = 1, retry_delay_s: float = 1.0) -> KafkaConsumerManager:
        inst = cls(cfg)
        await with_retries("kafka", inst._open, attempts, retry_delay_s)
        inst._task = asyncio.create_task(inst._run(), name="kafka-broadcast-consumer")
        cls._install(inst)
        return inst

    async def _open(self) -> None:
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.cfg["bootstrap_servers"],
            client_id=f"{self.cfg['client_id']}-broadcast",
            group_id=None,  # no group: this instance is assigned every partition
            enable_auto_commit=False,
            auto_offset_reset="latest",
            request_timeout_ms=int(self.timeout_s * 1000) + 1000,
        )
        try:
            await asyncio.wait_for(consumer.start(), self.timeout_s)
            await asyncio.wait_for(self._assigned(consumer), self.timeout_s)
            # Resolve the end offsets now, so nothing produced after start() returns is missed.
            for tp in consumer.assignment():
                await asyncio.wait_for(consumer.position(tp), self.timeout_s)
        except BaseException:
            await asyncio.wait_for(consumer.stop(), self.timeout_s)
            raise
        self.consumer = consumer

    @staticmethod
    async def _assigned(consumer: AIOKafkaConsumer) -> None:
        while not consumer.assignment():  # noqa: ASYNC110 (aiokafka offers no event for this)
            await asyncio.sleep(0.05)

    def subscribe(self, event_type: str, callback: EventCallback) -> None:
        self._callbacks[event_type].append(callback)

    def status(self) -> dict:
        return consumer_status(self._task, self.lag)

    async def _run(self) -> None:
        assert self.consumer is not None
        while True:
            try:
                batches = await self.consumer.getmany(timeout_ms=500, max_records=500)
                for records in batches.values():
                    for record in records:
                        await self._dispatch(record.value)
                        await asyncio.sleep(0)  # a large fan-out batch must not starve HTTP requests
                self.lag = await record_lag(self.consumer, NAME)
            except KafkaError as exc:
                metrics.CONSUMER_ERRORS.labels(NAME).inc()
                log.warning("kafka fetch failed", extra={"consumer": NAME, "error": repr(exc)})
                await asyncio.sleep(1)

    async def _dispatch(self, raw: bytes) -> None:
        try:
            event = json.loads(raw)
            event_type = str(event["type"])
        except (ValueError, KeyError, TypeError):
            metrics.CONSUMER_ERRORS.labels(NAME).inc()
            log.warning("skipping malformed event", extra={"consumer": NAME, "size": len(raw or b"")})
            return
        metrics.EVENTS_CONSUMED.labels(NAME, event_type).inc()
        for callback in self._callbacks.get(event_type, ()):
            try:
                await callback(event, raw)
            except Exception:
                metrics.CONSUMER_ERRORS.labels(NAME).inc()
                log.exception("event callback failed", extra={"consumer": NAME, "type": event_type})

    async def close(self) -> None:
        await stop_consumer(self._task, self.consumer, self.timeout_s, NAME)
        type(self)._uninstall()
