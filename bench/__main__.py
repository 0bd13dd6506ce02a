"""``python -m bench``: the whole benchmark, end to end (what ``make bench`` runs).

1. backing services up; the bench's own MySQL database, Redis db, Mongo db, Kafka topic;
2. the service (``python -m service`` with the bench overrides) and the bare Tornado
   baseline (bench/baseline.py), each its own process on a free port;
3. seed users and payments over REST;
4. wrk against each endpoint at fixed concurrency, alternating with the baseline
   (baseline, A, baseline, B, ..., baseline) so drift cancels; after each write run,
   how long until every outbox event was on Kafka;
5. WebSocket fan-out: N connections, payments at a fixed rate, delivery latency, RSS;
6. docs/bench/results.json, docs/BENCHMARKS.md and the plots (bench/report.py).

Settings are BENCH_* environment variables (bench/README.md).
"""

from __future__ import annotations

import datetime as dt
import json
import resource
import statistics
import sys
import time

from bench import drain, fanout, report, seed, wrk
from bench.env import (
    DOCS_BENCH,
    HOST,
    WORK,
    Settings,
    cpu_by_process,
    cpu_split,
    free_port,
    log,
    machine,
    metric_labels,
    metrics_text,
    mysql_query,
    raise_nofile,
    reset_stores,
    rss_kib,
    services_up,
    start_baseline,
    start_service,
)

# key, label, wrk script, id file (a key of the seed's files, or "pending"), path template, writes events
ENDPOINTS = [
    ("get_user", "GET user (cache hit)", "get.lua", "users", "/api/v1/users/%s", False),
    ("get_payment", "GET payment", "get.lua", "payments", "/api/v1/payments/%s", False),
    (
        "list_payments",
        "GET user payments (page of 20)",
        "get.lua",
        "list_users",
        "/api/v1/users/%s/payments?limit=20",
        False,
    ),
    ("post_users", "POST users", "post_users.lua", None, None, True),
    ("post_payments", "POST payments", "post_payments.lua", "users", None, True),
    ("put_status", "PUT payment status (pending→processing)", "put_status.lua", "pending", None, True),
]


def background_load(seconds: float = 2.0, threshold: float = 0.15) -> dict[str, float]:
    """What else is using the CPU (e.g. a test suite): processes above ``threshold`` cores."""
    before, t = cpu_by_process(), time.monotonic()
    time.sleep(seconds)
    split = cpu_split(before, cpu_by_process(), time.monotonic() - t, {})
    return {k: v for k, v in split.items() if v >= threshold}


