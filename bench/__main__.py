"""``python -m bench`` (``make bench``): the whole benchmark, in stages (bench/README.md): seed,
``http`` (wrk against each endpoint of each service variant, alternating with the bare baseline
and, in the shipped phase, each endpoint's floor; then py-spy's profile of each), ``ws``
(bench/fanout.py), ``analytics`` (bench/analytics.py); then docs/bench/results.json and
docs/BENCHMARKS.md."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import resource
import statistics
import time

from bench import analytics, client, drain, env, fanout, report, wrk
from bench.env import log
from service.supervisor import free_port

# The service as shipped, and what each comparison changes (environment overrides).
NO_LIMITER = {"SINGLETON_RATE_LIMIT__ENABLED": "false"}
VARIANTS = {
    "shipped": {},
    "no auth, no limiter": NO_LIMITER,  # and keys not checked (ENTRY)
    "key check": NO_LIMITER,
    "key check + limiter": {},
    "logging at WARNING": {"SINGLETON_LOGGING__LEVEL": "WARNING"},
    "no metrics": {},  # key check + limiter, no metric recorded (ENTRY)
}
# The bench's own entry points: no configuration turns key checks or metrics off.
ENTRY = {"no auth, no limiter": "bench.unauthenticated", "no metrics": "bench.unmetered"}
COMPARED = ("no auth, no limiter", "key check", "key check + limiter", "logging at WARNING", "no metrics")


def rest(path: str, body: str = "") -> dict[str, str]:
    """bench/lua/request.lua's settings: a POST with ``body``, else a GET; both templates take an id."""
    return {"METHOD": "POST" if body else "GET", "PATH": path, "BODY": body}


PAYMENT = '{"user_id":"%s","amount":"12.34","currency":"USD","description":"bench"}'
REFUND = '{"amount":"0.01","reason":"requested_by_customer"}'  # a payment holds thousands of cents
PAGE = "/api/v1/users/%s/payments?limit=20"
# key: label, ids (a seed list, "pending" or "completed"), floor, the wrk script's BENCH_* settings
ENDPOINTS = {
    "get_user": ("GET user (cache hit)", "users", "get", rest("/api/v1/users/%s")),
    "get_payment": ("GET payment (cache hit)", "payments", "get", rest("/api/v1/payments/%s")),
    "list_payments": ("GET user payments (page of 20)", "list_users", "page", rest(PAGE)),
    "post_payments": ("POST payments", "users", "post", rest("/api/v1/payments", PAYMENT)),
    "post_refunds": (
        "POST refunds (0.01 of a completed payment)",
        "completed",
        "post",
        rest("/api/v1/payments/%s/refunds", REFUND),
    ),
    "put_status": ("PUT payment status", "pending", "put", {"SCRIPT": "put_status.lua"}),
    "list_filtered": (
        f"GET user payments, filtered ({env.BIG_USER_PAYMENTS:,} payments)",
        "big_user",
        "page",
        rest(PAGE + "&status=completed" + env.BIG_USER_WINDOW),
    ),
}
WRITES = ("post_payments", "post_refunds", "put_status")  # each run is followed by the drain's measure
CLIENTS = 50  # API keys wrk's requests spread over (one per connection's worth of client)
KEYS = env.WORK / "keys.txt"
# Each phase by name, as steps: the processes running side by side, and the (variant, endpoint)
# runs against them. The shipped phase runs each endpoint's floor before it.
PHASES = {
    "shipped": [(("shipped",), [("shipped", e) for e in ENDPOINTS])],
    "costs": [(COMPARED, [(v, "get_user") for _ in range(3) for v in COMPARED])],  # 3 rounds of half-length runs
}


