"""The topic's two kinds of reader.

``BroadcastConsumer``: this instance's own reader of every partition, feeding the
WebSocketHub. It joins no consumer group: each service instance assigns itself
all partitions of the topic, starting at the latest offset, so every instance
sees every event and can reach its own WebSocket clients.

``GroupConsumer``: a reader in a consumer group shared by every instance (each
partition has one reader at a time), at least once: a batch's offsets are
committed only after ``handle`` stored it; a batch that fails is read again from
the committed offsets, flagged ``redelivered`` (so is the first batch after start
or a rebalance), and a rebalance waits for the batch in hand to be stored and
committed. Its ``lag`` is the group's backlog on every partition (end offsets
minus committed offsets), known before the first fetch. The domain subclasses it
with what a batch means (domain/analytics_consumer.py).

Both return from ``start()`` at once and connect in the background, retrying
while Kafka is down; both log an outage once, not once per retry. Both are watched: a
reader that fetched nothing for ``stall_restart_s`` while messages wait for it (the
topic's end past what it has read, asked of the brokers, not of the reader's own
fetcher) is stopped and connected anew, where it left off; aiokafka's consumers have been
seen to stop fetching silently after a broker loss or a rebalance (aiokafka#1037, #1154,
#1187). While the end cannot be asked (a partition's leader out of reach) nothing is
judged. Any failure that
is not an outage (of Kafka, or of a group consumer's store) is a bug: logged with
its traceback, counted in ``singleton_background_errors_total``, and retried with
backoff (managers/background.py); the loop never ends on one.

A reader is declared once, by its class's ``name``: that names its metric series
(created with the class), its log lines, its task and its place in ``/health``
(``consumers.<name>``); service/lifecycle.py's ``ROLES`` says which processes run it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from typing import Any, ClassVar, NamedTuple

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition

from managers import metrics, tls
from managers.background import Backoff, Failures, reconnect
from managers.base import BackingService, Manager
from managers.config import Config
from managers.kafka_producer import KafkaProducerManager
from managers.websocket_hub import WebSocketHub

log = logging.getLogger("singleton.kafka")
# The broadcast reader hands events to the hub for this long before it lets the loop run
# other work. Yielding after every event (as before) cost each event a whole turn of a
# busy loop: at 400 payments/s a batch of 60 waited 60 turns, p99 300 ms (docs/PROFILING.md).
DISPATCH_SLICE_S = 0.005


async def record_lag(consumer: AIOKafkaConsumer, name: str) -> int:
    """Messages between each assigned partition's high-water mark and our position."""
    lag = 0
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if high is not None:
            lag += max(high - await consumer.position(tp), 0)
    metrics.CONSUMER_LAG.labels(name).set(lag)
    return lag


async def group_lag(
    consumer: AIOKafkaConsumer, topic: str, timeout_s: float, only: Iterable[TopicPartition] | None = None
) -> int:
    """What the consumer's group has yet to read on every partition of ``topic`` (or those in
    ``only``): end offsets minus the group's committed offsets (the beginning where it
    committed none). Needs no assignment and no fetch, so it is known from the start and
    counts other members' partitions."""
    async with asyncio.timeout(timeout_s):
        while not (partitions := consumer.partitions_for_topic(topic)):  # noqa: ASYNC110 (no event for metadata)
            await asyncio.sleep(0.05)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)] if only is None else sorted(only)
        ends = await consumer.end_offsets(tps)
        committed = dict(zip(tps, await asyncio.gather(*(consumer.committed(tp) for tp in tps)), strict=True))
        missing = [tp for tp, offset in committed.items() if offset is None]
        starts = await consumer.beginning_offsets(missing) if missing else {}
    return sum(max(ends[tp] - (starts[tp] if offset is None else offset), 0) for tp, offset in committed.items())


