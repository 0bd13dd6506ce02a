"""The event path's latency levers (docs/PROFILING.md, the event path): the broadcast reader
hands a fetched batch to the hub without a turn of the loop per event, the relay reads its
backlog gauges at most once a second, the analytics reader fetches in batches, and the
collector's passes and the reader's delay are in /metrics."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any, NamedTuple

import pytest
from aiokafka import TopicPartition

from domain import outbox
from domain.analytics_consumer import AnalyticsConsumer
from domain.outbox import OutboxRelay
from managers import kafka_consumer, metrics
from managers.kafka_consumer import BroadcastConsumer, GroupConsumer
from tests.helpers import metric, wait_until

TP = TopicPartition("events", 0)


class FakeRecord(NamedTuple):
    offset: int
    value: bytes
    timestamp: int  # ms, as Kafka's CreateTime


class OneBatch:
    """A consumer's getmany answering one batch, then nothing."""

    def __init__(self, records: list[FakeRecord]):
        self.batches = [{TP: records}]

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, Any]:
        return self.batches.pop() if self.batches else {}

    def assignment(self) -> set[TopicPartition]:
        return set()


async def read_counting_turns(unit_config: dict, n: int, dispatch_s: float) -> tuple[list[bytes], int]:
    """One batch of ``n`` records through ``read_batch``, each dispatch taking ``dispatch_s`` of
    CPU; what was dispatched, and how many turns another task had meanwhile."""
    reader = BroadcastConsumer(unit_config)
    now_ms = int(time.time() * 1000)
    reader.consumer = OneBatch([FakeRecord(i, b"%d" % i, now_ms) for i in range(n)])  # type: ignore[assignment]
    dispatched: list[bytes] = []

    async def dispatch(raw: bytes) -> None:
        dispatched.append(raw)
        until = time.perf_counter() + dispatch_s
        while time.perf_counter() < until:  # the hub's work: CPU, no await
            pass

    reader._dispatch = dispatch  # type: ignore[method-assign]
    turns, done = 0, False

    async def other_work() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    start = turns
    assert await reader.read_batch() == n
    done = True
    await other
    assert reader.next_offsets[TP] == n
    return dispatched, turns - start


@pytest.mark.gen_test
async def test_a_batch_of_cheap_events_reaches_the_hub_without_a_turn_of_the_loop_each(unit_config):
    """A yield per event made each event of a batch wait a whole turn of a busy loop
    (p99 0.4-1.3 s at 200-400 payments/s, one socket per user)."""
    dispatched, turns = await read_counting_turns(unit_config, 200, 0)
    assert dispatched == [b"%d" % i for i in range(200)]  # all of them, in order
    assert turns <= 5, f"{turns} turns of the loop for 200 events"


@pytest.mark.gen_test
async def test_a_long_dispatch_still_lets_other_work_run(unit_config):
    """A large fan-out batch must not starve HTTP requests: other work gets a turn at least
    every DISPATCH_SLICE_S of dispatching."""
    per_event_s = kafka_consumer.DISPATCH_SLICE_S / 2
    _, turns = await read_counting_turns(unit_config, 20, per_event_s)
    assert turns >= 20 * per_event_s / kafka_consumer.DISPATCH_SLICE_S - 1


def test_collector_passes_are_timed_into_metrics():
    metrics.time_gc()
    metrics.time_gc()  # once a process: a second call adds no second callback
    assert sum(cb is metrics._time_gc for cb in gc.callbacks) == 1
    automatic = gc.isenabled()
    gc.disable()  # no pass of its own between the reads: one came in CI, and counted twice
    try:
        metrics.gc_pauses_observed()
        before = metric("singleton_gc_pause_seconds_count", {"generation": "2"})
        gc.collect()
        metrics.gc_pauses_observed()
    finally:
        if automatic:
            gc.enable()
    assert metric("singleton_gc_pause_seconds_count", {"generation": "2"}) == before + 1
    assert metric("singleton_gc_pause_seconds_sum", {"generation": "2"}) > 0


@pytest.mark.gen_test(timeout=60)
async def test_the_relay_reads_its_backlog_at_most_once_a_second_while_publishing(api, monkeypatch):
    """Read after every batch, the gauges' query was one more MariaDB round trip in each turn
    of the relay's loop, which the next commit's events waited for."""
    [relay] = OutboxRelay.instance()._shards.values()
    read_backlog, reads = relay._read_backlog, []

    async def counted() -> None:
        reads.append(time.monotonic())
        await read_backlog()

    monkeypatch.setattr(relay, "_read_backlog", counted)
    user = await api.new_user()
    await asyncio.sleep(outbox.GAUGES_EVERY_S)  # the user's own event and its gauges are out of the way
    started, reads[:] = time.monotonic(), []
    for _ in range(8):  # each committed alone: a batch each
        await api.new_payment(user["id"])
    pending = "SELECT COUNT(*) AS n FROM outbox WHERE partition_key = %s AND published_at IS NULL"

    async def all_published() -> bool:
        return (await relay.db.fetchone(pending, (user["id"],)) or {}).get("n") == 0

    await wait_until(all_published, timeout=20, what="the payments published")
    elapsed = time.monotonic() - started
    assert len(reads) <= elapsed / outbox.GAUGES_EVERY_S + 1, f"{len(reads)} backlog reads in {elapsed:.2f} s"


@pytest.mark.gen_test(timeout=60)
async def test_the_broadcast_readers_delay_is_observed_per_event(api):
    before = metric("singleton_kafka_consumer_delay_seconds_count", {"consumer": "broadcast"})
    user = await api.new_user()
    await api.new_payment(user["id"])
    await wait_until(
        lambda: metric("singleton_kafka_consumer_delay_seconds_count", {"consumer": "broadcast"}) >= before + 2,
        timeout=20,
        what="the user's and the payment's events handed to the hub",
    )
    assert metric("singleton_kafka_consumer_delay_seconds_sum", {"consumer": "broadcast"}) > 0


@pytest.mark.gen_test(timeout=60)
async def test_the_analytics_reader_fetches_in_batches(api):
    reader = AnalyticsConsumer.instance()
    await wait_until(lambda: reader.consumer is not None, timeout=30, what="the analytics reader connected")
    fetcher = reader.consumer._fetcher  # type: ignore[union-attr]
    assert fetcher._fetch_min_bytes == GroupConsumer.fetch_min_bytes > 1
    assert fetcher._fetch_max_wait_ms == GroupConsumer.fetch_max_wait_ms
