"""The producer and both readers on three brokers: one broker SIGKILLed under 200 payments/s.

The service runs as a child process on the cluster stack, on a topic of the test's own
(the stack's shape: 12 partitions, replication factor 3, min.insync.replicas 2). A careful
client (chaos/load.py: each payment retried with its Idempotency-Key until accepted) sends
200 payments/s over 20 users, each user watched by a WebSocket. The broker killed is the
analytics group's coordinator (it also leads a third of the partitions). Then: no payment
lost, every accepted payment's event published (the outbox empty) and on the topic, each
socket given each of its user's events exactly once, analytics equal to the rows, and no
reader without progress for more than 15 s while messages waited for it (the relay's own
longest gap is reported: while no partition's leader is elected it cannot publish).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
import tornado.websocket
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from chaos.load import Client, Load
from tests.cluster.faults import (
    Service,
    admin_key,
    restore,
    running_service,
    sample,
    service_overrides,
    sigkill,
    sql,
)
from tests.helpers import in_thread, wait_until

RATE_PER_S = 200
USERS = 20
BEFORE_KILL_S = 8  # seconds of payments before the kill
AFTER_KILL_S = 25  # and after it (a broker is fenced after 9 s by default)
STALL_LIMIT_S = 15  # the issue: no reader without progress for longer, while it had work
PARTITIONS = 12
DRAIN_S = 120
TOPIC_MIN_INSYNC = "2"


async def admin_client(bootstrap: str) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await asyncio.wait_for(admin.start(), 30)
    return admin


async def in_sync(bootstrap: str, topic: str, replicas: int = 3) -> bool:
    """Every partition of ``topic`` has ``replicas`` replicas in sync."""
    admin = await admin_client(bootstrap)
    try:
        (described,) = await asyncio.wait_for(admin.describe_topics([topic]), 15)
    finally:
        await asyncio.wait_for(admin.close(), 15)
    partitions = described.get("partitions") or []
    return len(partitions) == PARTITIONS and all(len(p["isr"]) == replicas for p in partitions)


@dataclass
class Watcher:
    """A user's WebSocket: every payment_created frame, with when it came."""

    user_id: str
    conn: tornado.websocket.WebSocketClientConnection
    frames: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (arrived, time.time()), frame
    closing: bool = False
    closed_by_server: int | None = None  # the close code, had the server closed it

    async def read(self) -> None:
        while (message := await self.conn.read_message()) is not None:
            frame = json.loads(message)
            if frame.get("type") == "payment_created":
                self.frames.append((time.time(), frame))
        if not self.closing:
            self.closed_by_server = self.conn.close_code or -1

    def close(self) -> None:
        self.closing = True
        self.conn.close()

    def event_ids(self) -> Counter[str]:
        return Counter(frame["event_id"] for _, frame in self.frames)


async def watch(service: Service, key: str, user_id: str) -> Watcher:
    code, body = await service.request("POST", "/api/v1/ws-tokens", key, {"user_id": user_id})
    assert code == 201, body
    query = urllib.parse.urlencode({"token": body["token"], "client_id": uuid.uuid4().hex[:12]})
    conn = await tornado.websocket.websocket_connect(f"ws://127.0.0.1:{service.port}/ws?{query}", connect_timeout=10)
    hello = json.loads(await asyncio.wait_for(conn.read_message(), 10))
    assert hello["type"] == "connected", hello
    return Watcher(user_id, conn)


