"""``python -m bench`` (``make bench``, bench/README.md): seed, then the stages ``http`` (the shipped
phase with its profile, the costs phase) and ``ws`` (bench/fanout.py); then docs/bench/results.json
and docs/BENCHMARKS.md (bench/report.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import resource
import statistics
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench import client, env, fanout, report, wrk
from bench.env import log
from service.supervisor import free_port


def rest(path: str, body: str = "") -> dict[str, str]:
    """bench/wrk.lua's settings: a POST with ``body``, else a GET; both templates take an id."""
    return {"METHOD": "POST" if body else "GET", "PATH": path, "BODY": body}


PAYMENT = '{"user_id":"%s","amount":"12.34","currency":"USD","description":"bench"}'
PAGE = "/api/v1/users/%s/payments?limit=20"
# key: label, ids (a seed list or "pending"), floor, the wrk script's BENCH_* settings
ENDPOINTS = {
    "get_user": ("GET user (cache hit)", "users", "get", rest("/api/v1/users/%s")),
    "get_payment": ("GET payment (cache hit)", "payments", "get", rest("/api/v1/payments/%s")),
    "list_payments": ("GET user payments (page of 20)", "list_users", "page", rest(PAGE)),
    "post_payments": ("POST payments", "users", "post", rest("/api/v1/payments", PAYMENT)),
    "put_status": ("PUT payment status", "pending", "put", {"WALK": "1"}),
    "list_filtered": (
        f"GET user payments, filtered ({env.BIG_USER_PAYMENTS:,} payments)",
        "big_user",
        "page",
        rest(PAGE + "&status=completed" + env.BIG_USER_WINDOW),
    ),
}
WRITES = ("post_payments", "put_status")  # each run is followed by the drain's measure
CLIENTS = 50  # API keys wrk's requests spread over (one per connection's worth of client)
KEYS = env.WORK / "keys.txt"
# The costs phase: GET user on the service with parts taken away (overrides, argv after -m), each a
# `--role api` process. bench/without.py: no configuration turns key checks or metrics off.
NO_LIMITER = {"SINGLETON_RATE_LIMIT__ENABLED": "false"}
VARIANTS = {
    "no auth, no limiter": (NO_LIMITER, "bench.without auth"),
    "key check": (NO_LIMITER, "service"),
    "key check + limiter": ({}, "service"),
    "logging at WARNING": ({"SINGLETON_LOGGING__LEVEL": "WARNING"}, "service"),
    "no metrics": ({}, "bench.without metrics"),  # key check + limiter, no metric recorded
}


async def drained(ended_at: float, timeout_s: float) -> dict:
    """After a write run: seconds from ``ended_at`` (epoch) until no outbox row was left unpublished
    (``outbox_drained_s``) and until the analytics group's lag, read from Kafka (committed offsets
    against the topic's end), was 0 (``analytics_caught_up_s``)."""
    bootstrap = env.config()["kafka"]["bootstrap_servers"]
    admin, out, deadline = AIOKafkaAdminClient(bootstrap_servers=bootstrap), {}, time.monotonic() + timeout_s
    await admin.start()
    try:
        async with AIOKafkaConsumer(bootstrap_servers=bootstrap) as ends:  # for the topic's end offsets
            await ends.topics()  # metadata, for the partitions
            tps = [TopicPartition(env.KAFKA_TOPIC, p) for p in sorted(ends.partitions_for_topic(env.KAFKA_TOPIC) or ())]
            while time.monotonic() < deadline:
                pending = sum(n for (n,) in env.mysql_query("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL"))
                committed = await admin.list_consumer_group_offsets(env.ANALYTICS_GROUP)
                end = await ends.end_offsets(tps)
                lag = sum(n - (committed[tp].offset if tp in committed else 0) for tp, n in end.items())
                if pending == 0:
                    out.setdefault("outbox_drained_s", round(time.time() - ended_at, 2))
                if pending == 0 and lag == 0:
                    out["analytics_caught_up_s"] = round(time.time() - ended_at, 2)
                    break
                await asyncio.sleep(0.05)
    finally:
        await admin.close()
    log(f"    outbox drained {out.get('outbox_drained_s')} s, analytics {out.get('analytics_caught_up_s')} s")
    return out


