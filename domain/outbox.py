"""The transactional outbox: events are written with the change they describe,
then relayed to Kafka, one relay loop per physical shard.

``insert(event)`` is the statement that records an event; its caller runs it in
the transaction of the change, so an event exists exactly when its change
committed, and calls ``notify_committed(shard)`` after the commit. ``OutboxRelay``
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
from managers.mysql import Database, MySQLManager, Statement

log = logging.getLogger("singleton.outbox")
MAX_BACKOFF_S = 5.0
HOUSEKEEPING_EVERY_S = 60.0
# The backlog gauges' query runs at most this often. Run after every batch (as before), it
# was one more MariaDB round trip in each turn of the loop, which the next commit's events
# waited for (docs/PROFILING.md, the event path).
GAUGES_EVERY_S = 1.0


def insert(event: Event) -> Statement:
    """The statement that records ``event``; run it in the transaction of its change. An
    event of no user's (``api_key_revoked``) is keyed ``''`` (domain/revocations.py)."""
    return (
        "INSERT INTO outbox (event_id, event_type, partition_key, payload, created_at)"
        " VALUES (%s, %s, %s, %s, UTC_TIMESTAMP(6))",
        (event["event_id"], event["type"], event["user_id"] or "", codec.dumps(event).decode()),
    )


def notify_committed(shard: Database) -> None:
    """Call after a commit on ``shard`` that added events, so its relay sends them now rather
    than at the next poll (the other shards' relays have nothing new).

    A process without the relay (``--role api``) has no one to tell: a relay process finds
    the rows at its next poll (``outbox.poll_interval_s``), which bounds their delay."""
    if OutboxRelay.started():
        OutboxRelay.instance().notify(shard)


class OutboxRelay(Manager):
    """One relay loop per physical shard (each shard's rows are ordered, locked and marked
    on that shard alone), sharing the producer; ``notify`` wakes them all."""

    def __init__(self, outbox_cfg: OutboxConfig, idempotency_ttl_hours: float):
        self.batch_size: int = outbox_cfg["batch_size"]
        self.poll_interval_s: float = outbox_cfg["poll_interval_s"]
        self.retention_hours: float = outbox_cfg["retention_hours"]
        self.idempotency_ttl_hours = idempotency_ttl_hours
        self._stopping = False
        self._shards: dict[str, ShardRelay] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def start(cls, config: Config) -> OutboxRelay:
        inst = cls._install(cls(config["outbox"], config["payments"]["idempotency_ttl_hours"]))
        for db in MySQLManager.instance().all():
            shard = inst._shards[db.name] = ShardRelay(inst, db)
            inst._tasks.append(asyncio.create_task(shard.run(), name=f"outbox-relay-{db.name}"))
        return inst

    def notify(self, shard: Database | None = None) -> None:
        """Wake ``shard``'s relay loop (every loop when None: stopping) to publish now."""
        for name, relay in self._shards.items():
            if shard is None or shard.name == name:
                relay.wakeup.set()

    @staticmethod
    def is_outage(exc: BaseException) -> bool:
        return MySQLManager.is_unavailable(exc) or KafkaProducerManager.is_unavailable(exc)

    async def relay_once(self, db: Database) -> int:
        """Publish the oldest pending rows of shard ``db``; return how many went out.

        The rows stay locked until they are marked, so a second instance's relay
        waits instead of sending them again or overtaking them. READ COMMITTED
        keeps the lock to those rows: writers adding new rows are not blocked.
        """
        async with db.transaction(isolation="READ COMMITTED") as tx:
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

    def _set_gauges(self) -> None:
        """The backlog over every shard: its size, and the age of its oldest row."""
        shards = self._shards.values()
        metrics.OUTBOX_PENDING.set(sum(shard.pending for shard in shards))
        metrics.OUTBOX_OLDEST_AGE.set(max((shard.oldest_age_s for shard in shards), default=0))

    async def release(self) -> None:
        """Let each batch in hand finish (published rows get marked), then flush once more."""
        if self._stopping:  # released already
            return
        deadline_s = KafkaProducerManager.instance().timeout_s * 2
        self._stopping = True
        self.notify()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=deadline_s)
            for task in pending:  # a batch stuck past its own deadline: give up on it, it is re-sent later
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=deadline_s)
        for shard in self._shards.values():
            if not shard.db.ready.is_set():  # never began: nothing in hand, nothing to flush
                continue
            try:  # one last flush, so a clean stop leaves nothing for the next start
                await asyncio.wait_for(self.relay_once(shard.db), deadline_s)
            except Exception as exc:
                log.warning(
                    "outbox not flushed at shutdown; rows wait for the next start",
                    extra={"shard": shard.db.name, "error": repr(exc)},
                )


