"""KafkaProducerManager: one aiokafka producer, every call under a deadline.

Idempotence stays off: with it on, ``send_and_wait`` and ``stop()`` can hang
while the broker is down (aiokafka#1101). Consumers de-duplicate by
``event_id`` instead. A producer that timed out or broke is replaced, since a
broken one can stay broken after a broker blip (aiokafka#1017). The producer is
opened on first use: the service starts while Kafka is down, and the outbox keeps
every event until it is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError

from managers import tls
from managers.base import BackingService
from managers.config import Config, KafkaConfig

log = logging.getLogger("singleton.kafka")
UNAVAILABLE = (KafkaError, asyncio.TimeoutError, OSError)  # what the API answers with 503


# Kafka errors that say our request or our configuration is wrong: a bug, not an outage.
_OUR_FAULT = (
    kafka_errors.IllegalStateError,
    kafka_errors.IllegalArgumentError,
    kafka_errors.KafkaConfigurationError,
    kafka_errors.UnsupportedCodecError,
    kafka_errors.IncompatibleBrokerVersion,
    kafka_errors.RecordTooLargeError,
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.InvalidTopicError,
    kafka_errors.InvalidRequiredAcksError,
    kafka_errors.InvalidGroupIdError,
    kafka_errors.InconsistentGroupProtocolError,
    kafka_errors.InvalidSessionTimeoutError,
    kafka_errors.AuthenticationFailedError,
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.GroupAuthorizationFailedError,
)


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the cluster is out of reach or busy (an outage): a timeout, a
    lost connection, or any Kafka error but those that say our request or configuration
    is wrong (aiokafka raises a bare KafkaError when no broker answers for metadata)."""
    if isinstance(exc, (asyncio.TimeoutError, OSError)):
        return True
    return isinstance(exc, KafkaError) and not isinstance(exc, _OUR_FAULT)


def _read_outcome(future: asyncio.Future[Any]) -> None:
    """Mark a send's outcome as read. Once one send of a batch failed (or the batch's
    deadline passed) nobody awaits the others: their failures, seconds later, logged
    "Future exception was never retrieved" by the dozen during a broker's failover."""
    if not future.cancelled():
        future.exception()


class KafkaProducerManager(BackingService):
    dependency = "kafka"
    unavailable = UNAVAILABLE
    log_sources = ("aiokafka", "kafka")

    def __init__(self, cfg: KafkaConfig):
        self.cfg = cfg
        self.topic: str = cfg["topic"]
        self.timeout_s: float = cfg["request_timeout_s"]
        self.producer: AIOKafkaProducer | None = None
        self.tls_options = tls.kafka_options(cfg["tls"])  # SSL and its context, or nothing (plaintext)
        self._opening = asyncio.Lock()  # concurrent first uses open one producer, not one each
        self._stopping: set[asyncio.Task[None]] = set()  # discarded producers still shutting down

    @classmethod
    def start(cls, config: Config) -> KafkaProducerManager:
        """Install the manager; the producer is opened on first use, so Kafka may be down now."""
        return cls._install(cls(config["kafka"]))

    async def _ready(self) -> AIOKafkaProducer:
        """The open producer; opened now (by whoever asks first) if there is none."""
        async with self._opening:
            if self.producer is None:
                self.producer = await self._open()
            return self.producer

    async def _open(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.cfg["bootstrap_servers"],
            client_id=self.cfg["client_id"],
            acks="all",
            # No linger: the relay hands a whole batch over without yielding, so the sender
            # finds it complete; a linger only added its milliseconds to every batch's ack.
            linger_ms=0,
            request_timeout_ms=int(self.timeout_s * 1000),
            retry_backoff_ms=100,
            **self.tls_options,
        )
        try:
            await asyncio.wait_for(producer.start(), self.timeout_s)
        except BaseException:
            await self._stop_quietly(producer)
            raise
        return producer

    async def _discard(self, producer: AIOKafkaProducer) -> None:
        """A producer that failed is not used again (the next call opens a new one)."""
        if self.producer is producer:
            self.producer = None
        await self._stop_quietly(producer)

    async def _stop_quietly(self, producer: AIOKafkaProducer) -> None:
        """Wait up to the deadline for ``producer`` to stop, but never cancel the stop: a
        cancelled ``stop()`` leaves aiokafka's sender task pending for good ("Task was
        destroyed but it is pending!"). A stop that outlives the deadline (the broker is
        down and batches expire first) ends in the background; ``release()`` waits for it."""
        task = asyncio.create_task(self._stop(producer), name="kafka-producer-stop")
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        await asyncio.wait({task}, timeout=self.timeout_s)

    @staticmethod
    async def _stop(producer: AIOKafkaProducer) -> None:
        try:
            await producer.stop()  # bounded by the producer's own request timeout
        except Exception as exc:
            log.debug("kafka producer stop failed (expected while the broker is down)", extra={"error": repr(exc)})

    async def send_batch(self, messages: Sequence[tuple[bytes | None, bytes]], topic: str | None = None) -> None:
        """Publish (key, value) pairs in order and wait until the broker acknowledged all.

        Raises on failure or deadline; the producer is then replaced before the
        next call, so one outage never leaves a broken producer behind.
        """
        producer, topic = await self._ready(), topic or self.topic

        async def publish() -> None:
            futures: list[asyncio.Future[Any]] = []
            try:
                for key, value in messages:
                    futures.append(await producer.send(topic, value, key=key))
            finally:
                for future in futures:  # failing after the batch gave up, each is still read
                    future.add_done_callback(_read_outcome)
            await asyncio.gather(*futures)

        try:
            await asyncio.wait_for(publish(), self.timeout_s)
        except UNAVAILABLE:
            await self._discard(producer)
            raise

    async def send(self, value: bytes, key: bytes | None = None, topic: str | None = None) -> None:
        await self.send_batch([(key, value)], topic)

    async def ping(self) -> None:
        """A real metadata round trip to the broker; the topic must exist."""
        producer = await self._ready()
        try:
            metadata = await asyncio.wait_for(producer.client.fetch_all_metadata(), self.timeout_s)
        except UNAVAILABLE:
            await self._discard(producer)
            raise
        if metadata.partitions_for_topic(self.topic) is None:
            raise UnknownTopicOrPartitionError(f"topic {self.topic!r} does not exist")

    @classmethod
    def is_unavailable(cls, exc: BaseException) -> bool:
        return is_unavailable(exc)

    async def release(self) -> None:
        if self.producer is not None:
            await self._stop_quietly(self.producer)
            self.producer = None
        if self._stopping:
            await asyncio.wait(self._stopping, timeout=self.timeout_s)
        for task in list(self._stopping):  # shutting down: a stop still hanging is abandoned
            task.cancel()
