"""Discarding a producer while the broker is down: pure logic, with a stand-in producer
whose stop() outlives the deadline (the real case is in ``make chaos``: Kafka killed)."""

from __future__ import annotations

import asyncio

import pytest

from managers.kafka_producer import KafkaProducerManager


class SlowToStop:
    """Stops after ``seconds``, the way aiokafka's stop() waits for unsent batches to expire."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.stopped = asyncio.Event()
        self.cancelled = False

    async def stop(self) -> None:
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.stopped.set()


def manager(timeout_s: float) -> KafkaProducerManager:
    return KafkaProducerManager(
        {"topic": "t", "request_timeout_s": timeout_s, "bootstrap_servers": "", "client_id": ""}
    )


@pytest.mark.gen_test(timeout=10)
async def test_a_discarded_producer_stops_in_the_background_instead_of_being_cancelled():
    kafka = manager(timeout_s=0.05)
    producer = SlowToStop(0.3)
    kafka.producer = producer
    await kafka._discard(producer)  # returns at the deadline ...
    assert kafka.producer is None and not producer.stopped.is_set()
    await asyncio.wait_for(producer.stopped.wait(), 2)  # ... and the stop goes on to its end
    assert not producer.cancelled and not kafka._stopping


@pytest.mark.gen_test(timeout=10)
async def test_release_waits_for_stops_still_under_way():
    kafka = manager(timeout_s=0.2)
    producer = SlowToStop(0.3)
    await kafka._discard(producer)
    assert not producer.stopped.is_set()
    await kafka.release()
    assert producer.stopped.is_set() and not producer.cancelled
