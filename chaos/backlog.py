"""The analytics backlog as Kafka has it: the topic's end offsets minus the analytics
group's committed offsets, polled from outside the service through the whole run (what
the service itself reports is in ``HealthWatch.lags``). Nothing is read while Kafka is
down. The committed offsets' sum is kept too: while a backlog waits and it does not
move, the analytics consumer is stalled (``longest_stall``)."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from chaos.load import Poller
from chaos.stack import Stack

EVERY_S = 0.5
CALL_TIMEOUT_S = 2.0


class BacklogWatch(Poller):
    every_s = EVERY_S

    def __init__(self, stack: Stack):
        self.stack = stack
        self.partitions = [TopicPartition(stack.topic, p) for p in range(stack.partitions)]
        self.seen: list[tuple[float, int]] = []
        self.committed: list[tuple[float, int]] = []  # (time, the group's committed offsets summed)
        self._committed: dict[TopicPartition, int] = {}
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def poll(self, started: float) -> None:
        try:
            self.seen.append((started, await asyncio.wait_for(self._lag(), CALL_TIMEOUT_S * 3)))
            self.committed.append((started, sum(self._committed.values())))
        except Exception:  # Kafka down or coming back: try again with new clients
            await self._close()

    async def _lag(self) -> int:
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(bootstrap_servers=self.stack.kafka, request_timeout_ms=2000)
            await self._admin.start()
            self._consumer = AIOKafkaConsumer(bootstrap_servers=self.stack.kafka, request_timeout_ms=2000)
            await self._consumer.start()
        committed = await self._admin.list_consumer_group_offsets(
            self.stack.analytics_group, partitions=self.partitions
        )
        ends = await self._consumer.end_offsets(self.partitions)
        # The group's offsets only move forward in a run. Right after a Kafka restart the
        # coordinator, still loading them, answers none (the admin client does not raise on
        # that top-level error): that is not a backlog of the whole topic, so keep the last.
        for tp, meta in committed.items():
            if meta is not None and meta.offset > self._committed.get(tp, 0):
                self._committed[tp] = meta.offset
        return sum(max(0, ends[tp] - self._committed.get(tp, 0)) for tp in self.partitions)

    async def _close(self) -> None:
        for client in (self._consumer, self._admin):
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close() if client is self._admin else client.stop(), CALL_TIMEOUT_S)
        self._admin = self._consumer = None

    async def stop(self) -> None:
        await super().stop()
        await self._close()

    def backlog(self, since: float, fault_end: float, caught_up: int) -> tuple[int, float | None]:
        """The backlog's peak from ``since`` on, and when after ``fault_end`` it was first
        back at or under ``caught_up`` once past that peak (None: never, or no backlog)."""
        return peak_and_cleared(self.seen, since, fault_end, caught_up)

    def longest_stall(self, since: float, until: float) -> tuple[float, float | None]:
        """The longest time between ``since`` and ``until`` that the group's committed
        offsets stood still while a backlog waited, and when that stall began."""
        return longest_stall(self.seen, self.committed, since, until)


def longest_stall(
    backlog: list[tuple[float, int]], committed: list[tuple[float, int]], since: float, until: float
) -> tuple[float, float | None]:
    """From samples taken together: the longest span over which the committed offsets did
    not move although the backlog was above 0, and its start. A span starts at the last
    sample that saw progress (or no backlog) and ends at a later sample: time without
    samples (Kafka not answering the watch) counts as stalled."""
    longest, began = 0.0, None
    last_progress: float | None = None
    previous: int | None = None
    for (t, lag), (_, offsets) in zip(backlog, committed, strict=True):
        if t < since or t > until:
            previous = offsets
            continue
        if last_progress is None or lag == 0 or (previous is not None and offsets > previous):
            last_progress = t
        elif t - last_progress > longest:
            longest, began = t - last_progress, last_progress
        previous = offsets
    return round(longest, 1), began


def peak_and_cleared(
    samples: list[tuple[float, int]], since: float, fault_end: float, caught_up: int
) -> tuple[int, float | None]:
    """From (time, lag) samples: the peak from ``since`` on, and the first time at or after
    both that peak and ``fault_end`` when the lag was ``caught_up`` or less."""
    samples = [(t, lag) for t, lag in samples if t >= since]
    if not samples:
        return 0, None
    peak_at, peak = max(samples, key=lambda x: x[1])
    if peak <= caught_up:
        return peak, None
    return peak, next((t for t, lag in samples if t >= max(peak_at, fault_end) and lag <= caught_up), None)


def last_at(samples: list[tuple[float, int]], t: float) -> int | None:
    """The last sample taken at or before ``t``."""
    return next((lag for at, lag in reversed(samples) if at <= t), None)
