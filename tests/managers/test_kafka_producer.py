"""Discarding a producer while the broker is down: pure logic, with a stand-in producer
whose stop() outlives the deadline until the test lets it end (the real case is in
``make chaos``: Kafka killed)."""

from __future__ import annotations

import asyncio

import pytest

from managers.kafka_producer import KafkaProducerManager
from tests.helpers import wait_until

PLAINTEXT = {"ca_file": "", "cert_file": "", "key_file": "", "verify_hostname": True}


class SlowToStop:
    """Stops when the test says so, as aiokafka's stop() waits for unsent batches to expire."""

    def __init__(self) -> None:
        self.may_stop = asyncio.Event()
        self.stopped = asyncio.Event()
        self.cancelled = False

    async def stop(self) -> None:
        try:
            await self.may_stop.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.stopped.set()


def manager(timeout_s: float) -> KafkaProducerManager:
    return KafkaProducerManager(
        {"topic": "t", "request_timeout_s": timeout_s, "bootstrap_servers": "", "client_id": "", "tls": PLAINTEXT}
    )


@pytest.mark.gen_test(timeout=10)
async def test_a_discarded_producer_stops_in_the_background_instead_of_being_cancelled():
    kafka = manager(timeout_s=0.05)
    producer = SlowToStop()
    kafka.producer = producer
    await kafka._discard(producer)  # returns at the deadline, the stop still under way ...
    assert kafka.producer is None and not producer.stopped.is_set() and not producer.cancelled
    producer.may_stop.set()
    await asyncio.wait_for(producer.stopped.wait(), 2)  # ... and the stop goes on to its end
    await wait_until(lambda: not kafka._stopping, timeout=2, what="the stop task to be forgotten")
    assert not producer.cancelled


@pytest.mark.gen_test(timeout=10)
async def test_release_waits_for_stops_still_under_way():
    kafka = manager(timeout_s=5)
    producer = SlowToStop()
    discarding = asyncio.ensure_future(kafka._discard(producer))
    await wait_until(lambda: kafka._stopping, timeout=2, what="the stop to be under way")
    releasing = asyncio.ensure_future(kafka.release())
    await asyncio.sleep(0.1)
    assert not releasing.done(), "release returned while a stop was under way"
    producer.may_stop.set()
    await asyncio.wait_for(asyncio.gather(discarding, releasing), 2)
    assert producer.stopped.is_set() and not producer.cancelled
