"""``python -m bench.ceilings`` (after ``make bench``, in its stores): two costs that grow with
the whole fleet's event rate, not an instance's share, for docs/SCALING.md; writes
docs/bench/ceilings.json.

- **relay**: events/s one outbox relay publishes from a backlog of ``EVENTS``. Relays take the
  oldest rows under a lock (domain/outbox.py), so the fleet's together publish no faster.
- **broadcast**: an instance's CPU per event none of its sockets wants (every instance reads
  every event): the topic read from its start by ``BroadcastConsumer.read_batch``, the
  service's own loop step, into a hub without sockets."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import time
import uuid

from bench import env
from bench.analytics import payment_created
from bench.env import DOCS_BENCH, log
from domain import outbox
from domain.outbox import OutboxRelay
from managers import config as service_config
from managers.kafka_consumer import BroadcastConsumer
from managers.kafka_producer import KafkaProducerManager
from managers.mysql import MySQLManager
from managers.redis import RedisManager
from managers.websocket_hub import WebSocketHub

EVENTS = 50_000
USERS = 10_000
WRITE_CHUNK = 500


def bench_config() -> dict:
    """The configuration the bench's service processes run with: the bench's stores."""
    return service_config.load(env=env.service_env({}))


async def relay(cfg: dict) -> dict:
    """Every shard's relay draining its own backlog at once: the fleet's ceiling is their sum."""
    mysql = MySQLManager.instance()
    await mysql.wait_ready(60)
    rng, users = random.Random(7), [str(uuid.uuid4()) for _ in range(USERS)]
    for _ in range(EVENTS // WRITE_CHUNK):
        now = dt.datetime.now(dt.UTC)
        by_shard: dict[str, list] = {}
        for _ in range(WRITE_CHUNK):
            user = rng.choice(users)
            by_shard.setdefault(mysql.for_id(user).name, []).append(outbox.insert(payment_created(rng, user, now)))
        for name, chunk in by_shard.items():
            async with mysql.databases[name].transaction() as tx:
                await tx.script(chunk, commit=True)
    relay = OutboxRelay(cfg["outbox"], cfg["payments"]["idempotency_ttl_hours"])  # driven here, not started

    async def drain(db) -> int:
        published = 0
        while sent := await relay.relay_once(db):
            published += sent
        return published

    wall, cpu = time.perf_counter(), time.process_time()
    published = sum(await asyncio.gather(*(drain(db) for db in mysql.all())))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    log(f"relay: {published:,} events from {len(mysql.all())} shard(s) in {wall:.1f} s")
    out = {"events": published, "shards": len(mysql.all()), "batch_size": relay.batch_size, "seconds": round(wall, 2)}
    return out | {"events_per_s": round(published / wall), "relay_cpu_us_per_event": round(cpu / published * 1e6, 1)}


async def broadcast(cfg: dict) -> dict:
    reader = BroadcastConsumer(cfg)
    reader.consumer = await reader._open()
    try:
        parts = sorted(reader.consumer.assignment())
        ends = await reader.consumer.end_offsets(parts)
        starts = await reader.consumer.beginning_offsets(parts)
        total = sum(ends[tp] - starts[tp] for tp in parts)
        await reader.consumer.seek_to_beginning(*parts)
        read, wall, cpu = 0, time.perf_counter(), time.process_time()
        while read < total:
            read += await reader.read_batch()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await asyncio.wait_for(reader.consumer.stop(), 15)
    log(f"broadcast: {read:,} events in {wall:.1f} s, {cpu:.1f} CPU-s")
    out = {"events": read, "seconds": round(wall, 2), "cpu_us_per_event": round(cpu / read * 1e6, 1)}
    return out | {"events_per_cpu_s": round(read / cpu)}


async def measure() -> dict:
    cfg = bench_config()
    managers = [cls.start(cfg) for cls in (MySQLManager, RedisManager, KafkaProducerManager, WebSocketHub)]
    try:
        return {"relay": await relay(cfg), "broadcast": await broadcast(cfg)}
    finally:
        await asyncio.gather(*(manager.close() for manager in managers))


def main() -> None:
    results = {"at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": env.machine()}
    results |= {"load_before": env.background_load()} | asyncio.run(measure())
    (DOCS_BENCH / "ceilings.json").write_text(json.dumps(results, indent=2) + "\n")
    log(json.dumps({k: results[k] for k in ("relay", "broadcast")}))


if __name__ == "__main__":
    main()
