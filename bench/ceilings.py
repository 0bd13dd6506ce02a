"""``python -m bench.ceilings``: two costs that grow with the whole fleet's event rate, not an
instance's share, for docs/SCALING.md; writes docs/bench/ceilings.json (with ``BENCH_OUT=cluster``
docs/bench/cluster/ceilings.json). It empties the bench's stores first (bench/env.py).

- **relay**: events/s the outbox relays publish from a backlog of ``EVENTS`` payment events
  of ``USERS`` users. One relay at a time holds a physical shard's oldest rows
  (``OutboxRelay.relay_once`` locks them until they are marked; a second instance's relay
  waits), so a shard publishes no faster than one loop, and the fleet's ceiling is the sum
  over the shards. Each relay runs as it would in a fleet: in a process of its own
  (``python -m bench.ceilings drain SHARD``), all started at one signal, every process's CPU
  read from /proc meanwhile. With a sharded configuration, three layouts on the same
  servers and the same Kafka, in alternating rounds (``BENCH_CEILING_ROUNDS``):

  - ``1 shard``: the home alone holding every logical shard (config's map otherwise);
  - ``N shards, a process each``: config's map, a relay process per physical shard, as a
    fleet of instances holds them;
  - ``N shards, one process``: config's map, one process running every shard's loop, as one
    instance alone does (its loops share one Python thread).

- **broadcast**: an instance's CPU per event none of its sockets wants (every instance reads
  every event): the topic read from its start by ``BroadcastConsumer.read_batch``, the
  service's own loop step, into a hub without sockets."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid

from bench import env
from bench.analytics import payment_created
from bench.env import log
from domain import outbox
from domain.outbox import OutboxRelay
from managers import config as service_config
from managers.kafka_consumer import BroadcastConsumer
from managers.kafka_producer import KafkaProducerManager
from managers.mysql import MySQLManager
from managers.websocket_hub import WebSocketHub

EVENTS = int(os.environ.get("BENCH_CEILING_EVENTS", 50_000))
ROUNDS = int(os.environ.get("BENCH_CEILING_ROUNDS", 3))
USERS = 10_000
WRITE_CHUNK = 500
READY_TIMEOUT_S = 90


def bench_config(overrides: dict[str, str] | None = None) -> dict:
    """The configuration the bench's service processes run with (the bench's stores), and
    ``overrides`` (SINGLETON_* variables) on top."""
    return service_config.load(env.CONFIG, env=env.service_env(overrides or {}))


def layouts() -> dict[str, tuple[dict[str, str], list[list[str]]]]:
    """Each layout: its SINGLETON_* overrides, and the shards each relay process drains."""
    names = list(env.shards())
    if len(names) == 1:
        return {"1 shard": ({}, [names])}
    return {
        "1 shard": (env.one_shard(), [names[:1]]),
        f"{len(names)} shards, a process each": ({}, [[name] for name in names]),
        f"{len(names)} shards, one process": ({}, [names]),
    }


# -- the relay -----------------------------------------------------------------------------------
async def migrate() -> None:
    """Every physical shard's schema (a layout of one shard would leave the others' alone)."""
    mysql = MySQLManager.start(bench_config())
    try:
        await mysql.wait_ready(60)
    finally:
        await mysql.close()


async def write_backlog(overrides: dict[str, str], seed: int) -> dict[str, int]:
    """``EVENTS`` unpublished events of ``USERS`` random users, each on its user's shard in this
    layout, after emptying every shard's outbox (each round starts from the same table)."""
    mysql = MySQLManager.start(bench_config(overrides))
    try:
        await mysql.wait_ready(60)
        for db in env.shards():
            with contextlib.closing(env.mysql_connect(shard=db, owner=True)) as conn, conn.cursor() as cur:
                cur.execute("TRUNCATE TABLE outbox")  # DDL: the migration user's
        rng, users = random.Random(seed), [str(uuid.uuid4()) for _ in range(USERS)]
        written: dict[str, int] = {}
        for _ in range(EVENTS // WRITE_CHUNK):
            now = dt.datetime.now(dt.UTC)
            by_shard: dict[str, list] = {}
            for _ in range(WRITE_CHUNK):
                user = rng.choice(users)
                by_shard.setdefault(mysql.for_id(user).name, []).append(outbox.insert(payment_created(rng, user, now)))
            for name, chunk in by_shard.items():
                async with mysql.databases[name].transaction() as tx:
                    await tx.script(chunk, commit=True)
                written[name] = written.get(name, 0) + len(chunk)
        return written
    finally:
        await mysql.close()


def drain_round(layout: str, overrides: dict[str, str], groups: list[list[str]]) -> dict:
    """The relay processes of one layout, started at one signal; their events/s and CPU."""
    environ = env.service_env(overrides) | {"PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen(
            [env.PY, "-W", "ignore", "-m", "bench.ceilings", "drain", ",".join(group)],
            cwd=env.REPO,
            env=environ,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for group in groups
    ]
    try:
        for proc in procs:  # each connected to its shards and to Kafka
            if (line := proc.stdout.readline().strip()) != "ready":
                raise RuntimeError(f"relay process {proc.args[-1]}: {line or 'exited'}")
        names = {proc.pid: f"relay {'+'.join(group)}" for proc, group in zip(procs, groups, strict=True)}
        before, t0 = env.processes(), time.monotonic()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = [json.loads(proc.stdout.readline()) for proc in procs]
        cpu = env.cpu_split(before, env.processes(), time.monotonic() - t0, names | {os.getpid(): "bench"})
    finally:
        for proc in procs:
            proc.stdin.close()
            proc.wait(30)
    events = sum(r["events"] for r in reports)
    wall = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    out = {"layout": layout, "processes": len(procs), "events": events, "seconds": round(wall, 2)}
    out["load_average"] = round(os.getloadavg()[0], 2)
    out |= {"events_per_s": round(events / wall), "cpu_cores": cpu}
    out["per_process"] = [
        {
            "shards": r["shards"],
            "events": r["events"],
            "events_per_s": round(r["events"] / (r["ended"] - r["started"])),
            "relay_cpu_us_per_event": round(r["cpu_s"] / r["events"] * 1e6, 1),
            "kafka_wait_share": round(r["kafka_wait_s"] / (len(r["shards"]) * (r["ended"] - r["started"])), 2),
        }
        for r in reports
    ]
    log(f"relay, {layout}: {events:,} events in {wall:.2f} s, {out['events_per_s']:,}/s; CPU {cpu}")
    return out


async def drain(names: list[str]) -> None:
    """A relay process (``drain SHARD[,SHARD]``): connect, say ``ready``, wait for ``go`` on stdin,
    publish the named shards' backlogs (a loop each, as ``OutboxRelay`` runs them), report."""
    cfg = bench_config()
    managers = [cls.start(cfg) for cls in (MySQLManager, KafkaProducerManager)]
    try:
        mysql = MySQLManager.instance()
        await mysql.wait_ready(READY_TIMEOUT_S)
        await KafkaProducerManager.instance().ping()  # the producer open, the topic's metadata in
        relay = OutboxRelay(cfg["outbox"], cfg["payments"]["idempotency_ttl_hours"])  # driven here, not started
        producer, waited = KafkaProducerManager.instance(), [0.0]
        send_batch = producer.send_batch

        async def timed_send_batch(messages, topic=None) -> None:  # the time a batch waits on Kafka's acks
            t0 = time.perf_counter()
            try:
                await send_batch(messages, topic)
            finally:
                waited[0] += time.perf_counter() - t0

        producer.send_batch = timed_send_batch  # type: ignore[method-assign]

        async def loop(name: str) -> int:
            published = 0
            while sent := await relay.relay_once(mysql.databases[name]):
                published += sent
            return published

        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        started, cpu = time.time(), time.process_time()
        events = sum(await asyncio.gather(*(loop(name) for name in names)))
        ended, cpu = time.time(), time.process_time() - cpu
        report = {"shards": names, "events": events, "started": started, "ended": ended, "cpu_s": cpu}
        print(json.dumps(report | {"kafka_wait_s": waited[0]}))
    finally:
        await asyncio.gather(*(manager.close() for manager in managers))


def relay() -> dict:
    """Every layout, ``ROUNDS`` rounds, the order turned round each round (the machine's drift
    falls on every layout alike); a ratio to ``1 shard`` is taken within each round."""
    plan, rounds = layouts(), []
    asyncio.run(migrate())
    for n in range(ROUNDS):
        order = list(plan) if n % 2 == 0 else list(reversed(plan))
        runs = {}
        for layout in order:
            overrides, groups = plan[layout]
            written = asyncio.run(write_backlog(overrides, seed=n))
            runs[layout] = drain_round(layout, overrides, groups) | {"backlog": written}
        one = runs["1 shard"]["events_per_s"]
        for run in runs.values():
            run["ratio_to_1_shard"] = round(run["events_per_s"] / one, 3)
        rounds.append([runs[layout] for layout in plan])
    summary = {
        layout: {
            "events_per_s_median": round(statistics.median(r[i]["events_per_s"] for r in rounds)),
            "ratio_to_1_shard_median": round(statistics.median(r[i]["ratio_to_1_shard"] for r in rounds), 3),
            "ratios": [r[i]["ratio_to_1_shard"] for r in rounds],
        }
        for i, layout in enumerate(plan)
    }
    batch = bench_config()["outbox"]["batch_size"]
    return {"events": EVENTS, "users": USERS, "batch_size": batch, "summary": summary, "rounds": rounds}


# -- the broadcast -------------------------------------------------------------------------------
async def broadcast(cfg: dict) -> dict:
    hub = WebSocketHub.start(cfg)
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
        await hub.close()
    log(f"broadcast: {read:,} events in {wall:.1f} s, {cpu:.1f} CPU-s")
    out = {"events": read, "seconds": round(wall, 2), "cpu_us_per_event": round(cpu / read * 1e6, 1)}
    return out | {"events_per_cpu_s": round(read / cpu)}


def main() -> None:
    if sys.argv[1:2] == ["drain"]:
        return asyncio.run(drain(sys.argv[2].split(",")))
    results = {"at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": env.machine()}
    results |= {"config": str(env.CONFIG.relative_to(env.REPO)), "load_before": env.background_load()}
    env.reset_stores()
    results["relay"] = relay()
    results["broadcast"] = asyncio.run(broadcast(bench_config()))
    results["load_after"] = env.background_load()
    env.DOCS_OUT.mkdir(parents=True, exist_ok=True)
    (env.DOCS_OUT / "ceilings.json").write_text(json.dumps(results, indent=2) + "\n")
    log(json.dumps({"relay": results["relay"]["summary"], "broadcast": results["broadcast"]}))


if __name__ == "__main__":
    main()
