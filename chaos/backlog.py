"""The analytics backlog as Kafka has it: the topic's end offsets minus the analytics
group's committed offsets, polled from outside the service through the whole run (what
the service itself reports is in ``HealthWatch.lags``). Nothing is read while Kafka is
down."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from chaos.load import Poller
from chaos.stack import ANALYTICS_GROUP, TOPIC, Stack

EVERY_S = 0.5
CALL_TIMEOUT_S = 2.0
PARTITIONS = [TopicPartition(TOPIC, p) for p in range(3)]


class BacklogWatch(Poller):
    every_s = EVERY_S

    def __init__(self, stack: Stack):
        self.stack = stack
        self.seen: list[tuple[float, int]] = []
        self._committed: dict[TopicPartition, int] = {}
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def poll(self, started: float) -> None:
        try:
            self.seen.append((started, await asyncio.wait_for(self._lag(), CALL_TIMEOUT_S * 3)))
        except Exception:  # Kafka down or coming back: try again with new clients
            await self._close()

    async def _lag(self) -> int:
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(bootstrap_servers=self.stack.kafka, request_timeout_ms=2000)
            await self._admin.start()
            self._consumer = AIOKafkaConsumer(bootstrap_servers=self.stack.kafka, request_timeout_ms=2000)
            await self._consumer.start()
        committed = await self._admin.list_consumer_group_offsets(ANALYTICS_GROUP, partitions=PARTITIONS)
        ends = await self._consumer.end_offsets(PARTITIONS)
        # The group's offsets only move forward in a run. Right after a Kafka restart the
        # coordinator, still loading them, answers none (the admin client does not raise on
        # that top-level error): that is not a backlog of the whole topic, so keep the last.
        for tp, meta in committed.items():
            if meta is not None and meta.offset > self._committed.get(tp, 0):
                self._committed[tp] = meta.offset
        return sum(max(0, ends[tp] - self._committed.get(tp, 0)) for tp in PARTITIONS)

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
