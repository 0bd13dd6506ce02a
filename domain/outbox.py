"""The transactional outbox: events are written with the change they describe,
then relayed to Kafka.

``add`` inserts the event row inside the caller's transaction, so an event
exists exactly when its change committed. ``OutboxRelay`` publishes pending
rows in id order (key = user id, so one user's events stay in order on one
partition) and marks them published. If Kafka is down the rows wait; nothing
is dropped. A crash between publish and mark re-sends a batch: delivery is at
least once, and consumers de-duplicate by ``event_id``.

Order per user holds because every transaction that writes a user's event
first locks that user's row: a user's outbox ids are assigned in commit order.

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
from managers import metrics, mysql
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

    @classmethod
    def start(cls, config: Config) -> OutboxRelay:
        inst = cls._install(cls(config["outbox"], config["payments"]["idempotency_ttl_hours"]))
        inst._run_in_background(inst._run(), "outbox-relay")
        return inst

    def notify(self) -> None:
        """Called after a commit that wrote events: publish now rather than at the next poll."""
        self._wakeup.set()

    async def _run(self) -> None:
        # Until MariaDB is reached and migrated there is nothing to relay, and its manager
        # already says so: without this wait, every start logged a relay "outage".
        await MySQLManager.instance().ready.wait()
        backoff = self.poll_interval_s
        failing = False
        while not self._stopping:
            try:
                published = await self.relay_once()
                if failing:
                    log.info("outbox relay recovered")
                failing, backoff = False, self.poll_interval_s
                if published == self.batch_size:
                    continue  # more may be waiting
                await self._idle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.OUTBOX_PUBLISH_FAILURES.inc()
                if not failing:  # one line per outage, not one per retry
                    log.warning("outbox relay cannot publish; rows wait", extra={"error": repr(exc)})
                failing = True
                await self._refresh_gauges_if_possible()  # the backlog's age is what alerts watch now
                await self._sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _idle(self) -> None:
        await self._refresh_gauges()
        if time.monotonic() >= self._next_housekeeping:
            await self._housekeeping()
            self._next_housekeeping = time.monotonic() + HOUSEKEEPING_EVERY_S
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
        mysql = MySQLManager.instance()
        async with mysql.transaction(isolation="READ COMMITTED") as tx:
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

    async def _refresh_gauges_if_possible(self) -> None:
        try:
            await self._refresh_gauges()
        except mysql.UNAVAILABLE:
            pass  # MariaDB is the outage: the gauges keep their last values, dependency_up says why

    async def _refresh_gauges(self) -> None:
        row = await MySQLManager.instance().fetchone(
            "SELECT COUNT(*) AS pending, MIN(created_at) AS oldest FROM outbox WHERE published_at IS NULL"
        )
        assert row is not None
        metrics.OUTBOX_PENDING.set(row["pending"])
        oldest = row["oldest"]
        age = (codec.utc_now() - oldest).total_seconds() if oldest else 0
        metrics.OUTBOX_OLDEST_AGE.set(max(age, 0))

    async def _housekeeping(self) -> None:
        """Forget published events past the replay window, and old idempotency keys."""
        mysql = MySQLManager.instance()
        async with mysql.cursor() as cur:
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
