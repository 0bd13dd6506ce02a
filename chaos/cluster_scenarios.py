"""The cluster scenarios (issue 15), in the order a run plays them, on chaos/cluster.py's
stack: a Redis master, a Kafka broker and a MariaDB shard SIGKILLed under load, and a
logical shard moved under load. Each is ``Run.loaded``'s frame (steady idempotent writes,
the fault, recovery, the accounting of every payment, which judges the scenario as in the
everyday stage) plus what the issue asks of it, measured into ``Scenario.figures``;
chaos/cluster_report.py holds each of those measures against what the issue asks.

``CLUSTER_SCENARIOS`` maps a key (``CHAOS_SCENARIOS=shard-move`` plays some only) to it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from chaos.cluster import ClusterStack
from chaos.load import Attempt, Load, Write
from chaos.run import Run, Scenario
from chaos.stack import log
from chaos.watches import CACHE_HITS, LIMITER_MISSED, REDIS_MISSED, EventSockets, MetricsWatch
from managers.shards import logical_shard

# The load and the faults (what the issue asks of them: chaos/cluster_report.py).
REDIS_FAILOVER_DEADLINE_S = 30.0  # how long the run waits for a promotion at all
REDIS_READS_PER_S = 10.0  # GET /api/v1/users/:id beside the writes: the cache's read-through path
REDIS_DOWN_S = 10.0  # the killed master is restarted (as a replica) this long after the kill
BUCKET_SEARCH_S = 10.0
KAFKA_RATE_PER_S = 200.0
KAFKA_USERS = 12  # 200 writes/s on 3 users would queue on 3 row locks
KAFKA_DOWN_S = 20.0  # longer than a broker's session timeout (9 s): the cluster fences it
WS_DEADLINE_S = 60.0  # for the last events to reach the sockets once the outbox is drained
SHARD_DOWN_S = 10.0
SHARD_USERS_EACH = 3  # users of each physical shard in the shard scenario
MOVE_SLACK_S = 1.5  # a refusal this long past the switch's end is still the switch's (a map refresh)
MOVING_WEIGHT = 3  # the moved user's share of the writes, against 1 for each other user


def cluster(run: Run) -> ClusterStack:
    assert isinstance(run.stack, ClusterStack)
    return run.stack


def outage_end(s: Scenario, load: Load) -> float:
    """The last moment of the fault's window: its end, or the last attempt refused in it."""
    refused = [a.started + a.seconds for w in load.writes for a in w.attempts if a.outcome != 201]
    return max([s.fault_end or 0.0, *[t for t in refused if t >= (s.fault_start or 0.0)]])


def kind(a: Attempt) -> str:
    """What an attempt that got no 201 got: "503 dependency_unavailable", "connection" (no answer)."""
    return " ".join(str(x) for x in (a.outcome, a.error) if x is not None)


def answers_by_shard(stack: ClusterStack, writes: list[Write], start: float, end: float) -> dict[str, dict]:
    """Per physical shard (the user's, as the map was when the scenario began): attempts
    sent between ``start`` and ``end``, what came back, and every kind of refusal counted
    ("503 dependency_unavailable", "connection": no answer)."""
    out: dict[str, dict] = {}
    for write in writes:
        shard = stack.shard_of(write.user_id)
        seen = out.setdefault(shard, {"attempts": 0, "201": 0, "503": 0, "503_without_retry_after": 0, "refused": {}})
        for a in write.attempts:
            if not start <= a.started <= end:
                continue
            seen["attempts"] += 1
            if a.outcome == 201:
                seen["201"] += 1
                continue
            seen["refused"][kind(a)] = seen["refused"].get(kind(a), 0) + 1
            seen["503"] += a.outcome == 503
            seen["503_without_retry_after"] += a.outcome == 503 and a.retry_after is None
    return out


