"""AnalyticsConsumer: the topic, read in one consumer group shared by every instance,
folded into the analytics store (domain/analytics.py), at least once.

A batch's offsets are committed only after the store wrote all of it. A batch that
fails (MongoDB, Kafka, a stale write) is read again from the committed offsets,
and the store counts each event once whatever it sees again: the batch after a
failure, the first after start and the first after a rebalance are applied with
``read=True``, the others without reads. When a rebalance takes partitions away,
the batch in progress is finished and committed first, so a partition never has
two writers.

``lag`` is the group's backlog on every partition of the topic (end offsets minus
the group's committed offsets), read before the first fetch and refreshed every
``LAG_REFRESH_S``: a fresh instance reports what the group still has to read.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError
from pymongo.errors import PyMongoError

from domain import codec, events
from domain.analytics import NAME, AnalyticsStore, Delivery
from managers import metrics
from managers.base import Manager, with_retries
from managers.kafka_consumer import consumer_status, group_lag, stop_consumer
from managers.mongodb import MongoManager

log = logging.getLogger("singleton.analytics")
MAX_BACKOFF_S = 5.0
BATCH = 1000
PER_EVENT_S = 0.02  # a batch's deadline grows with its size
LAG_REFRESH_S = 1.0
KNOWN_TYPES = (*events.DOMAIN_TYPES, events.HEALTH_CHECK)  # metric labels stay bounded


class _Rebalance(ConsumerRebalanceListener):
    """Holds a rebalance until the batch in progress is stored and committed; after it,
    the first batch reads before it writes (it may hold what a member that died wrote)."""

    def __init__(self, owner: AnalyticsConsumer):
        self.owner = owner

    async def on_partitions_revoked(self, revoked) -> None:
        async with self.owner.batch_lock:
            pass

    async def on_partitions_assigned(self, assigned) -> None:
        self.owner.reread = True


class AnalyticsConsumer(Manager):
    def __init__(self, cfg: dict, store: AnalyticsStore):
        self.cfg = cfg
        self.store = store
        self.timeout_s: float = cfg["request_timeout_s"]
        self.consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None
        self.batch_lock = asyncio.Lock()
        self.reread = True  # read before writing: first batch, and a batch seen again
        self.lag: int | None = None  # None until the group's offsets were first read
        self._lag_due = 0.0

    @classmethod
    async def start(cls, cfg: dict, attempts: int = 1, retry_delay_s: float = 1.0) -> AnalyticsConsumer:
        inst = cls(cfg, AnalyticsStore(MongoManager.instance().db))
        await with_retries("kafka", inst._open, attempts, retry_delay_s)
        await inst._refresh_lag()
        inst._task = asyncio.create_task(inst._run(), name="kafka-analytics-consumer")
        cls._install(inst)
        return inst

    async def _open(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.cfg["bootstrap_servers"],
            client_id=f"{self.cfg['client_id']}-analytics",
            group_id=self.cfg["analytics_group"],
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=BATCH,
            request_timeout_ms=int(self.timeout_s * 1000) + 1000,
        )
        try:
            await asyncio.wait_for(consumer.start(), self.timeout_s)
        except BaseException:
            await asyncio.wait_for(consumer.stop(), self.timeout_s)
            raise
        # Subscribing after start() joins the group in the background: a join can wait
        # for a departed member's session to expire, and startup should not.
        consumer.subscribe([self.cfg["topic"]], listener=_Rebalance(self))
        self.consumer = consumer

    async def _refresh_lag(self) -> None:
        """The group's backlog; a failure keeps the last value (and logs) until the next try."""
        assert self.consumer is not None
        self._lag_due = time.monotonic() + LAG_REFRESH_S
        try:
            self.lag = await group_lag(self.consumer, self.cfg["topic"], self.timeout_s)
        except (TimeoutError, KafkaError) as exc:
            log.warning("analytics lag not read", extra={"error": repr(exc)})
            return
        metrics.CONSUMER_LAG.labels(NAME).set(self.lag)

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self._consume_batch()
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except (TimeoutError, PyMongoError, CommitFailedError, KafkaError) as exc:
                metrics.CONSUMER_ERRORS.labels(NAME).inc()
                log.warning("analytics batch not stored; will retry", extra={"error": repr(exc)[:2000]})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _consume_batch(self) -> None:
        assert self.consumer is not None
        consumer = self.consumer
        batches = await consumer.getmany(timeout_ms=500, max_records=BATCH)
        if batches:
            async with self.batch_lock:
                await self._store(consumer, batches)
        if time.monotonic() >= self._lag_due:
            await self._refresh_lag()

    async def _store(self, consumer: AIOKafkaConsumer, batches: dict) -> None:
        deliveries = []
        for record in (r for rs in batches.values() for r in rs):
            try:
                deliveries.append(Delivery(record.partition, record.offset, codec.loads(record.value)))
            except codec.InvalidJSON:
                metrics.CONSUMER_ERRORS.labels(NAME).inc()
        try:
            started = time.perf_counter()
            deadline = self.timeout_s + PER_EVENT_S * len(deliveries)
            await asyncio.wait_for(self.store.apply(deliveries, read=self.reread), deadline)
            elapsed = time.perf_counter() - started
            metrics.ANALYTICS_WRITE_DURATION.observe(elapsed)
            log.debug("analytics batch stored", extra={"events": len(deliveries), "seconds": round(elapsed, 3)})
            await asyncio.wait_for(consumer.commit(), self.timeout_s)
            self.reread = False
        except BaseException:
            # Not committed: read the batch again (aiokafka would otherwise skip it, #1046),
            # and let the store read what it wrote of it.
            self.reread = True
            for tp, records in batches.items():
                consumer.seek(tp, records[0].offset)
            raise
        for d in deliveries:
            event_type = d.event.get("type") if isinstance(d.event, dict) else None
            metrics.EVENTS_CONSUMED.labels(NAME, event_type if event_type in KNOWN_TYPES else "other").inc()

    def status(self) -> dict:
        return consumer_status(self._task, self.lag)

    async def close(self) -> None:
        await stop_consumer(self._task, self.consumer, self.timeout_s, NAME)
        type(self)._uninstall()