def rotations(names: list[str], rounds: int) -> list[list[str]]:
    """``names`` in a different order each round: round k starts at the k-th."""
    return [names[k % len(names) :] + names[: k % len(names)] for k in range(rounds)]


class Run:
    """The processes under test, and wrk against them."""

    def __init__(self, s: env.Settings):
        self.s, self.base_port = s, free_port()
        self.baseline = env.start_floor("bare", self.base_port)
        self.procs: dict[str, tuple[env.Proc, int]] = {}  # "shipped", "floor get", a variant: process, port
        self.ids: dict[str, list[str]] = {}

    def start(self, name: str, overrides: dict | None = None, module: str = "service", role: str = "all") -> None:
        """The service (or a bench entry point) on a port of its own, warmed up once the seed is in."""
        log(f"service: {name}")
        port = free_port()
        self.procs[name] = env.start_service(name, port, overrides or {}, role, module), port
        if self.ids:
            self.wrk("warmup", name, "get_user", self.s.warmup_s)

    def start_floors(self) -> None:
        """Every endpoint's floor, once the keys and the seed are in."""
        env.floor_tables()
        for kind in dict.fromkeys(e[2] for e in ENDPOINTS.values()):
            port = free_port()
            self.procs[f"floor {kind}"] = env.start_floor(kind, port, KEYS), port

    def stop(self, *names: str) -> None:
        for name in names or list(self.procs):
            self.procs.pop(name)[0].stop()

    def prepare(self, endpoint: str) -> dict:
        """The ids file, path and body ``endpoint``'s script takes (pending payments anew)."""
        _, ids, _, request = ENDPOINTS[endpoint]
        if ids == "pending":  # not the big user's 25,000: PUT would measure its row lock's queue
            sql, hot = "SELECT id FROM payments WHERE status = 'pending' AND user_id <> %s", self.ids["big_user"][0]
            pending = [r[0] for r in env.mysql_query(sql, (hot,))]
            random.Random(len(pending)).shuffle(pending)
            self.ids[ids] = pending
            env.floor_tables()  # the same rows in the PUT floor's table
        (env.WORK / f"{ids}.txt").write_text("\n".join(self.ids[ids]) + "\n")
        return {"BENCH_IDS": str(env.WORK / f"{ids}.txt")} | {f"BENCH_{k}": v for k, v in request.items()}

    def wrk(self, name: str, target: str | None, endpoint: str, seconds: int, ids=None, profile: bool = False) -> dict:
        """One wrk run against ``endpoint`` of ``target`` (a service or a floor), or against the baseline (None)."""
        names = {self.baseline.pid: "baseline", os.getpid(): "bench"}
        names |= {proc.pid: f"idle {who}" for who, (proc, _) in self.procs.items()}
        extra, url, pid = {"BENCH_KEYS": str(KEYS)}, f"http://{env.HOST}:{self.base_port}/", 0
        if target is not None:
            pid, port = self.procs[target][0].pid, self.procs[target][1]
            names[pid] = target.split()[0] if target.startswith("floor") else "service"
            extra |= ids or self.prepare(endpoint)
            url = f"http://{env.HOST}:{port}"
        r = wrk.run(name, url, seconds, self.s.connections, extra | {"names": names}, pid, profile)
        log(f"  {name:<40} {r['rps']:>8,.0f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:7.1f} ms")
        return r

    def drain(self, ended_at: float) -> dict:
        return asyncio.run(drained(ended_at, self.s.drain_timeout_s))

    def shipped(self) -> list[dict]:
        """Each endpoint after its floor, each between two baseline runs."""
        runs, seconds = [self.wrk("baseline-0", None, "", self.s.duration_s) | {"kind": "baseline"}], self.s.duration_s
        for endpoint, (label, _, floor, _) in ENDPOINTS.items():
            ids = self.prepare(endpoint)
            below = self.wrk(f"floor {floor}: {endpoint}", f"floor {floor}", endpoint, seconds, ids)
            r = self.wrk(f"shipped: {endpoint}", "shipped", endpoint, seconds, ids)
            r |= {"kind": "endpoint", "variant": "shipped", "endpoint": endpoint, "label": label}
            if endpoint in WRITES:
                r["drain"] = self.drain(r["ended_at"])
            after = self.wrk(f"baseline-{len(runs) // 2 + 1}", None, "", seconds) | {"kind": "baseline"}
            r["baseline_rps"] = round(statistics.fmean([runs[-1]["rps"], after["rps"]]))
            r |= {"ratio": round(r["rps"] / r["baseline_rps"], 4), "floor_rps": below["rps"]}
            r |= {f"floor_{k}": below[k] for k in ("cpu_us", "cpu_cores", "p99_ms")}
            runs += [r | {"floor_ratio": round(r["rps"] / below["rps"], 4)}, after]
        return runs

    def profile(self) -> dict:
        """Each shipped endpoint and its floor under py-spy, right after the shipped phase while the processes
        are warm: {endpoint: {"shipped": {module group: µs per request}, "floor": {...}}}."""
        out: dict[str, dict] = {}
        for e, (_, _, floor, _) in ENDPOINTS.items():
            ids = self.prepare(e)
            for who in ("shipped", f"floor {floor}"):
                r = self.wrk(f"profile {who}: {e}", who, e, self.s.profile_s, ids, profile=True)
                out.setdefault(e, {})[who.split()[0]] = r["profile_us"]
            if e in WRITES:
                self.drain(time.time())
        return out

    def costs(self) -> list[dict]:
        """GET user on each variant, side by side: ``cost_rounds`` rounds of full-length runs, the
        order rotated each round, every variant started anew each round: processes of the same code
        kept gaps of up to 8% in CPU per request through an A/B (docs/PROFILING.md). bench/report.py
        makes the costs."""
        runs, ids = [], self.prepare("get_user")
        for k, order in enumerate(rotations(list(VARIANTS), self.s.cost_rounds)):
            for v in order:
                self.start(v, *VARIANTS[v], role="api")
            for v in order:
                r = self.wrk(f"round {k + 1}, {v}: get_user", v, "get_user", self.s.duration_s, ids)
                runs.append(r | {"kind": "cost", "variant": v, "endpoint": "get_user", "round": k + 1})
            self.stop(*VARIANTS)
        return runs


