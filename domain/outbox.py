"""The transactional outbox: events are written with the change they describe,
then relayed to Kafka.

``insert(event)`` is the statement that records an event; its caller runs it in
the transaction of the change, so an event exists exactly when its change
committed, and calls ``notify_committed()`` after the commit. ``OutboxRelay``
publishes pending rows in id order (key = user id, so one user's events stay in order on one
partition) and marks them published. If Kafka is down the rows wait; nothing
is dropped. A crash between publish and mark re-sends a batch: delivery is at
least once, and consumers de-duplicate by ``event_id``.

Order per user holds because every transaction that writes a user's event
first locks that user's row: a user's outbox ids are assigned in commit order.

The relay's loop does three things, each with its own failures: publishing
(MariaDB or Kafka unavailable is an outage, counted in
``singleton_outbox_publish_failures_total``; rows wait), the backlog gauges, and
housekeeping once a minute (deleting what is past retention). A failure of the
gauges or the housekeeping is never reported as a publishing failure, and the
housekeeping waits for its next turn instead of running on every retry. Anything
that is not an outage is a bug (managers/background.py).

Stopping never interrupts a batch between Kafka's acknowledgement and the mark:
``close()`` lets the current batch finish, then flushes once more, so a clean
shutdown publishes nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import time

from domain import codec
from domain.events import Event
from managers import metrics
from managers.background import Backoff, Failures
from managers.base import Manager
from managers.config import Config, OutboxConfig
from managers.kafka_producer import KafkaProducerManager
from managers.mysql import MySQLManager, Statement

log = logging.getLogger("singleton.outbox")
MAX_BACKOFF_S = 5.0
HOUSEKEEPING_EVERY_S = 60.0


def insert(event: Event) -> Statement:
    """The statement that records ``event``; run it in the transaction of its change."""
    return (
        "INSERT INTO outbox (event_id, event_type, partition_key, payload, created_at)"
        " VALUES (%s, %s, %s, %s, UTC_TIMESTAMP(6))",
        (event["event_id"], event["type"], event["user_id"], codec.dumps(event).decode()),
    )


def notify_committed() -> None:
    """Call after a commit that added events, so they go out now rather than at the next poll.

    A process without the relay (``--role api``) has no one to tell: a relay process finds
    the rows at its next poll (``outbox.poll_interval_s``), which bounds their delay."""
    if OutboxRelay.started():
        OutboxRelay.instance().notify()


class OutboxRelay(Manager):
    def __init__(self, outbox_cfg: OutboxConfig, idempotency_ttl_hours: float):
        self.batch_size: int = outbox_cfg["batch_size"]
        self.poll_interval_s: float = outbox_cfg["poll_interval_s"]
        self.retention_hours: float = outbox_cfg["retention_hours"]
        self.idempotency_ttl_hours = idempotency_ttl_hours
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._next_housekeeping = 0.0
        self._publishing = Failures(
            "outbox_publish",
            self.is_outage,
            logger=log,
            outage="outbox relay cannot publish; rows wait",
            recovered="outbox relay recovered",
        )
        self._gauges = Failures("outbox_gauges", self.is_outage, logger=log)
        self._housekeeping_failures = Failures("outbox_housekeeping", self.is_outage, logger=log)

    @classmethod
    def start(cls, config: Config) -> OutboxRelay:
        inst = cls._install(cls(config["outbox"], config["payments"]["idempotency_ttl_hours"]))
        inst._run_in_background(inst._run(), "outbox-relay")
        return inst

    def notify(self) -> None:
        """Called after a commit that wrote events: publish now rather than at the next poll."""
        self._wakeup.set()

    @staticmethod
    def is_outage(exc: BaseException) -> bool:
        return MySQLManager.is_unavailable(exc) or KafkaProducerManager.is_unavailable(exc)

    async def _run(self) -> None:
        # Until MariaDB is reached and migrated there is nothing to relay, and its manager
        # already says so: without this wait, every start logged a relay "outage".
        await MySQLManager.instance().ready.wait()
        backoff = Backoff(self.poll_interval_s, MAX_BACKOFF_S)
        while not self._stopping:
            try:
                published = await self.relay_once()
            except Exception as exc:
                metrics.OUTBOX_PUBLISH_FAILURES.inc()
                self._publishing.failed(exc)
                await self._refresh_gauges()  # the backlog's age is what alerts watch now
                await self._sleep(backoff.next())
                continue
            self._publishing.succeeded()
            backoff.reset()
            if published == self.batch_size:
                continue  # more may be waiting
            await self._refresh_gauges()
            await self._housekeeping_when_due()
            await self._sleep(self.poll_interval_s)

    async def _sleep(self, seconds: float) -> None:
        """Wait for a commit's notify, a stop, or ``seconds``, whichever comes first."""
        try:
            await asyncio.wait_for(self._wakeup.wait(), seconds)
        except TimeoutError:
            pass
        self._wakeup.clear()

    async def relay_once(self) -> int:
        """Publish the oldest pending rows; return how many went out.

        The rows stay locked until they are marked, so a second instance's relay
        waits instead of sending them again or overtaking them. READ COMMITTED
        keeps the lock to those rows: writers adding new rows are not blocked.
        """
        async with MySQLManager.instance().transaction(isolation="READ COMMITTED") as tx:
            rows = await tx.fetchall(
                "SELECT id, event_type, partition_key, payload FROM outbox"
                " WHERE published_at IS NULL ORDER BY id LIMIT %s FOR UPDATE",
                (self.batch_size,),
            )
            if not rows:
                return 0
            await KafkaProducerManager.instance().send_batch(
                [(row["partition_key"].encode(), row["payload"].encode()) for row in rows]
            )
            ids = [row["id"] for row in rows]
            placeholders = ",".join(["%s"] * len(ids))
            mark = (f"UPDATE outbox SET published_at = UTC_TIMESTAMP(6) WHERE id IN ({placeholders})", ids)
            await tx.script([mark], commit=True)
        for row in rows:
            metrics.EVENTS_PUBLISHED.labels(metrics.event_label(row["event_type"])).inc()
        return len(rows)

    async def _refresh_gauges(self) -> None:
        """The backlog's size and age; during an outage they keep their last values."""
        try:
            await self._read_backlog()
        except Exception as exc:
            if not self.is_outage(exc):  # an outage is publishing's to report, and dependency_up's
                self._gauges.failed(exc)
            return
        self._gauges.succeeded()

    async def _read_backlog(self) -> None:
        row = await MySQLManager.instance().fetchone(
            "SELECT COUNT(*) AS pending, MIN(created_at) AS oldest FROM outbox WHERE published_at IS NULL"
        )
        assert row is not None
        metrics.OUTBOX_PENDING.set(row["pending"])
        oldest = row["oldest"]
        age = (codec.utc_now() - oldest).total_seconds() if oldest else 0
        metrics.OUTBOX_OLDEST_AGE.set(max(age, 0))

    async def _housekeeping_when_due(self) -> None:
        """Once every ``HOUSEKEEPING_EVERY_S``, whether the last turn worked or not."""
        if time.monotonic() < self._next_housekeeping:
            return
        self._next_housekeeping = time.monotonic() + HOUSEKEEPING_EVERY_S
        try:
            await self._housekeeping()
        except Exception as exc:
            if not self.is_outage(exc):
                self._housekeeping_failures.failed(exc)
            return
        self._housekeeping_failures.succeeded()

    async def _housekeeping(self) -> None:
        """Forget published events past the replay window, and old idempotency keys."""
        async with MySQLManager.instance().cursor() as cur:
            await cur.execute(
                "DELETE FROM outbox WHERE published_at IS NOT NULL"
                " AND created_at < UTC_TIMESTAMP(6) - INTERVAL %s SECOND LIMIT 5000",
                (int(self.retention_hours * 3600),),
            )
            await cur.execute(
                "DELETE FROM idempotency_keys WHERE created_at < UTC_TIMESTAMP(6) - INTERVAL %s SECOND LIMIT 5000",
                (int(self.idempotency_ttl_hours * 3600),),
            )

    async def release(self) -> None:
        """Let the batch in hand finish (published rows get marked), then flush once more."""
        deadline_s = KafkaProducerManager.instance().timeout_s * 2
        if not MySQLManager.instance().ready.is_set():  # never began: nothing in hand, nothing to flush
            await self._stop_background(deadline_s)
            return
        if self._task is not None:
            self._stopping = True
            self._wakeup.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), deadline_s)
            except TimeoutError:  # a batch stuck past its own deadline: give up on it, it is re-sent later
                await self._stop_background(deadline_s)
        try:  # one last flush, so a clean stop leaves nothing for the next start
            await asyncio.wait_for(self.relay_once(), deadline_s)
        except Exception as exc:
            log.warning("outbox not flushed at shutdown; rows wait for the next start", extra={"error": repr(exc)})