@dataclass
class Published:
    """The relay's published counter (/metrics), sampled four times a second."""

    service: Service
    samples: list[tuple[float, float]] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            try:
                text = await self.service.metrics()
                self.samples.append((time.monotonic(), sample(text, "singleton_events_published_total")))
            except OSError:
                pass
            await asyncio.sleep(0.25)

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time between ``start`` and ``end`` (payments kept coming) without a publish."""
        pairs = zip(self.samples, self.samples[1:], strict=False)
        moves = [start] + [t for (_, a), (t, b) in pairs if b > a and start < t < end] + [end]
        return max(b - a for a, b in zip(moves, moves[1:], strict=False))


@dataclass
class GroupProgress:
    """The analytics group's committed offsets against the topic's end, sampled twice a
    second by an admin client of the test's own (a sample that fails is skipped)."""

    bootstrap: str
    topic: str
    group: str
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (when, committed, end)

    async def run(self) -> None:
        admin = await admin_client(self.bootstrap)
        ends = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, request_timeout_ms=5000)
        await asyncio.wait_for(ends.start(), 30)
        tps = [TopicPartition(self.topic, p) for p in range(PARTITIONS)]
        try:
            while True:
                try:
                    committed = await asyncio.wait_for(admin.list_consumer_group_offsets(self.group), 2)
                    end = await asyncio.wait_for(ends.end_offsets(tps), 2)
                    done = sum(max(o.offset, 0) for tp, o in committed.items() if tp.topic == self.topic)
                    self.samples.append((time.monotonic(), done, sum(end.values())))
                except Exception:  # noqa: BLE001 (a broker or the coordinator out of reach: no sample)
                    pass
                await asyncio.sleep(0.5)
        finally:
            await asyncio.wait_for(ends.stop(), 15)
            await asyncio.wait_for(admin.close(), 15)

    def longest_stall(self) -> tuple[float, float]:
        """The longest time the group's committed offsets stood still while messages waited
        for it (the end beyond them): (seconds, when it began)."""
        longest, began, since, last = 0.0, 0.0, None, None
        for t, done, end in self.samples:
            if last is not None and done > last:
                since = None
            elif end > done and since is None:
                since = t
            last = done
            if since is not None and t - since > longest:
                longest, began = t - since, since
        return longest, began


def broadcast_stall(arrivals: list[tuple[float, float]]) -> tuple[float, float]:
    """From (published, arrived) times of every event the sockets got (Kafka's timestamp, and
    the socket's clock): the longest time no event arrived while one was published and not
    yet arrived. (seconds, when it began), wall clock."""
    arrivals = sorted(arrivals, key=lambda pa: pa[1])
    pending_from = [0.0] * len(arrivals)  # the earliest publish among the events arriving from i on
    earliest = float("inf")
    for i in range(len(arrivals) - 1, -1, -1):
        earliest = min(earliest, arrivals[i][0])
        pending_from[i] = earliest
    longest, began = 0.0, 0.0
    for i in range(len(arrivals) - 1):
        waiting_since = max(arrivals[i][1], pending_from[i + 1])
        if arrivals[i + 1][1] - waiting_since > longest:
            longest, began = arrivals[i + 1][1] - waiting_since, waiting_since
    return longest, began


