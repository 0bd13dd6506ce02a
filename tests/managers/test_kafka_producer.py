"""Discarding a producer while the broker is down, and the sends a batch gave up on: pure
logic, with stand-in producers (whose stop() outlives the deadline until the test lets it
end; whose sends the test settles). The real case is in ``make chaos``: Kafka killed."""

from __future__ import annotations

import asyncio
import gc

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


class BlockedSends:
    """Sends whose acknowledgements the test settles, as aiokafka's: each send() returns a
    future that a broker's answer (or its absence) resolves later, and a send waits while
    the producer's buffer is full: here, the third waits for good."""

    def __init__(self) -> None:
        self.acks: list[asyncio.Future[None]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[None]:
        if len(self.acks) == 2:
            await asyncio.Event().wait()
        self.acks.append(asyncio.get_running_loop().create_future())
        return self.acks[-1]

    async def stop(self) -> None:
        pass


@pytest.mark.gen_test(timeout=10)
async def test_the_sends_a_batch_gave_up_on_are_read_when_they_fail():
    """A batch past its deadline while still queueing sends leaves the queued ones unawaited;
    their failures, later, must not log "Future exception was never retrieved" (dozens of
    lines in a broker's failover)."""
    kafka, sends = manager(timeout_s=0.1), BlockedSends()
    kafka.producer = sends  # type: ignore[assignment]
    unread: list[dict] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: unread.append(context))
    try:
        with pytest.raises(TimeoutError):
            await kafka.send_batch([(b"k", b"1"), (b"k", b"2"), (b"k", b"3")])
        for ack in sends.acks:
            ack.set_exception(ConnectionError("request timed out"))
        await asyncio.sleep(0)  # their done callbacks run on the loop's next turn
        del ack
        sends.acks.clear()
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert unread == []