# -- a Redis master ----------------------------------------------------------------------------
def bucket_master(stack: ClusterStack) -> tuple[str, str] | None:
    """The master holding the rate limiter's bucket of the run's writes (the admin key's
    ``w`` bucket; else any bucket), and the bucket: the kill that reaches the limiter."""
    found = stack.redis_keys("*rl:*")
    for suffix in (":w", ""):
        for master, keys in sorted(found.items()):
            for key in keys:
                if key.rstrip("}").endswith(suffix):
                    return master, key
    return None


async def choose_master(stack: ClusterStack) -> tuple[str, str]:
    """The master to kill: the one with the writes' bucket (it lives 2 s after its last use,
    and a busy service may skip Redis for a moment: looked for over BUCKET_SEARCH_S), else
    the one caching most of the users."""
    deadline = time.monotonic() + BUCKET_SEARCH_S
    while time.monotonic() < deadline:
        if (found := await asyncio.to_thread(bucket_master, stack)) is not None:
            return found
        await asyncio.sleep(0.25)  # deliberate: the next share the limiter takes creates the bucket
    cached = await asyncio.to_thread(stack.redis_keys, "*user:*")
    master = max(sorted(cached), key=lambda m: len(cached[m]))
    return master, f"no bucket seen in {BUCKET_SEARCH_S:.0f} s: the master caching most users"


def replica_of(stack: ClusterStack, master: str) -> str:
    """The replica of ``master`` (asked before it is killed)."""
    nodes = stack.redis_nodes(master)
    master_id = next(n.node_id for n in nodes if n.server == master)
    return next(n.server for n in nodes if n.master_of == master_id)


async def wait_failover(stack: ClusterStack, replica: str, killed_at: float) -> float | None:
    """Seconds from the kill until ``replica`` is a master serving slots and the cluster says ok."""
    while time.monotonic() - killed_at < REDIS_FAILOVER_DEADLINE_S:
        try:
            seen = {n.server: n for n in await asyncio.to_thread(stack.redis_nodes, replica)}
            state = await asyncio.to_thread(stack.redis_state, replica)
        except (OSError, RedisError):  # the node busy with the election: ask again
            seen, state = {}, ""
        if replica in seen and seen[replica].master and seen[replica].slots and state == "ok":
            return time.monotonic() - killed_at
        await asyncio.sleep(0.1)  # deliberate: polling the cluster's view
    return None


async def redis_master(run: Run) -> None:
    stack = cluster(run)
    s = await run.prepare("redis-master", "SIGKILL of a Redis Cluster master", users=6)
    s.read_rate_per_s = REDIS_READS_PER_S
    metrics = MetricsWatch(stack.metrics_url)
    metrics.start()
    try:
        async with run.loaded(s) as load:
            victim, bucket = await choose_master(stack)
            cached = (await asyncio.to_thread(stack.redis_keys, "*user:*")).get(victim, [])
            replica = await asyncio.to_thread(replica_of, stack, victim)
            s.title = f"SIGKILL of Redis master {victim}, restarted {REDIS_DOWN_S:.0f} s later"
            log(f"scenario {s.key}: killing {victim}, which holds {bucket} and {len(cached)} cached users")
            s.fault_start = time.monotonic()
            await stack.kill(victim)
            failover_s = await wait_failover(stack, replica, s.fault_start)
            log(f"scenario {s.key}: {replica} took over in {failover_s} s")
            await asyncio.sleep(max(0.0, s.fault_start + REDIS_DOWN_S - time.monotonic()))  # deliberate: the outage
            s.notes["restart_s"] = round(await stack.devstack("up", victim, "redis-cluster"), 1)
            s.fault_end = time.monotonic()
    finally:
        await metrics.stop()
    failed_over = None if failover_s is None else s.fault_start + failover_s
    missed = metrics.rises(REDIS_MISSED, s.fault_start)
    back_s = None if not missed or failed_over is None else max(0.0, missed[-1] - failed_over)
    hits_after = [t for t in metrics.rises(CACHE_HITS, s.fault_start) if not missed or t > missed[-1]]
    reads_failed = [a for a in load.reads if a.outcome != 200]
    s.figures.update(
        victim=victim,
        replica=replica,
        bucket=bucket,
        cache_keys_on_victim=len(cached),
        failover_s=None if failover_s is None else round(failover_s, 1),
        redis_missed_last_s=None if not missed else round(missed[-1] - s.fault_start, 1),
        redis_back_after_failover_s=None if back_s is None else round(back_s, 1),
        limiter_fail_open=int(metrics.total(LIMITER_MISSED, s.fault_start, s.fault_end)),
        cache_hits_after=len(hits_after) > 0,
        reads=len(load.reads),
        reads_failed=dict(Counter(map(kind, reads_failed))),
        reads_slowest_s=round(max((a.seconds for a in load.reads), default=0), 2),
    )