def main() -> None:
    """Seed over REST, then the ``http`` and ``ws`` stages; then the results and the page."""
    s, t0 = env.Settings(), time.monotonic()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # for every process the bench starts
    results: dict = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "settings": vars(s)}
    results |= {"machine": env.machine(), "load_average": [round(os.getloadavg()[0], 2)]}  # 1-minute, before/after
    env.reset_stores()
    key, run = env.create_admin_key(), Run(s)
    try:
        run.start("shipped")
        started, port = time.time(), run.procs["shipped"][1]
        run.ids = asyncio.run(client.seed(port, key, s.users, s.list_users, s.payments_per_user, CLIENTS))
        run.ids["big_user"] = [env.big_user(run.ids["users"][-1])]
        KEYS.write_text("\n".join(run.ids["keys"]) + "\n")
        results["seed"] = {"seconds": round(time.time() - started, 1), "drain": run.drain(time.time())}
        run.start_floors()
        run.wrk("warmup-baseline", None, "", s.warmup_s)
        if s.stage("http"):
            results["runs"] = run.shipped() if s.phase("shipped") else []
            results["profile"] = run.profile() if s.phase("shipped") else {}
            results["runs"] += run.costs() if s.phase("costs") else []
        if s.stage("ws"):  # a fresh process, its /metrics on a port of our choosing
            run.stop("shipped")
            run.start("shipped", {"SINGLETON_METRICS__PORT": str(metrics := free_port())})
            (proc, port), url = run.procs["shipped"], f"http://{env.HOST}:{metrics}/metrics"
            ceiling = lambda: run.wrk("ws: POST ceiling", "shipped", "post_payments", 5)  # noqa: E731
            results["ws"] = fanout.run(fanout.Service(port, key, proc, url), run.ids["users"], s, ceiling)
    finally:
        run.stop()
        run.baseline.stop()
    results |= {"load_average": [*results["load_average"], round(os.getloadavg()[0], 2)]}
    results["elapsed_s"] = round(time.monotonic() - t0)
    (env.DOCS_BENCH / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote docs/bench/results.json and {report.write()} in {results['elapsed_s']} s")


if __name__ == "__main__":
    main()