def main() -> int:
    s = Settings()
    WORK.mkdir(parents=True, exist_ok=True)
    DOCS_BENCH.mkdir(parents=True, exist_ok=True)
    nofile = raise_nofile(s.ws_connections + 4096)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    service_nofile = min(hard, s.ws_connections + 4096) if hard != resource.RLIM_INFINITY else s.ws_connections + 4096
    notes: list[str] = []
    if service_nofile < s.ws_connections + 200:
        notes.append(f"open-file hard limit {hard} is below {s.ws_connections} connections")
    started_at = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()

    services_up()
    quiet = background_load()
    if quiet:
        notes.append(f"CPU already in use before the bench started (cores, 2 s sample): {quiet}")
        log(f"warning: the machine is not idle: {quiet}")
    log("resetting the bench's database, cache db, mongo db; ensuring the kafka topic")
    reset_stores()
    port, base_port = free_port(), free_port()
    log(f"starting service on :{port} (ulimit -n {service_nofile}) and baseline on :{base_port}")
    service = start_service(port, s.ws_connections, service_nofile)
    baseline = start_baseline(base_port)
    runs: list[dict] = []
    endpoints: list[dict] = []
    ws: dict | None = None
    try:
        files = seed.seed_sync(port, s.users, s.list_users, s.payments_per_list_user)
        svc_url, base_url = f"http://{HOST}:{port}", f"http://{HOST}:{base_port}/"

        names = {service.pid: "service", baseline.pid: "baseline"}

        def run(name: str, url: str, script: str, duration: int, env: dict | None = None) -> dict:
            before, t = cpu_by_process(), time.monotonic()
            r = wrk.run(name, url, script, duration, s.connections, s.threads, env).as_dict()
            elapsed = time.monotonic() - t
            split = cpu_split(before, cpu_by_process(), elapsed, names)
            split["wrk"] = round(r["cpu_s"] / elapsed, 2)  # exited before the second snapshot
            r["cpu_cores"] = dict(sorted(split.items(), key=lambda kv: -kv[1]))
            lag = metric_labels(metrics_text(port), "singleton_kafka_consumer_lag_messages")
            r["consumer_lag"] = lag
            log(
                f"  {name:<22} {r['rps']:>9.1f} req/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms"
                f"  errors {sum(r['errors'].values())} non-2xx {r['non_2xx']}"
            )
            return r

        log(f"warm-up ({s.warmup_s}s each)")
        run("warmup-baseline", base_url, "get.lua", s.warmup_s)
        run(
            "warmup-get_user",
            svc_url,
            "get.lua",
            s.warmup_s,
            {"BENCH_IDS": str(files["users"]), "BENCH_PATH": "/api/v1/users/%s"},
        )

        log(f"runs: {s.duration_s}s each, {s.connections} connections, {s.threads} threads")
        previous_baseline = run("baseline-0", base_url, "get.lua", s.duration_s)
        previous_baseline["kind"] = "baseline"
        runs.append(previous_baseline)
        for i, (key, label, script, ids, path, writes) in enumerate(ENDPOINTS, start=1):
            env: dict = {}
            if ids == "pending":
                pending = [
                    row[0]
                    for row in mysql_query("SELECT id FROM payments WHERE status = 'pending' ORDER BY created_at")
                ]
                (WORK / "pending.txt").write_text("\n".join(pending) + "\n")
                env["BENCH_IDS"] = str(WORK / "pending.txt")
                log(f"  ({len(pending)} pending payments to move)")
            elif ids is not None:
                env["BENCH_IDS"] = str(files[ids])
            if path is not None:
                env["BENCH_PATH"] = path
            r = run(key, svc_url, script, s.duration_s, env)
            r.update({"kind": "endpoint", "label": label})
            if writes:
                r["drain"] = drain.measure(port, r["ended_at"], s.drain_timeout_s)
                r["events"] = drain.events_between(r["started_at"], r["ended_at"] + 1)
                log(
                    f"    outbox: gauge 0 after {r['drain']['metrics_zero_after_s']}s; last event on Kafka "
                    f"{r['drain']['last_published_after_s']}s after the run's end ({r['events']} events)"
                )
            runs.append(r)
            next_baseline = run(f"baseline-{i}", base_url, "get.lua", s.duration_s)
            next_baseline["kind"] = "baseline"
            runs.append(next_baseline)
            adjacent = statistics.fmean([previous_baseline["rps"], next_baseline["rps"]])
            endpoints.append(
                {
                    "key": key,
                    "label": label,
                    "rps": r["rps"],
                    "p50_ms": r["p50_ms"],
                    "p99_ms": r["p99_ms"],
                    "requests": r["requests"],
                    "errors": sum(r["errors"].values()) - r["errors"]["status"],
                    "non_2xx": r["non_2xx"],
                    "baseline_rps": round(adjacent, 1),
                    "ratio": round(r["rps"] / adjacent, 4) if adjacent else None,
                    "drain": r.get("drain"),
                    "events": r.get("events"),
                    "passes": r.get("passes"),
                    "cpu_cores": r["cpu_cores"],
                    "consumer_lag": r["consumer_lag"],
                }
            )
            previous_baseline = next_baseline

        service_rss_after_http = rss_kib(service.pid)
        if not s.skip_ws:
            ws = fanout.run(
                port,
                service.pid,
                files["users"],
                s.ws_connections,
                s.ws_users,
                s.ws_rate,
                s.ws_seconds,
                s.ws_client_procs,
            )
            log(
                f"ws: p50 {ws['latency_ms']['p50']} ms p99 {ws['latency_ms']['p99']} ms, "
                f"{ws['frames_received']}/{ws['frames_expected']} frames, {ws['frames_per_s']} frames/s, "
                f"service RSS {ws['service_rss_mib']['after_events']} MiB"
            )
    finally:
        service.stop()
        baseline.stop()

    baselines = [r for r in runs if r["kind"] == "baseline"]
    results = {
        "date": started_at.isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {**s.__dict__, "client_nofile": nofile, "service_nofile": service_nofile},
        "notes": notes,
        "baseline": {
            "rps_mean": round(statistics.fmean(b["rps"] for b in baselines), 1),
            "rps_min": min(b["rps"] for b in baselines),
            "rps_max": max(b["rps"] for b in baselines),
            "p50_ms": round(statistics.median(b["p50_ms"] for b in baselines), 3),
            "p99_ms": round(statistics.median(b["p99_ms"] for b in baselines), 3),
            "runs": len(baselines),
        },
        "endpoints": endpoints,
        "service_rss_after_http_mib": round(service_rss_after_http["VmRSS"] / 1024, 1),
        "ws": ws,
        "runs": runs,
        "elapsed_s": round(time.monotonic() - t0, 1),
    }
    path = DOCS_BENCH / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {path.relative_to(path.parent.parent.parent)}")
    report.write()
    log(f"done in {results['elapsed_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