class Run:
    """The processes under test, and wrk against them."""

    def __init__(self, s: env.Settings):
        self.s, self.base_port = s, free_port()
        self.baseline = env.start_floor("bare", self.base_port)
        self.running: dict[str, tuple[env.Proc, int]] = {}  # variant: process, port
        self.floors: dict[str, tuple[env.Proc, int]] = {}  # "floor get": process, port
        self.ids: dict[str, list[str]] = {}
        self.profiled: dict = {}  # {"get_user": {"shipped": {group: µs}, "floor": {...}}, ...}

    def use(self, variants: tuple[str, ...]) -> None:
        """Exactly these variants running, each on a port of its own, warmed up."""
        if tuple(self.running) != variants:
            self.stop()
            for v in variants:
                log(f"service: {v}")
                port, role = free_port(), "api" if v in COMPARED else "all"
                self.running[v] = env.start_service(v, port, VARIANTS[v], role, ENTRY.get(v, "service")), port
                if self.ids:
                    self.wrk("warmup", v, "get_user", self.s.warmup_s)

    def start_floors(self) -> None:
        """Every endpoint's floor, once the keys and the seed are in."""
        env.floor_tables()
        for kind in dict.fromkeys(e[2] for e in ENDPOINTS.values()):
            port = free_port()
            self.floors[f"floor {kind}"] = env.start_floor(kind, port, KEYS), port

    def stop(self) -> None:
        for proc, _ in self.running.values():
            proc.stop()
        self.running = {}

    def prepare(self, endpoint: str, variant: str) -> dict:
        """The ids file, path and body ``endpoint``'s script takes (pending and completed payments anew)."""
        _, ids, _, request = ENDPOINTS[endpoint]
        if ids == "pending":
            pending = [r[0] for r in env.mysql_query("SELECT id FROM payments WHERE status = 'pending'")]
            random.Random(len(pending)).shuffle(pending)
            self.ids[ids] = pending
            if self.floors:
                env.floor_tables()  # the same rows in the PUT floor's table
        if ids == "completed":  # over REST, as a client would: the first 1,000 pending ones completed
            port, key = self.running["shipped"][1], KEYS.read_text().split()[0]
            self.ids[ids] = asyncio.run(client.completed(port, key, self.ids["payments"][:1000]))
        (env.WORK / f"{ids}.txt").write_text("\n".join(self.ids[ids]) + "\n")
        return {"BENCH_IDS": str(env.WORK / f"{ids}.txt")} | {f"BENCH_{k}": v for k, v in request.items()}

    def wrk(self, name: str, target: str | None, endpoint: str, seconds: int, ids: dict | None = None, **kw) -> dict:
        """One wrk run against ``endpoint`` of ``target`` (a variant, or a floor), or against the
        baseline (None)."""
        procs = self.running | self.floors
        names = {self.baseline.pid: "baseline", os.getpid(): "bench"}
        names |= {proc.pid: "idle " + v.split()[0] for v, (proc, _) in procs.items()}
        extra, url = {"BENCH_KEYS": str(KEYS)}, f"http://{env.HOST}:{self.base_port}/"
        if target is not None:
            names[procs[target][0].pid] = "floor" if target in self.floors else "service"
            extra |= ids or self.prepare(endpoint, target)
            url = f"http://{env.HOST}:{procs[target][1]}"
        script = extra.get("BENCH_SCRIPT", "request.lua")
        r = wrk.run(name, url, script, seconds, self.s.connections, extra | {"names": names}, **kw)
        log(f"  {name:<40} {r['rps']:>8,.0f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:7.1f} ms")
        return r

    def drain(self, ended_at: float) -> dict:
        out = asyncio.run(drain.measure(ended_at, self.s.drain_timeout_s))
        log(f"    outbox drained {out.get('outbox_drained_s')} s, analytics {out.get('analytics_caught_up_s')} s")
        return out

    def http(self) -> list[dict]:
        """Every phase's runs, each between two baseline runs (and after its floor's)."""
        runs = [self.wrk("baseline-0", None, "", self.s.duration_s) | {"kind": "baseline"}]
        for phase, (variants, plan) in ((p, step) for p in PHASES if self.s.phase(p) for step in PHASES[p]):
            self.use(variants)
            seconds = self.s.duration_s if len(variants) == 1 else max(3, self.s.duration_s // 2)  # side by side
            for variant, endpoint in plan:
                floor, ids = f"floor {ENDPOINTS[endpoint][2]}", self.prepare(endpoint, variant)
                if below := variant == "shipped" and floor in self.floors:
                    floor_run = self.wrk(f"{floor}: {endpoint}", floor, endpoint, seconds, ids)
                r = self.wrk(f"{variant}: {endpoint}", variant, endpoint, seconds, ids)
                r |= {"kind": "endpoint", "variant": variant, "endpoint": endpoint, "label": ENDPOINTS[endpoint][0]}
                if endpoint in WRITES:
                    r["drain"] = self.drain(r["ended_at"])
                after = self.wrk(f"baseline-{len(runs) // 2 + 1}", None, "", seconds) | {"kind": "baseline"}
                r["baseline_rps"] = round(statistics.fmean([runs[-1]["rps"], after["rps"]]))
                if below:  # the floor's run just before the endpoint's
                    r |= {"floor_rps": floor_run["rps"], "floor_ratio": round(r["rps"] / floor_run["rps"], 4)}
                runs += [r | {"ratio": round(r["rps"] / r["baseline_rps"], 4)}, after]
            if phase == "shipped":  # while its process is warm
                self.profiled = self.profile()
        return runs

    def profile(self) -> dict:
        """Each shipped endpoint and its floor under py-spy: µs per request by module group."""
        out: dict[str, dict] = {}
        for e in ENDPOINTS:
            ids, procs = self.prepare(e, "shipped"), self.running | self.floors
            for who in ("shipped", f"floor {ENDPOINTS[e][2]}"):
                if who in procs:
                    r = self.wrk(f"profile {who}: {e}", who, e, self.s.profile_s, ids, profile=procs[who][0].pid)
                    out.setdefault(e, {})[who.split()[0]] = r["profile_us"]
            if e in WRITES:
                self.drain(time.time())
        return out


def against_the_service(s: env.Settings, key: str, results: dict) -> None:
    """Seed over REST, then the ``http`` and ``ws`` stages."""
    run = Run(s)
    try:
        run.use(("shipped",))
        started, port = time.time(), run.running["shipped"][1]
        run.ids = asyncio.run(client.seed(port, key, s.users, s.list_users, s.payments_per_user))
        run.ids["big_user"] = [env.big_user(run.ids["users"][-1])]
        KEYS.write_text("\n".join(asyncio.run(client.admin_keys(port, key, CLIENTS))) + "\n")
        results["seed"] = {"seconds": round(time.time() - started, 1), "drain": run.drain(time.time())}
        run.start_floors()
        run.wrk("warmup-baseline", None, "", s.warmup_s)
        if s.stage("http"):
            results["runs"] = run.http()
            results["profile"] = run.profiled
        if s.stage("ws"):
            run.stop()
            run.use(("shipped",))
            results["ws"] = fanout.run(run.running["shipped"][1], key, run.running["shipped"][0], run.ids["users"], s)
    finally:
        for proc, _ in [*run.running.values(), *run.floors.values(), (run.baseline, 0)]:
            proc.stop()


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
    env.DOCS_BENCH.mkdir(parents=True, exist_ok=True)
    (env.DOCS_BENCH / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {env.DOCS_BENCH.relative_to(env.REPO)}/results.json and {report.write()} in {results['elapsed_s']} s")


if __name__ == "__main__":
    main()
