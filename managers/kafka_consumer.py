"""BroadcastConsumer: this instance's own reader of every partition, feeding the WebSocketHub.

It joins no consumer group: each service instance assigns itself all partitions
of the topic, starting at the latest offset, so every instance sees every event
and can reach its own WebSocket clients. ``start()`` returns at once; the
consumer connects in the background, retrying while Kafka is down (a client
that reconnects with ``last_event_id`` replays what it missed meanwhile).

The helpers below (lag, status, stop) serve the analytics consumer too.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from managers import metrics
from managers.base import Manager, reconnect
from managers.websocket_hub import WebSocketHub

log = logging.getLogger("singleton.kafka")
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


def consumer_status(task: asyncio.Task | None, lag: int, connected: bool = True) -> dict:
    """For /health: a consumer whose loop has ended is down (aiokafka#1037: watch them)."""
    running = task is not None and not task.done()
    return {"status": "ok" if running and connected else "down", "lag": lag}


async def stop_consumer(
    task: asyncio.Task | None, consumer: AIOKafkaConsumer | None, timeout_s: float, name: str
) -> None:
    """Cancel a consumer's loop, then stop the consumer, each under a deadline."""
    if task is not None:
        task.cancel()
        await asyncio.wait({task}, timeout=timeout_s)
    if consumer is not None:
        try:
            await asyncio.wait_for(consumer.stop(), timeout_s)
        except Exception as exc:
            log.warning("kafka consumer stop failed", extra={"consumer": name, "error": repr(exc)})


class BroadcastConsumer(Manager):
    def __init__(self, cfg: dict, reconnect_cfg: dict):
        self.cfg = cfg
        self.reconnect_cfg = reconnect_cfg
        self.topic: str = cfg["topic"]
        self.timeout_s: float = cfg["request_timeout_s"]
        self.consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None
        self._failing = False
        self.lag = 0

    @classmethod
    def start(cls, config: dict) -> BroadcastConsumer:
        inst = cls._install(cls(config["kafka"], config["reconnect"]))
        inst._task = asyncio.create_task(inst._run(), name="kafka-broadcast-consumer")
        return inst

    async def _open(self) -> AIOKafkaConsumer:
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
            # Resolve the end offsets now, so nothing produced after this is missed.
            for tp in consumer.assignment():
                await asyncio.wait_for(consumer.position(tp), self.timeout_s)
        except BaseException:
            await asyncio.wait_for(consumer.stop(), self.timeout_s)
            raise
        return consumer

    @staticmethod
    async def _assigned(consumer: AIOKafkaConsumer) -> None:
        while not consumer.assignment():  # noqa: ASYNC110 (aiokafka offers no event for this)
            await asyncio.sleep(0.05)

    def connected(self) -> bool:
        """Reading (partitions assigned, positions known)."""
        return self.consumer is not None

    def status(self) -> dict:
        return consumer_status(self._task, self.lag, self.connected() and not self._failing)

    async def _run(self) -> None:
        self.consumer = await reconnect("kafka", self._open, **self.reconnect_cfg)
        while True:
            try:
                batches = await self.consumer.getmany(timeout_ms=500, max_records=500)
                for records in batches.values():
                    for record in records:
                        await self._dispatch(record.value)
                        await asyncio.sleep(0)  # a large fan-out batch must not starve HTTP requests
                self.lag = await record_lag(self.consumer, NAME)
                if self._failing:
                    log.info("kafka fetch works again", extra={"consumer": NAME})
                    self._failing = False
            except KafkaError as exc:
                metrics.CONSUMER_ERRORS.labels(NAME).inc()
                if not self._failing:  # one line per outage, not one per retry
                    log.warning("kafka fetch failed; retrying", extra={"consumer": NAME, "error": repr(exc)})
                self._failing = True
                await asyncio.sleep(1)

    async def _dispatch(self, raw: bytes) -> None:
        try:
            event = json.loads(raw)
            event_type = str(event["type"])
            str(event["event_id"])
        except (ValueError, KeyError, TypeError, RecursionError):
            metrics.CONSUMER_ERRORS.labels(NAME).inc()
            log.warning("skipping malformed event", extra={"consumer": NAME, "size": len(raw or b"")})
            return
        metrics.EVENTS_CONSUMED.labels(NAME, metrics.event_label(event_type)).inc()
        try:
            await WebSocketHub.instance().broadcast(event, raw)
        except Exception:
            metrics.CONSUMER_ERRORS.labels(NAME).inc()
            log.exception("broadcast failed", extra={"consumer": NAME, "type": event_type})

    async def release(self) -> None:
        await stop_consumer(self._task, self.consumer, self.timeout_s, NAME)
