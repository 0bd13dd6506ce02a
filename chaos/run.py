"""One chaos run: the stack, the service process of the moment, and the frame every
scenario shares. A scenario gets users of its own and the topic's offsets
(``prepare``); then, under ``loaded``: steady writes and a watch on /health start, the
scenario injects its fault and marks when it began and ended, the run waits for the
service to recover (health ok, a write accepted), keeps writing a little longer, stops,
and accounts for every payment.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from chaos import accounting
from chaos.backlog import BacklogWatch, last_at, peak_and_cleared
from chaos.load import CONNECTION, RATE_PER_S, Client, HealthWatch, Load, Write
from chaos.service import Service
from chaos.stack import Stack, log

WARMUP_S = 5.0  # steady writes before the fault
TAIL_S = 5.0  # steady writes once recovered
USERS = 3  # per scenario
RECOVERY_DEADLINE_S = 120.0
READY_DEADLINE_S = 90.0
SETTLED_MEDIAN_S = 0.1  # a warm-up ends once the last WARM_WINDOW_S of answers have this median or less
WARM_WINDOW_S = 3.0


@dataclass
class Scenario:
    key: str
    title: str
    users: list[str] = field(default_factory=list)
    since: dict = field(default_factory=dict)  # the topic's end offsets before it
    fault_start: float | None = None
    fault_end: float | None = None
    rate_per_s: float = RATE_PER_S  # the writes offered
    read_rate_per_s: float = 0.0  # reads of its users beside them (none by default)
    notes: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # anything else that fails the scenario
    figures: dict = field(default_factory=dict)  # what a scenario measures beyond the frame's (cluster ones)


def first_accepted(writes: list[Write], after: float) -> float | None:
    """When the first attempt sent at or after ``after`` came back 201."""
    done = [a.started + a.seconds for w in writes for a in w.attempts if a.started >= after and a.outcome == 201]
    return min(done, default=None)


def analytics_view(backlog: BacklogWatch, watch: HealthWatch, s: Scenario) -> dict:
    """The analytics group's backlog as Kafka has it, and the lag /health reported."""
    caught_up = int(s.rate_per_s)  # one second of writes
    peak, cleared = backlog.backlog(s.fault_start, s.fault_end, caught_up)
    reported, _ = peak_and_cleared(watch.lags, s.fault_start, s.fault_end, caught_up)
    return {
        "analytics_backlog_peak": peak,
        "analytics_backlog_cleared_s": None if cleared is None else round(cleared - s.fault_end, 1),
        "health_lag_peak": reported,
        "backlog_at_fault_end": last_at(backlog.seen, s.fault_end),
        "health_lag_at_fault_end": last_at(watch.lags, s.fault_end),
    }


def client_view(writes: list[Write], watch: HealthWatch, s: Scenario, health_ok, writes_ok) -> dict:
    """What the client saw: answers before retries, writes that failed after them, the
    slowest attempt and write sent during the outage, and the recovery times."""
    attempts = [a for w in writes for a in w.attempts]
    codes = [a.outcome for a in attempts if a.outcome != CONNECTION]
    outage_end = max(t for t in (s.fault_end, health_ok, writes_ok) if t is not None)
    in_outage = [a for a in attempts if s.fault_start <= a.started <= outage_end]
    writes_in_outage = [w for w in writes if s.fault_start <= w.started <= outage_end and w.ended]
    before = [a.seconds for a in attempts if a.started < s.fault_start]  # the warm-up: how busy the machine is
    seconds = writes[-1].started - writes[0].started if len(writes) > 1 else 0
    return {
        "rate_per_s": round(len(writes) / seconds, 1) if seconds else None,
        "attempts": len(attempts),
        "http_5xx": sum(1 for c in codes if c >= 500),
        "http_500": sum(1 for c in codes if c == 500),
        "http_429": sum(1 for c in codes if c == 429),
        "other_4xx": sorted({c for c in codes if 400 <= c < 500 and c != 429}),
        "connection_errors": sum(1 for a in attempts if a.outcome == CONNECTION),
        "connection_errors_why": dict(Counter(a.error for a in attempts if a.outcome == CONNECTION).most_common(3)),
        "failed": sum(1 for w in writes if not w.accepted),
        "failed_outcomes": sorted({str(w.final) for w in writes if not w.accepted}),
        "outage_s": round(s.fault_end - s.fault_start, 1),
        "median_before_s": round(statistics.median(before), 3) if before else None,
        "slowest_attempt_s": round(max((a.seconds for a in in_outage), default=0), 2),
        "slowest_write_s": round(max((w.ended - w.started for w in writes_in_outage), default=0), 2),
        "health_during": watch.statuses(s.fault_start, outage_end),
        "recovery_health_s": None if health_ok is None else round(health_ok - s.fault_end, 1),
        "recovery_writes_s": None if writes_ok is None else round(max(0.0, writes_ok - s.fault_end), 1),
        "writes_interrupted": any(a.outcome != 201 for a in in_outage),
    }