class TopicReader(Manager):
    """What both readers share: their loop in the background, connecting with retries,
    its state for /health, and one log line per outage of their fetches."""

    name: ClassVar[str]  # metric label, log field, task name, /health's consumers.<name>
    failing_message = "kafka consumer failing; retrying"  # logged once an outage
    recovered_message = "kafka consumer works again"
    stores: ClassVar[tuple[type[BackingService], ...]] = ()  # where a subclass writes what it reads
    # Fetched nothing this long while messages wait for it: stopped and connected anew.
    stall_restart_s: ClassVar[float] = 5.0
    watch_every_s: ClassVar[float] = 1.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:  # a reader, not a shared base: its series exist from the start
            cls.health_path = f"consumers.{cls.name}"
            metrics.CONSUMER_LAG.labels(cls.name)
            metrics.CONSUMER_ERRORS.labels(cls.name)
            metrics.CONSUMER_RESTARTS.labels(cls.name)

    def __init__(self, config: Config):
        self.cfg = config["kafka"]
        self.reconnect_cfg = config["reconnect"]
        self.timeout_s: float = self.cfg["request_timeout_s"]
        self.tls_options = tls.kafka_options(self.cfg["tls"])  # SSL and its context, or nothing
        self.consumer: AIOKafkaConsumer | None = None
        self.lag: int | None = None  # None until first known
        self._stopping = False
        self.failures = Failures(
            f"kafka_{self.name}_consumer",
            self.is_outage,
            logger=log,
            outage=self.failing_message,
            recovered=self.recovered_message,
            fields={"consumer": self.name},
        )
        self._progress_at = time.monotonic()  # when it last fetched something, or was found caught up
        self._stuck_since: float | None = None  # since when it has been found behind and not fetching
        self._watch_due = 0.0
        self._old_consumers: set[asyncio.Task[None]] = set()  # replaced consumers still stopping

    @classmethod
    def start(cls, config: Config) -> TopicReader:
        inst = cls._install(cls(config))
        inst._run_in_background(inst._run(), f"kafka-{cls.name}-consumer")
        return inst

    def _dependencies(self) -> tuple[type[BackingService], ...]:
        return (KafkaProducerManager, *self.stores)

    def is_outage(self, exc: BaseException) -> bool:
        """Kafka, or one of the reader's stores, unavailable: anything else is a bug."""
        return any(service.is_unavailable(exc) for service in self._dependencies())

    async def _connect(self) -> None:
        raise NotImplementedError

    async def _next_batch(self) -> None:
        raise NotImplementedError

    async def _waiting(self) -> int:
        """How many messages wait for this reader, from the brokers' end offsets (not from its
        fetcher, which may be the part that is stuck); raises when they cannot be asked."""
        raise NotImplementedError

    async def _connect_with_retries(self) -> None:
        task, needs = f"kafka_{self.name}_connect", "/".join(s.dependency for s in self._dependencies())
        await reconnect(task, self._connect, self.is_outage, **self.reconnect_cfg, dependency=needs)

    async def _run(self) -> None:
        """Connect, then read batch after batch; a failure backs off and tries again. Between
        batches, the watch (``_watch``)."""
        await self._connect_with_retries()
        self._progressed()
        backoff = Backoff(self.reconnect_cfg["initial_delay_s"], self.reconnect_cfg["max_delay_s"])
        while True:
            try:
                await self._next_batch()
                await self._watch()
            except Exception as exc:
                if self._stopping:  # the consumer stopped under a batch that outlived release's wait
                    return
                metrics.CONSUMER_ERRORS.labels(self.name).inc()
                self.failures.failed(exc)
                await backoff.sleep()
                continue
            backoff.reset()
            self.failures.succeeded()

    def _progressed(self) -> None:
        """The reader fetched messages (whatever became of them after)."""
        self._progress_at = time.monotonic()
        self._stuck_since = None

    async def _watch(self) -> None:
        """Once a second while the reader fetches nothing: are messages waiting for it? Found
        so for ``stall_restart_s``, the reader is replaced (``_restart``)."""
        now = time.monotonic()
        if now - self._progress_at < self.watch_every_s or now < self._watch_due:
            return
        self._watch_due = now + self.watch_every_s
        try:
            waiting = await asyncio.wait_for(self._waiting(), self.timeout_s)
        except Exception as exc:
            if not self.is_outage(exc):
                raise
            return  # not known now (a leader or the coordinator out of reach): nothing judged
        if waiting == 0:  # caught up: idle, not stuck
            self._progress_at, self._stuck_since = now, None
            return
        if self._stuck_since is None:
            self._stuck_since = now
        if now - self._stuck_since < self._stall_limit_s():
            return
        log.warning(
            "kafka reader fetches nothing while messages wait: replacing its consumer",
            extra={"consumer": self.name, "waiting": waiting, "idle_s": round(now - self._progress_at, 1)},
        )
        metrics.CONSUMER_RESTARTS.labels(self.name).inc()
        await self._restart()

    def _stall_limit_s(self) -> float:
        return self.stall_restart_s

    async def _restart(self) -> None:
        """A new consumer in place of the stuck one (which stops in the background), connected
        with retries like the first; a subclass says where the new one starts reading."""
        old, self.consumer = self.consumer, None
        if old is not None:
            self._stop_in_background(old)
        await self._connect_with_retries()
        self._progressed()

    def _stop_in_background(self, consumer: AIOKafkaConsumer) -> None:
        """Stop ``consumer`` without waiting for it: a stuck consumer may take its whole
        deadline to stop, and a cancelled ``stop()`` leaves aiokafka's tasks pending."""

        async def stop() -> None:
            try:
                await asyncio.wait_for(consumer.stop(), self.timeout_s)
            except Exception as exc:
                log.warning("kafka consumer stop failed", extra={"consumer": self.name, "error": repr(exc)})

        task = asyncio.create_task(stop(), name=f"kafka-{self.name}-consumer-stop")
        self._old_consumers.add(task)
        task.add_done_callback(self._old_consumers.discard)

    def status(self) -> dict[str, Any]:
        """For /health: a reader whose loop has ended is down (aiokafka#1037: watch them);
        one failing on a bug says ``error``, not ``down``."""
        running = self._task is not None and not self._task.done()
        ok = running and self.consumer is not None and not self.failures.failing
        state = "ok" if ok else "error" if self.failures.kind == "bug" else "down"
        return {"status": state, "lag": self.lag}

    async def release(self) -> None:
        self._stopping = True
        await self._stop_background(self.timeout_s)
        if self.consumer is not None:
            try:
                await asyncio.wait_for(self.consumer.stop(), self.timeout_s)
            except Exception as exc:
                log.warning("kafka consumer stop failed", extra={"consumer": self.name, "error": repr(exc)})
        if self._old_consumers:
            await asyncio.wait(self._old_consumers, timeout=self.timeout_s)


