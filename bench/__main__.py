"""``python -m bench`` (``make bench``): the whole benchmark, end to end, in stages
(bench/README.md): seed, ``http`` (wrk against each endpoint of each service variant,
alternating with the bare baseline), ``ws`` (bench/fanout.py), ``analytics``
(bench/analytics.py); then docs/bench/results.json and docs/BENCHMARKS.md. With a sharded
configuration (``make bench-cluster``) ``http`` also compares POST payments on one physical
shard and on all of them; the results go to docs/bench/cluster/ and docs/BENCHMARKS-cluster.md."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import resource
import statistics
import time
from pathlib import Path

from bench import analytics, client, drain, env, fanout, report, wrk
from bench.env import log
from service.supervisor import free_port

# The service as shipped, and what each comparison changes (environment overrides).
NO_LIMITER = {"SINGLETON_RATE_LIMIT__ENABLED": "false"}
VARIANTS = {
    "shipped": {},
    "no auth, no limiter": NO_LIMITER,  # and keys not checked: UNAUTHENTICATED
    "key check": NO_LIMITER,
    "key check + limiter": {},
    "logging at WARNING": {"SINGLETON_LOGGING__LEVEL": "WARNING"},
    "2 processes": {"SINGLETON_SERVER__PROCESSES": "2"},
    "MariaDB pool of 50": {"SINGLETON_MYSQL__POOL_MAX": "50"},  # a connection for each of wrk's
}
UNAUTHENTICATED = {"no auth, no limiter"}  # run as bench/unauthenticated.py: no config turns keys off
COMPARED = ("no auth, no limiter", "key check", "key check + limiter", "logging at WARNING")  # --role api, side by side
SHARDED = len(env.shards()) > 1
if SHARDED:  # the same servers, the home alone holding every logical shard or config's map
    VARIANTS |= {"1 shard": env.one_shard(), f"{len(env.shards())} shards": {}}
# TLS to MariaDB, Redis and Kafka (config.tls.yaml's settings): the everyday stack serves it
# beside plaintext, with its own CA (devstack/README.md); the cluster stack serves none.
TLS = "TLS to MariaDB, Redis, Kafka"
if not SHARDED:

    def _tls_port(name: str, default: int) -> int:  # devstack's TLS port: the plaintext one + 1000
        return int(os.environ.get(name, default)) + 1000

    _tls_dir = Path(os.environ.get("DEVSTACK_DIR") or env.REPO / ".devstack") / "tls"
    _tls_files = {"CA_FILE": "ca.pem", "CERT_FILE": "client.pem", "KEY_FILE": "client.key"}
    VARIANTS[TLS] = {
        f"SINGLETON_{store}__TLS__{key}": str(_tls_dir / name)
        for store in ("MYSQL", "REDIS", "KAFKA")
        for key, name in _tls_files.items()
    } | {
        "SINGLETON_REDIS__URL": f"rediss://{env.HOST}:{_tls_port('REDIS_PORT', 6379)}/{env.REDIS_DB}",
        "SINGLETON_KAFKA__BOOTSTRAP_SERVERS": f"{env.HOST}:{_tls_port('KAFKA_PORT', 9092)}",
    }
SHARD_LAYOUTS = tuple(v for v in VARIANTS if v.endswith((" shard", " shards")))
# A variant that must be driven with other ids: one shard holds only the users seeded on the home.
VARIANT_IDS = {"1 shard": {"users": "users_home"}}
# key: label, wrk script, ids (a seed list, or "pending"), path template
ENDPOINTS = {
    "get_user": ("GET user (cache hit)", "get.lua", "users", "/api/v1/users/%s"),
    "get_payment": ("GET payment (cache hit)", "get.lua", "payments", "/api/v1/payments/%s"),
    "list_payments": ("GET user payments (page of 20)", "get.lua", "list_users", "/api/v1/users/%s/payments?limit=20"),
    "post_payments": ("POST payments", "post_payments.lua", "users", ""),
    "post_refunds": ("POST refunds (0.01 of a completed payment)", "post_refunds.lua", "completed", ""),
    "put_status": ("PUT payment status", "put_status.lua", "pending", ""),
    "list_filtered": (
        f"GET user payments, filtered ({env.BIG_USER_PAYMENTS:,} payments)",
        "get.lua",
        "big_user",
        "/api/v1/users/%s/payments?limit=20&status=completed" + env.BIG_USER_WINDOW,
    ),
}
WRITES = ("post_payments", "post_refunds", "put_status")  # each run is followed by the drain's measure
CLIENTS = 50  # API keys wrk's requests spread over (one per connection's worth of client)
KEYS = env.WORK / "keys.txt"
# Each phase by name, as steps: the processes running side by side, and the (variant, endpoint)
# runs against them.
PHASES = {
    "shipped": [(("shipped",), [("shipped", e) for e in ENDPOINTS])],
    "pool": [(("MariaDB pool of 50",), [("MariaDB pool of 50", e) for e in ("list_payments", "put_status")])],
    "costs": [(COMPARED, [(v, "get_user") for _ in range(3) for v in COMPARED])],  # 3 rounds of half-length runs
    "processes": [(("2 processes",), [("2 processes", "get_user"), ("2 processes", "post_payments")])],
}
if TLS in VARIANTS:  # what TLS to the stores costs: the shipped runs are the same endpoints in plaintext
    PHASES["tls"] = [((TLS,), [(TLS, "get_user"), (TLS, "post_payments")])]
if SHARDED:  # BENCH_SHARD_ROUNDS rounds alternating: one service at a time (BENCH_SHARDS_APART), or side by side
    s = env.Settings()
    if s.shards_apart:  # two services' background loops slowed each other's POSTs 2-8x here
        PHASES["shards"] = [((v,), [(v, "post_payments")]) for _ in range(s.shard_rounds) for v in SHARD_LAYOUTS]
    else:
        PHASES["shards"] = [
            (SHARD_LAYOUTS, [(v, "post_payments") for _ in range(s.shard_rounds) for v in SHARD_LAYOUTS])
        ]


class Run:
    """The processes under test, and wrk against them."""

    def __init__(self, s: env.Settings):
        self.s, self.base_port = s, free_port()
        self.baseline = env.start_baseline(self.base_port)
        self.running: dict[str, tuple[env.Proc, int]] = {}
        self.ids: dict[str, list[str]] = {}
        self.tables: dict | None = None

    def use(self, variants: tuple[str, ...]) -> None:
        """Exactly these variants running, each on a port of its own, warmed up."""
        if tuple(self.running) != variants:
            self.stop()
            for v in variants:
                log(f"service: {v}")
                port, role = free_port(), "api" if v in COMPARED else "all"
                checked = v not in UNAUTHENTICATED
                self.running[v] = env.start_service(v, port, VARIANTS[v], role, check_keys=checked), port
                if self.ids:
                    self.wrk("warmup", v, "get_user", self.s.warmup_s)

    def stop(self) -> None:
        for proc, _ in self.running.values():
            proc.stop()
        self.running = {}

    def wrk(self, name: str, variant: str | None, endpoint: str, duration_s: int) -> dict:
        """One wrk run against ``endpoint`` of ``variant``, or against the baseline (variant None)."""
        names = {self.baseline.pid: "baseline", os.getpid(): "bench"}
        names |= {proc.pid: "service" if v == variant else "idle services" for v, (proc, _) in self.running.items()}
        extra, script = {"BENCH_KEYS": str(KEYS), "names": names}, "get.lua"
        url = f"http://{env.HOST}:{self.base_port}/"
        if variant is not None:
            _, script, ids, path = ENDPOINTS[endpoint]
            ids = VARIANT_IDS.get(variant, {}).get(ids, ids)
            if ids == "pending":
                pending = [r[0] for r in env.mysql_query("SELECT id FROM payments WHERE status = 'pending'")]
                random.Random(len(pending)).shuffle(pending)  # every shard's, mixed (they come shard by shard)
                self.ids[ids] = pending
            if ids == "completed":  # over REST, as a client would: the first 1,000 pending ones completed
                port, key = self.running[variant][1], KEYS.read_text().split()[0]
                self.ids[ids] = asyncio.run(client.completed(port, key, self.ids["payments"][:1000]))
            (env.WORK / f"{ids}.txt").write_text("\n".join(self.ids[ids]) + "\n")
            extra |= {"BENCH_IDS": str(env.WORK / f"{ids}.txt"), "BENCH_PATH": path}
            url = f"http://{env.HOST}:{self.running[variant][1]}"
        r = wrk.run(name, url, script, duration_s, self.s.connections, 2, extra)
        log(f"  {name:<40} {r['rps']:>8,.0f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:7.1f} ms")
        return r

    def drain(self, ended_at: float) -> dict:
        out = asyncio.run(drain.measure(ended_at, self.s.drain_timeout_s))
        log(f"    outbox drained {out.get('outbox_drained_s')} s, analytics {out.get('analytics_caught_up_s')} s")
        return out

    def http(self) -> list[dict]:
        """Every phase's runs, each between two baseline runs."""
        runs = [self.wrk("baseline-0", None, "", self.s.duration_s) | {"kind": "baseline"}]
        for variants, plan in (step for name in PHASES if self.s.phase(name) for step in PHASES[name]):
            if set(variants) <= set(SHARD_LAYOUTS) and self.tables is None:  # before "1 shard" writes to a alone
                self.tables = env.table_sizes()
            self.use(variants)
            # side by side, half-length runs; the shard layouts' whole runs (the measure is their ratio)
            seconds = (
                self.s.duration_s if len(variants) == 1 or variants == SHARD_LAYOUTS else max(3, self.s.duration_s // 2)
            )
            for variant, endpoint in plan:
                r = self.wrk(f"{variant}: {endpoint}", variant, endpoint, seconds)
                r |= {"kind": "endpoint", "variant": variant, "endpoint": endpoint, "label": ENDPOINTS[endpoint][0]}
                if endpoint in WRITES:
                    r["drain"] = self.drain(r["ended_at"])
                after = self.wrk(f"baseline-{len(runs) // 2 + 1}", None, "", seconds) | {"kind": "baseline"}
                r["baseline_rps"] = round(statistics.fmean([runs[-1]["rps"], after["rps"]]))
                runs += [r | {"ratio": round(r["rps"] / r["baseline_rps"], 4)}, after]
        return runs


def against_the_service(s: env.Settings, key: str, results: dict) -> None:
    """Seed over REST, then the ``http`` and ``ws`` stages."""
    run = Run(s)
    try:
        run.use(("shipped",))
        started, port = time.time(), run.running["shipped"][1]
        run.ids = asyncio.run(client.seed(port, key, s.users, s.list_users, s.payments_per_user))
        run.ids["big_user"] = [env.big_user(run.ids["users"][-1])]
        if SHARDED:
            run.ids["users_home"] = env.on_home(run.ids["users"])
        KEYS.write_text("\n".join(asyncio.run(client.admin_keys(port, key, CLIENTS))) + "\n")
        results["seed"] = {"seconds": round(time.time() - started, 1), "drain": run.drain(time.time())}
        run.wrk("warmup-baseline", None, "", s.warmup_s)
        if s.stage("http"):
            results["runs"] = run.http()
            results["tables"] = run.tables or env.table_sizes()  # how the shards split what the run wrote
            results["redis_keys"] = env.redis_spread()  # and how the keys hash over Redis Cluster's masters
        if s.stage("ws"):
            run.stop()
            run.use(("shipped",))
            results["ws"] = fanout.run(run.running["shipped"][1], key, run.running["shipped"][0], run.ids["users"], s)
    finally:
        run.stop()
        run.baseline.stop()


def main() -> None:
    s, t0 = env.Settings(), time.monotonic()
    env.WORK.mkdir(parents=True, exist_ok=True)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # for every process the bench starts
    results: dict = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "settings": vars(s)}
    results |= {"machine": env.machine(), "load_before": env.background_load()}
    log(f"other work on the machine (cores): {results['load_before']}")
    env.reset_stores()
    if s.stage("http") or s.stage("ws"):
        against_the_service(s, env.create_admin_key(), results)
    if s.stage("analytics"):
        results["analytics"] = asyncio.run(analytics.run(s.analytics_payments))
    results |= {"load_after": env.background_load(), "elapsed_s": round(time.monotonic() - t0)}
    results["config"] = str(env.CONFIG.relative_to(env.REPO))
    env.DOCS_OUT.mkdir(parents=True, exist_ok=True)
    (env.DOCS_OUT / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {env.DOCS_OUT.relative_to(env.REPO)}/results.json and {report.write()} in {results['elapsed_s']} s")


if __name__ == "__main__":
    main()