class Run:
    def __init__(self, stack: Stack, key: str):
        self.stack = stack
        self.service: Service | None = None
        self.client = Client(stack.service_url, key)
        self.results: list[dict] = []
        self.services: list[Service] = []  # every process this run started, for their logs
        self._seen_trouble = (0, 0)  # tracebacks and event-loop complaints already reported
        self.backlog = BacklogWatch(stack)  # across scenarios: Kafka restarts must not reset it
        self.backlog.start()

    def spawn(self, name: str, processes: int = 1) -> Service:
        self.service = Service(self.stack, name, processes)
        self.services.append(self.service)
        return self.service

    def new_trouble(self) -> tuple[int, list[str]]:
        """Tracebacks, and the event loop's complaints, logged by any of this run's service
        processes since the last call."""
        tracebacks, loop = 0, []
        for service in self.services:
            t, complaints = service.trouble()
            tracebacks, loop = tracebacks + t, loop + complaints
        seen_t, seen_l = self._seen_trouble
        self._seen_trouble = (tracebacks, len(loop))
        return tracebacks - seen_t, loop[seen_l:]

    async def ready(self, timeout_s: float = READY_DEADLINE_S) -> None:
        """Wait for /health/ready to answer 200 (the service has MariaDB, migrated)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(OSError):
                if (await self.client.request("GET", "/health/ready", timeout_s=2))[0] == 200:
                    return
            if not self.service.running():
                raise RuntimeError(f"service exited ({self.service.popen.returncode}): {self.service.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"service not ready within {timeout_s} s: {self.service.log_path}")
            await asyncio.sleep(0.2)

    async def prepare(self, key: str, title: str, users: int = USERS) -> Scenario:
        """A scenario's users (made by the running, healthy service) and the topic's ends."""
        log(f"scenario {key}: {title}")
        s = Scenario(key, title)
        for _ in range(users):
            s.users.append(await self.new_user(s))
        s.since = await accounting.topic_ends(self.stack)
        return s

    async def warm_up(self, deadline_s: float) -> dict:
        """Steady writes, on users of their own and accounted for by no scenario, until the
        service answers as on a settled stack (a median of SETTLED_MEDIAN_S over the last
        WARM_WINDOW_S), or ``deadline_s``: what a fresh stack's JVMs and first connections
        cost is then not the first scenario's. How long it took, and the median at its end."""
        s = Scenario("warm-up", "warm-up")
        for _ in range(USERS):
            s.users.append(await self.new_user(s))
        load = Load(self.client, s.users)
        load.start()
        started = time.monotonic()
        median = None
        try:
            while time.monotonic() - started < deadline_s:
                await asyncio.sleep(WARM_WINDOW_S)  # deliberate: a window of answers to judge by
                since = time.monotonic() - WARM_WINDOW_S
                recent = [a.seconds for w in load.writes for a in w.attempts if a.started >= since]
                median = statistics.median(recent) if recent else None
                if median is not None and median <= SETTLED_MEDIAN_S:
                    break
        finally:
            await load.stop()
        took = time.monotonic() - started
        log(f"warm-up: {took:.0f} s, median answer {median} s at its end")
        return {"s": round(took, 1), "median_s": None if median is None else round(median, 3)}

    async def new_user(self, s: Scenario) -> str:
        """A new user of scenario ``s``'s (its id is random: so is its shard)."""
        body = {"email": f"chaos-{uuid.uuid4().hex}@example.com", "name": f"Chaos {s.key} {len(s.users)}"}
        code, user, _ = await self.client.request("POST", "/api/v1/users", body)
        if code != 201:
            raise RuntimeError(f"creating a user: {code} {user}")
        return user["id"]

    @contextlib.asynccontextmanager
    async def loaded(
        self, s: Scenario, warmup_s: float = WARMUP_S, weights: list[int] | None = None
    ) -> AsyncIterator[Load]:
        """Steady writes at ``s.rate_per_s`` over ``s.users`` (``weights``: how many shares of
        the writes each user gets, one each by default) around the scenario's fault."""
        users = [u for u, n in zip(s.users, weights or [1] * len(s.users), strict=True) for _ in range(n)]
        load, watch = Load(self.client, users, s.rate_per_s, s.read_rate_per_s), HealthWatch(self.client)
        load.start()
        watch.start()
        try:
            await asyncio.sleep(warmup_s)  # deliberate: steady writes before the fault
            yield load
            health_ok, writes_ok = await self._recovered(load, watch, s)
            log(f"scenario {s.key}: recovered (health ok +{_after(health_ok, s)}, writes +{_after(writes_ok, s)})")
            await asyncio.sleep(TAIL_S)  # deliberate: steady writes after recovery
        finally:
            await load.stop()
            await watch.stop()
        ended = time.monotonic()
        view = client_view(load.writes, watch, s, health_ok, writes_ok)
        log(f"scenario {s.key}: {len(load.writes)} writes, accounting")
        books = await accounting.account(self.stack, self.client, load.writes, s.users, s.since, ended)
        view.update(analytics_view(self.backlog, watch, s))
        tracebacks, complaints = self.new_trouble()
        if tracebacks:
            s.problems.append(f"{tracebacks} tracebacks in the service's log")
        if complaints:  # noted, not failed: seen once so far, and it loses nothing (docs/RELIABILITY.md)
            s.notes["event_loop"] = complaints
        self.results.append(
            {
                "key": s.key,
                "title": s.title,
                **view,
                **books,
                "notes": s.notes,
                "problems": s.problems,
                "figures": s.figures,
            }
        )
        log(f"scenario {s.key}: accepted {books['accepted']}, lost {books['lost']}, analytics {books['analytics']}")

    async def close(self) -> None:
        await self.backlog.stop()
        if self.service is not None:
            await self.service.stop()
        self.client.close()

    async def _recovered(self, load: Load, watch: HealthWatch, s: Scenario) -> tuple[float | None, float | None]:
        """When /health first said ok, and a write was first accepted, after the fault ended."""
        health = writes = None
        while time.monotonic() < s.fault_end + RECOVERY_DEADLINE_S and (health is None or writes is None):
            health = health or watch.first_ok(s.fault_end)
            writes = writes or first_accepted(load.writes, s.fault_end)
            await asyncio.sleep(0.1)
        return health, writes


def _after(t: float | None, s: Scenario) -> str:
    return "never" if t is None else f"{t - s.fault_end:.1f} s"