class BroadcastConsumer(TopicReader):
    name = "broadcast"

    def __init__(self, config: Config):
        super().__init__(config)
        # Per partition, the offset after the last record dispatched: where a replacement
        # consumer resumes, so no event is skipped (the hub drops one dispatched twice).
        self.next_offsets: dict[TopicPartition, int] = {}
        self._delay = metrics.CONSUMER_DELAY.labels(self.name)

    async def _connect(self) -> None:
        self.consumer = await self._open()

    async def _open(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            self.cfg["topic"],
            bootstrap_servers=self.cfg["bootstrap_servers"],
            client_id=f"{self.cfg['client_id']}-broadcast",
            group_id=None,  # no group: this instance is assigned every partition
            enable_auto_commit=False,
            auto_offset_reset="latest",
            request_timeout_ms=int(self.timeout_s * 1000) + 1000,
            **self.tls_options,
        )
        try:
            await asyncio.wait_for(consumer.start(), self.timeout_s)
            await asyncio.wait_for(self._assigned(consumer), self.timeout_s)
            for tp in consumer.assignment():
                if tp in self.next_offsets:  # a replacement: on from where the last one was
                    consumer.seek(tp, self.next_offsets[tp])
                else:  # the first: from the end, resolved now so nothing produced after this is missed
                    self.next_offsets[tp] = await asyncio.wait_for(consumer.position(tp), self.timeout_s)
        except BaseException:
            await asyncio.wait_for(consumer.stop(), self.timeout_s)
            raise
        return consumer

    @staticmethod
    async def _assigned(consumer: AIOKafkaConsumer) -> None:
        while not consumer.assignment():  # noqa: ASYNC110 (aiokafka offers no event for this)
            await asyncio.sleep(0.05)

    async def _next_batch(self) -> None:
        await self.read_batch()

    async def read_batch(self) -> int:
        """Fetch what is there (waiting up to half a second) and dispatch it; how many records."""
        assert self.consumer is not None
        batches = await self.consumer.getmany(timeout_ms=500, max_records=500)
        yield_at = time.monotonic() + DISPATCH_SLICE_S
        for tp, records in batches.items():
            for record in records:
                await self._dispatch(record.value or b"")  # a null value is malformed too
                self._delay.observe(max(time.time() - record.timestamp / 1000, 0.0))  # since the relay's send
                self.next_offsets[tp] = record.offset + 1
                if time.monotonic() >= yield_at:  # a large fan-out batch must not starve HTTP requests
                    await asyncio.sleep(0)
                    yield_at = time.monotonic() + DISPATCH_SLICE_S
        if batches:
            self._progressed()
        self.lag = await record_lag(self.consumer, self.name)
        return sum(len(records) for records in batches.values())

    async def _waiting(self) -> int:
        assert self.consumer is not None
        tps = sorted(self.next_offsets)
        ends = await self.consumer.end_offsets(tps)
        return sum(max(ends[tp] - self.next_offsets[tp], 0) for tp in tps)

    async def _dispatch(self, raw: bytes) -> None:
        try:
            event = json.loads(raw)
            event_type = str(event["type"])
            str(event["event_id"])
        except (ValueError, KeyError, TypeError, RecursionError):
            metrics.CONSUMER_ERRORS.labels(self.name).inc()
            log.warning("skipping malformed event", extra={"consumer": self.name, "size": len(raw or b"")})
            return
        metrics.EVENTS_CONSUMED.labels(self.name, metrics.event_label(event_type)).inc()
        try:
            await WebSocketHub.instance().broadcast(event, raw)
        except Exception:
            metrics.CONSUMER_ERRORS.labels(self.name).inc()
            log.exception("broadcast failed", extra={"consumer": self.name, "type": event_type})