async def topic_events(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every event on ``topic``, from its beginning to its end now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await asyncio.wait_for(consumer.start(), 30)
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        ends = await asyncio.wait_for(consumer.end_offsets(partitions), 30)
        read_to = await asyncio.wait_for(consumer.beginning_offsets(partitions), 30)  # the next offset to read
        await consumer.seek_to_beginning(*partitions)
        events: list[dict[str, Any]] = []

        async def read_to_end() -> bool:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, records in batches.items():
                events.extend({**json.loads(r.value), "_published": r.timestamp / 1000} for r in records)
                read_to[tp] = records[-1].offset + 1
            return all(read_to[tp] >= ends[tp] for tp in partitions)

        await wait_until(read_to_end, timeout=60, interval=0, what=f"{topic} read to its end")
        return events
    finally:
        await asyncio.wait_for(consumer.stop(), 15)


async def analytics_of(service: Service, key: str, user_id: str) -> tuple[int, Decimal] | None:
    code, stats = await service.request("GET", f"/api/v1/analytics/users/{user_id}", key)
    if code != 200 or stats is None:
        return None
    usd = stats["by_currency"].get("USD", {})
    return stats["payment_count"], Decimal(usd.get("total", "0.00"))


# Heavy: 200 payments/s with a socket per user for minutes. On this shared 2-core machine it
# passed 3 of 6 runs (analytics starved behind FerretDB, or sockets behind, at load 10-24),
# so it runs in make test-cluster-heavy, not in CI's make test-cluster.
@pytest.mark.heavy
@pytest.mark.timeout(900)
@pytest.mark.gen_test(timeout=900)
async def test_a_broker_killed_under_200_payments_per_second(cluster_config, tmp_path):
    overrides = service_overrides(cluster_config, "kafka_failover")
    bootstrap = overrides["kafka"]["bootstrap_servers"]
    topic = overrides["kafka"]["topic"] = f"singleton-events-test-{uuid.uuid4().hex[:8]}"
    admin = await admin_client(bootstrap)
    try:
        await asyncio.wait_for(
            admin.create_topics(
                [NewTopic(topic, PARTITIONS, 3, topic_configs={"min.insync.replicas": TOPIC_MIN_INSYNC})]
            ),
            30,
        )
        brokers = {b["node_id"]: (b["host"], b["port"]) for b in (await admin.describe_cluster())["brokers"]}
    finally:
        await asyncio.wait_for(admin.close(), 15)
    await wait_until(lambda: in_sync(bootstrap, topic), timeout=60, interval=0.5, what="the topic in sync")

    key = await admin_key(overrides)
    killed = None
    try:
        async with running_service(overrides, tmp_path / "service.log") as service:

            async def analytics_joined() -> bool:
                code, report = await service.request("GET", "/health", key)
                return code == 200 and report["consumers"]["analytics"]["lag"] == 0 and report["status"] == "ok"

            await wait_until(analytics_joined, timeout=90, interval=0.5, what="the analytics reader in its group")
            users = []
            for n in range(USERS):
                code, user = await service.request(
                    "POST", "/api/v1/users", key, {"email": f"{uuid.uuid4().hex}@example.com", "name": f"Payer {n}"}
                )
                assert code == 201, user
                users.append(user["id"])
            watchers = [await watch(service, key, user_id) for user_id in users]
            readers = [asyncio.create_task(w.read()) for w in watchers]
            published = Published(service)
            group = GroupProgress(bootstrap, topic, overrides["kafka"]["analytics_group"])
            samplers = [asyncio.create_task(published.run()), asyncio.create_task(group.run())]
            client = Client(service.url, key)
            load = Load(client, users, rate=RATE_PER_S)
            try:
                load.start()
                started = time.monotonic()

                await asyncio.sleep(BEFORE_KILL_S)  # deliberate: steady payments before the fault
                coordinator = await find_coordinator(bootstrap, overrides["kafka"]["analytics_group"])
                killed_at = time.monotonic()
                killed = sigkill(*brokers[coordinator])
                await asyncio.sleep(AFTER_KILL_S)  # deliberate: payments through the fault and after
                ended = time.monotonic()
                await load.stop()  # the last writes answered (or given up on)
                sent_rate = len(load.writes) / (ended - started)

                # Everything committed is published: the outbox drains.
                async def drained() -> bool:
                    rows = await in_thread(sql, overrides, "SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
                    return rows[0][0] == 0

                await wait_until(drained, timeout=DRAIN_S, interval=0.5, what="the outbox drained")
                drained_s = time.monotonic() - ended
                rows = await in_thread(sql, overrides, "SELECT id, user_id, amount_minor FROM payments")
                outbox = await in_thread(
                    sql, overrides, "SELECT event_id, partition_key FROM outbox WHERE event_type = 'payment_created'"
                )
                expected = {user_id: set() for user_id in users}
                for event_id, user_id in outbox:
                    expected[user_id].add(event_id)

                # Every socket has every event of its user (the broadcast reader read to the end).
                await wait_until(
                    lambda: all(expected[w.user_id] <= set(w.event_ids()) for w in watchers),
                    timeout=60,
                    interval=0.25,
                    what="every event on its user's socket",
                )

                async def broadcast_at_end() -> bool:
                    code, report = await service.request("GET", "/health", key)
                    return code == 200 and report["consumers"]["broadcast"]["lag"] == 0

                await wait_until(broadcast_at_end, timeout=30, interval=0.25, what="the broadcast reader at the end")

                # Analytics equal to the rows, user by user.
                want = {user_id: (0, Decimal("0.00")) for user_id in users}
                for _, user_id, minor in rows:
                    count, total = want[user_id]
                    want[user_id] = (count + 1, total + Decimal(minor) / 100)
                seen: dict[str, tuple[int, Decimal] | None] = {}

                async def analytics_exact() -> bool:
                    for user_id in users:
                        if seen.get(user_id) != want[user_id]:
                            seen[user_id] = await analytics_of(service, key, user_id)
                            current = seen[user_id]
                            assert current is None or current[0] <= want[user_id][0], (user_id, current, want[user_id])
                    return all(seen[u] == want[u] for u in users)

                await wait_until(analytics_exact, timeout=DRAIN_S, interval=0.5, what="analytics equal to the rows")
            finally:
                await load.stop()
                print(f"\nthe load: {len(load.writes)} payments, outcomes {Counter(w.final for w in load.writes)}")
                for sampler in samplers:
                    sampler.cancel()
                await asyncio.gather(*samplers, return_exceptions=True)
                for w in watchers:
                    w.close()
                await asyncio.gather(*readers, return_exceptions=True)
                client.close()

        # The accounting.
        writes = load.writes
        accepted_ids = {w.payment_id for w in writes if w.accepted}
        row_ids = {payment_id for payment_id, _, _ in rows}
        events = [e for e in await topic_events(bootstrap, topic) if e["type"] == "payment_created"]
        on_topic = Counter(e["event_id"] for e in events)
        announced = {e["data"]["id"] for e in events}
        publish_times = {e["event_id"]: e["_published"] for e in events}
        arrivals = [(publish_times[f["event_id"]], arrived) for w in watchers for arrived, f in w.frames]
        stalls = {"broadcast": broadcast_stall(arrivals), "analytics": group.longest_stall()}
        kill_wall = time.time() - (time.monotonic() - killed_at)
        kill_offsets = {"broadcast": kill_wall, "analytics": killed_at}
        duplicates_seen = sum(n - 1 for w in watchers for n in w.event_ids().values())
        print(
            f"\nkafka broker {killed} killed: {len(writes)} payments sent at {sent_rate:.0f}/s,"
            f" {len(accepted_ids)} accepted ({Counter(w.final for w in writes if not w.accepted)} not),"
            f" {len(row_ids)} rows; outbox drained {drained_s:.1f} s after the load;"
            f" {len(on_topic)} events on the topic ({sum(on_topic.values()) - len(on_topic)} published twice);"
            f" relay's longest gap {published.longest_gap(started, ended):.1f} s; longest reader stalls: "
            + ", ".join(
                f"{name} {s:.1f} s (from {began - kill_offsets[name]:+.1f} s)" for name, (s, began) in stalls.items()
            )
        )
        assert accepted_ids <= row_ids  # 0 payments lost (a row without its 201: a client that gave up)
        assert announced == row_ids  # 0 events lost
        assert set(on_topic) == {e for ids in expected.values() for e in ids}
        assert duplicates_seen == 0, "a socket got an event twice"
        for w in watchers:
            assert set(w.event_ids()) == expected[w.user_id]
        assert [w.closed_by_server for w in watchers] == [None] * len(watchers)  # none closed as slow
        for name, (stall_s, _) in stalls.items():
            assert stall_s <= STALL_LIMIT_S, f"{name} made no progress for {stall_s:.1f} s"
    finally:
        if killed is not None:
            await restore("kafka-cluster")  # the broker back, the stack's topic in sync
            await wait_until(lambda: in_sync(bootstrap, topic), timeout=120, interval=1, what="the test topic in sync")
        admin = await admin_client(bootstrap)
        try:
            await asyncio.wait_for(admin.delete_topics([topic]), 30)
        finally:
            await asyncio.wait_for(admin.close(), 15)


async def find_coordinator(bootstrap: str, group: str) -> int:
    admin = await admin_client(bootstrap)
    try:
        return await asyncio.wait_for(admin.find_coordinator(group), 15)
    finally:
        await asyncio.wait_for(admin.close(), 15)