# -- a Kafka broker ----------------------------------------------------------------------------
def longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest time between ``start`` and ``end`` with no event frame arriving."""
    inside = [start, *sorted(t for t in times if start <= t <= end), end]
    return round(max(b - a for a, b in zip(inside, inside[1:], strict=False)), 1)


async def kafka_broker(run: Run) -> None:
    stack = cluster(run)
    s = await run.prepare("kafka-broker", "SIGKILL of a Kafka broker", users=KAFKA_USERS)
    s.rate_per_s = KAFKA_RATE_PER_S
    sockets = EventSockets(run.client, s.users)
    await sockets.start()
    try:
        async with run.loaded(s) as load:
            node, leads = await stack.kafka_coordinator()
            victim = stack.brokers()[node]
            s.title = f"SIGKILL of Kafka broker {victim}, restarted {KAFKA_DOWN_S:.0f} s later"
            log(f"scenario {s.key}: killing {victim}, the analytics group's coordinator, leading {leads} partitions")
            s.fault_start = time.monotonic()
            await stack.kill(victim)
            await asyncio.sleep(KAFKA_DOWN_S)  # deliberate: the outage
            s.notes["restart_s"] = round(await stack.devstack("up", victim, "kafka-cluster"), 1)
            s.fault_end = time.monotonic()
        accepted = {w.payment_id for w in load.writes if w.accepted}
        ws_wait_s = await sockets.wait_for(accepted, WS_DEADLINE_S)
    finally:
        await sockets.stop()
    copies = Counter(sockets.event_ids)
    stall_s, stall_at = run.backlog.longest_stall(s.fault_start, s.fault_end + 30)
    last_write = max(w.ended for w in load.writes)
    gap_s = longest_gap([t for t, *_ in sockets.received], load.writes[0].started, last_write)
    delays = [d for *_, d in sockets.received if d is not None]
    s.figures.update(
        victim=victim,
        partitions_led=leads,
        analytics_stall_s=stall_s,
        analytics_stall_from_fault_s=None if stall_at is None else round(stall_at - s.fault_start, 1),
        ws_delivered=len(accepted & sockets.payments()),
        ws_missing=len(accepted - sockets.payments()),
        ws_duplicates=sum(n - 1 for n in copies.values()),
        ws_longest_gap_s=gap_s,
        ws_max_delay_s=round(max(delays, default=0), 1),
        ws_reconnects=sockets.reconnects,
        ws_wait_s=None if ws_wait_s is None else round(ws_wait_s, 1),
    )


# -- a MariaDB shard ---------------------------------------------------------------------------
async def users_on_each_shard(run: Run, s: Scenario, each: int) -> None:
    """New users until every physical shard holds ``each`` of them (ids are random)."""
    stack = cluster(run)
    for _ in range(40 * each):
        placed = Counter(stack.shard_of(u) for u in s.users)
        if all(placed[shard] >= each for shard in stack.shards):
            return
        s.users.append(await run.new_user(s))
    raise RuntimeError(f"40 x {each} users and still not {each} on each shard")


async def mariadb_shard(run: Run) -> None:
    stack = cluster(run)
    stack.refresh_shard_map()
    victim = next(name for name in stack.shards if name != stack.home)  # the home holds every key: RELIABILITY.md
    title = f"SIGKILL of MariaDB shard {victim}, restarted {SHARD_DOWN_S:.0f} s later"
    s = await run.prepare("mariadb-shard", title, 0)
    await users_on_each_shard(run, s, SHARD_USERS_EACH)
    async with run.loaded(s) as load:
        s.fault_start = time.monotonic()
        await stack.kill(f"mariadb-{victim}")
        await asyncio.sleep(SHARD_DOWN_S)  # deliberate: the outage
        s.notes["restart_s"] = round(await stack.up(f"mariadb-{victim}"), 1)
        s.fault_end = time.monotonic()
    end = outage_end(s, load)
    by_shard = answers_by_shard(stack, load.writes, s.fault_start, end)
    for shard, seen in by_shard.items():
        attempts = [a for w in load.writes if stack.shard_of(w.user_id) == shard for a in w.attempts]
        seen["slowest_s"] = round(max((a.seconds for a in attempts if s.fault_start <= a.started <= end), default=0), 2)
        seen["users"] = sum(1 for u in s.users if stack.shard_of(u) == shard)
    s.figures.update(victim=victim, by_shard=by_shard)


# -- a shard move ------------------------------------------------------------------------------
async def shard_move(run: Run) -> None:
    stack = cluster(run)
    stack.refresh_shard_map()
    target = next(name for name in stack.shards if name != stack.home)
    s = await run.prepare("shard-move", "shard move under load", 0)
    while not s.users or stack.shard_of(s.users[0]) != stack.home:  # the moved one: a user of the home's
        s.users = [await run.new_user(s)]
    s.users += [await run.new_user(s) for _ in range(3)]
    logical = logical_shard(s.users[0])
    source = stack.shard_of(s.users[0])
    s.title = f"logical shard {logical} moved {source} -> {target} under load"
    weights = [MOVING_WEIGHT] + [1] * (len(s.users) - 1)
    async with run.loaded(s, weights=weights) as load:
        s.fault_start = time.monotonic()
        moved, said = await stack.move_shard(logical, target)
        s.fault_end = time.monotonic()
        log(f"scenario {s.key}: moved, the switch took {moved['switch_s']:.3f} s")
    stack.refresh_shard_map()
    moving = [w for w in load.writes if logical_shard(w.user_id) == logical]
    staying = [w for w in load.writes if logical_shard(w.user_id) != logical]
    refused = [a for w in moving for a in w.attempts if a.outcome != 201]
    refused_elsewhere = [a for w in staying for a in w.attempts if a.outcome != 201]
    frozen, switched = said.get("freezing"), said.get("switched")
    s.figures.update(
        logical=logical,
        source=source,
        target=target,
        now_on=stack.shard_of(s.users[0]),
        switch_s=round(moved["switch_s"], 3),
        copy_s=round(moved["copy_s"], 2),
        rows_moved=moved["rows"],
        moving_writes=len(moving),
        refused=len(refused),
        refused_outcomes=dict(Counter(map(kind, refused))),
        refused_for_s=round(max(a.started + a.seconds for a in refused) - min(a.started for a in refused), 2)
        if refused
        else 0.0,
        refused_elsewhere=dict(Counter(map(kind, refused_elsewhere))),
        slowest_moving_write_s=round(max((w.ended - w.started for w in moving if w.ended), default=0), 2),
    )
    if frozen is not None and switched is not None:  # refusals answered before the freeze, or sent after the switch
        outside = [a for a in refused if a.started + a.seconds < frozen or a.started > switched + MOVE_SLACK_S]
        s.figures["refused_outside_switch"] = len(outside)
    s.figures["refused_not_503_retry_after"] = sum(1 for a in refused if a.outcome != 503 or a.retry_after is None)


# The lightest first: the first scenario starts while the stack's three JVMs still warm up.
# The heaviest (200 writes/s, a broker's restart and log recovery) last.
CLUSTER_SCENARIOS: dict[str, Callable[[Run], Awaitable[None]]] = {
    "shard-move": shard_move,
    "mariadb-shard": mariadb_shard,
    "redis-master": redis_master,
    "kafka-broker": kafka_broker,
}