class ShardRelay:
    """The relay's loop over one shard: publishing, the backlog gauges and the
    housekeeping, each with its own failures."""

    def __init__(self, relay: OutboxRelay, db: Database):
        self.relay = relay
        self.db = db
        self.wakeup = asyncio.Event()
        self.pending = 0
        self.oldest_age_s = 0.0
        self._next_housekeeping = 0.0
        self._next_gauges = 0.0
        fields = {"shard": db.name}
        self._publishing = Failures(
            "outbox_publish",
            relay.is_outage,
            logger=log,
            outage="outbox relay cannot publish; rows wait",
            recovered="outbox relay recovered",
            fields=fields,
        )
        self._gauges = Failures("outbox_gauges", relay.is_outage, logger=log, fields=fields)
        self._housekeeping_failures = Failures("outbox_housekeeping", relay.is_outage, logger=log, fields=fields)

    async def run(self) -> None:
        # Until the shard is reached and migrated there is nothing to relay, and its manager
        # already says so: without this wait, every start logged a relay "outage".
        await self.db.ready.wait()
        relay = self.relay
        backoff = Backoff(relay.poll_interval_s, MAX_BACKOFF_S)
        while not relay._stopping:
            try:
                published = await relay.relay_once(self.db)
            except Exception as exc:
                metrics.OUTBOX_PUBLISH_FAILURES.inc()
                self._publishing.failed(exc)
                await self._refresh_gauges()  # the backlog's age is what alerts watch now
                await self._sleep(backoff.next())
                continue
            self._publishing.succeeded()
            backoff.reset()
            if published == relay.batch_size:
                continue  # more may be waiting
            if time.monotonic() >= self._next_gauges:
                self._next_gauges = time.monotonic() + GAUGES_EVERY_S
                await self._refresh_gauges()
            await self._housekeeping_when_due()
            await self._sleep(relay.poll_interval_s)

    async def _sleep(self, seconds: float) -> None:
        """Wait for a commit's notify, a stop, or ``seconds``, whichever comes first."""
        if self.wakeup.is_set():  # a commit came during the batch: on at once, no turn of the loop lost
            self.wakeup.clear()
            return
        try:
            await asyncio.wait_for(self.wakeup.wait(), seconds)
        except TimeoutError:
            pass
        self.wakeup.clear()

    async def _refresh_gauges(self) -> None:
        """The backlog's size and age; during an outage they keep their last values."""
        try:
            await self._read_backlog()
        except Exception as exc:
            if not self.relay.is_outage(exc):  # an outage is publishing's to report, and dependency_up's
                self._gauges.failed(exc)
            return
        self._gauges.succeeded()

    async def _read_backlog(self) -> None:
        row = await self.db.fetchone(
            "SELECT COUNT(*) AS pending, MIN(created_at) AS oldest FROM outbox WHERE published_at IS NULL"
        )
        assert row is not None
        oldest = row["oldest"]
        self.pending = row["pending"]
        self.oldest_age_s = max((codec.utc_now() - oldest).total_seconds(), 0) if oldest else 0
        self.relay._set_gauges()

    async def _housekeeping_when_due(self) -> None:
        """Once every ``HOUSEKEEPING_EVERY_S``, whether the last turn worked or not."""
        if time.monotonic() < self._next_housekeeping:
            return
        self._next_housekeeping = time.monotonic() + HOUSEKEEPING_EVERY_S
        try:
            await self._housekeeping()
        except Exception as exc:
            if not self.relay.is_outage(exc):
                self._housekeeping_failures.failed(exc)
            return
        self._housekeeping_failures.succeeded()

    async def _housekeeping(self) -> None:
        """Forget published events past the replay window, and old idempotency keys."""
        relay = self.relay
        async with self.db.cursor() as cur:
            await cur.execute(
                "DELETE FROM outbox WHERE published_at IS NOT NULL"
                " AND created_at < UTC_TIMESTAMP(6) - INTERVAL %s SECOND LIMIT 5000",
                (int(relay.retention_hours * 3600),),
            )
            await cur.execute(
                "DELETE FROM idempotency_keys WHERE created_at < UTC_TIMESTAMP(6) - INTERVAL %s SECOND LIMIT 5000",
                (int(relay.idempotency_ttl_hours * 3600),),
            )