class Record(NamedTuple):
    """One Kafka record as a GroupConsumer's ``handle`` sees it."""

    partition: int
    offset: int
    value: bytes | None  # None: a record with a null value (a tombstone)


class _HoldRebalance(ConsumerRebalanceListener):
    """A rebalance waits until the batch in hand is stored and committed, so a partition
    never has two writers; the first batch after it is flagged ``redelivered``."""

    def __init__(self, owner: GroupConsumer):
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self.owner.batch_lock:
            pass

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.owner.redelivered = True


class GroupConsumer(TopicReader):
    """Reads the topic in the consumer group ``group``, at least once (see the module)."""

    failing_message = "batch not stored; will retry"
    recovered_message = "batches are stored again"
    batch_size = 1000
    per_record_s = 0.02  # a batch's deadline grows with its size
    join_stall_s = 15.0  # the watch's limit while the member has no partitions (_stall_limit_s)
    lag_refresh_s = 1.0
    # A fetch waits for this much data, or this long: batches of a quarter second's events
    # instead of one or two each. Each batch costs its store a few round trips whatever its
    # size, so at 400 events/s small batches cost the analytics store most of a core (the
    # service's CPU, FerretDB's and PostgreSQL's), taken from the real-time path beside it.
    fetch_min_bytes = 1 << 20
    fetch_max_wait_ms = 250

    def __init__(self, config: Config, group: str):
        super().__init__(config)
        self.group = group
        self.batch_lock = asyncio.Lock()
        self.redelivered = True  # the first batch after start, a failure or a rebalance
        self._lag_due = 0.0

    # -- what a subclass says -------------------------------------------------------------
    async def prepare(self) -> None:
        """Before the first fetch (and again on each reconnect): e.g. the store's indexes."""

    async def handle(self, records: list[Record], redelivered: bool) -> None:
        """Store a batch; raise to have it read again. ``redelivered``: some records may
        already have been stored (after a failure, a start or a rebalance)."""
        raise NotImplementedError

    # -- the loop ---------------------------------------------------------------------------
    async def _connect(self) -> None:
        await self.prepare()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.cfg["bootstrap_servers"],
            client_id=f"{self.cfg['client_id']}-{self.name}",
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.batch_size,
            fetch_min_bytes=self.fetch_min_bytes,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            request_timeout_ms=int(self.timeout_s * 1000) + 1000,
            **self.tls_options,
        )
        try:
            await asyncio.wait_for(consumer.start(), self.timeout_s)
        except BaseException:
            await asyncio.wait_for(consumer.stop(), self.timeout_s)
            raise
        # Subscribing after start() joins the group in the background: a join can wait
        # for a departed member's session to expire, and nothing else should.
        consumer.subscribe([self.cfg["topic"]], listener=_HoldRebalance(self))
        self.consumer = consumer
        await self._refresh_lag()

    async def _next_batch(self) -> None:
        assert self.consumer is not None
        try:
            batches = await self.consumer.getmany(timeout_ms=500, max_records=self.batch_size)
            if batches:
                try:
                    async with self.batch_lock:
                        await self._store(batches)
                finally:  # fetched, stored or not: its store's outage is no stuck consumer
                    self._progressed()
        finally:
            # Also when the store fails: an outage is exactly when the backlog grows.
            if time.monotonic() >= self._lag_due:
                await self._refresh_lag()

    async def _store(self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        assert self.consumer is not None
        records = [Record(r.partition, r.offset, r.value) for rs in batches.values() for r in rs]
        try:
            async with asyncio.timeout(self.timeout_s + self.per_record_s * len(records)):
                await self.handle(records, self.redelivered)
            await asyncio.wait_for(self.consumer.commit(), self.timeout_s)
            self.redelivered = False
        except BaseException:
            # Not committed: read the batch again (aiokafka would otherwise skip it, #1046),
            # flagged so the store reads what it wrote of it.
            self.redelivered = True
            for tp, rs in batches.items():
                if tp in self.consumer.assignment():
                    self.consumer.seek(tp, rs[0].offset)
            raise

    def _stall_limit_s(self) -> float:
        """Longer while the member has no partitions: a join waits (up to the session timeout,
        10 s) for a member that left without a word, and a replacement would only join again."""
        assert self.consumer is not None
        return self.stall_restart_s if self.consumer.assignment() else self.join_stall_s

    async def _waiting(self) -> int:
        """What waits in this member's partitions; while it has none (joining the group, or
        lost its coordinator), what waits in the whole group."""
        assert self.consumer is not None
        assignment = self.consumer.assignment()
        return await group_lag(self.consumer, self.cfg["topic"], self.timeout_s, assignment or None)

    async def _restart(self) -> None:
        """The replacement joins the group and reads from the committed offsets; what it
        reads first may have been stored already."""
        await super()._restart()
        self.redelivered = True

    async def _refresh_lag(self) -> None:
        """The group's backlog; a failure keeps the last value until the next try."""
        assert self.consumer is not None
        self._lag_due = time.monotonic() + self.lag_refresh_s
        try:
            self.lag = await group_lag(self.consumer, self.cfg["topic"], self.timeout_s)
        except Exception as exc:
            if not self.is_outage(exc):
                raise  # a bug: the loop reports it
            return  # the fetch loop's own failure says what is wrong
        metrics.CONSUMER_LAG.labels(self.name).set(self.lag)
