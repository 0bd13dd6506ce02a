"""``python -m bench.variants`` (``make bench-variants``): does uvloop or orjson
help? Measured only; the service is not changed.

Configurations: stock, uvloop, orjson, uvloop+orjson, and a garbage collector
tuned with ``gc.set_threshold(50000, 20, 100)`` (all through bench/run_variant.py),
plus the bare baseline on asyncio and on uvloop. Each round starts each service
configuration alone, runs GET user (cache hit) and POST payments against it,
and stops it; rounds interleave so drift spreads evenly. Then, once each, the
WebSocket fan-out stage (BENCH_WS_* settings) for stock, uvloop, GC-tuned and
GC-tuned+uvloop. Medians go to docs/bench/variants.json (and into
docs/BENCHMARKS.md if results.json exists).

BENCH_VARIANT_ROUNDS (default 2), BENCH_DURATION (default 8 here),
BENCH_VARIANT_WS=0 to skip the fan-out part.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import sys

from bench import fanout, report, seed, wrk
from bench.env import (
    DOCS_BENCH,
    HOST,
    WORK,
    Settings,
    code_version,
    free_port,
    log,
    raise_nofile,
    reset_stores,
    services_up,
    start_baseline,
    start_service,
)

GC_TUNED = "50000,20,100"
CONFIGS = {
    "stock": {},
    "uvloop": {"BENCH_UVLOOP": "1"},
    "orjson": {"BENCH_ORJSON": "1"},
    "uvloop+orjson": {"BENCH_UVLOOP": "1", "BENCH_ORJSON": "1"},
    "gc tuned": {"BENCH_GC_THRESHOLD": GC_TUNED},
}
WS_CONFIGS = {
    "stock": {},
    "uvloop": {"BENCH_UVLOOP": "1"},
    "gc tuned": {"BENCH_GC_THRESHOLD": GC_TUNED},
    "gc tuned+uvloop": {"BENCH_GC_THRESHOLD": GC_TUNED, "BENCH_UVLOOP": "1"},
}


def main() -> int:
    s = Settings()
    duration = int(os.environ.get("BENCH_DURATION", "") or 8)
    rounds = int(os.environ.get("BENCH_VARIANT_ROUNDS", "") or 2)
    WORK.mkdir(parents=True, exist_ok=True)
    services_up()
    reset_stores()
    ports = {"asyncio": free_port(), "uvloop": free_port()}
    baselines = {
        "asyncio": start_baseline(ports["asyncio"]),
        "uvloop": start_baseline(ports["uvloop"], {"BENCH_UVLOOP": "1"}),
    }
    runs: list[dict] = []
    try:
        port = free_port()
        svc = start_service(port, 100, 4096)
        try:
            files = seed.seed_sync(port, s.users, 0, 0)
        finally:
            svc.stop()

        def record(config: str, endpoint: str, r: wrk.WrkResult) -> None:
            runs.append({"config": config, "endpoint": endpoint, **r.as_dict()})
            log(
                f"  {config:<14} {endpoint:<14} {r.rps:9.1f} req/s  p50 {r.p50_ms:6.2f}  p99 {r.p99_ms:7.2f}"
                f"  non-2xx {r.non_2xx}"
            )

        for rnd in range(rounds):
            log(f"round {rnd + 1}/{rounds}")
            for loop, bport in ports.items():
                r = wrk.run(
                    f"variant-base-{loop}-{rnd}",
                    f"http://{HOST}:{bport}/",
                    "get.lua",
                    duration,
                    s.connections,
                    s.threads,
                )
                record(f"baseline {loop}", "bare handler", r)
            for config, env in CONFIGS.items():
                port = free_port()
                svc = start_service(port, 100, 4096, runner=["-m", "bench.run_variant"], extra_env=env)
                try:
                    url = f"http://{HOST}:{port}"
                    wrk.run(
                        "variant-warmup",
                        url,
                        "get.lua",
                        2,
                        s.connections,
                        s.threads,
                        {"BENCH_IDS": str(files["users"]), "BENCH_PATH": "/api/v1/users/%s"},
                    )
                    r = wrk.run(
                        f"variant-{config}-get_user-{rnd}",
                        url,
                        "get.lua",
                        duration,
                        s.connections,
                        s.threads,
                        {"BENCH_IDS": str(files["users"]), "BENCH_PATH": "/api/v1/users/%s"},
                    )
                    record(config, "GET user", r)
                    r = wrk.run(
                        f"variant-{config}-post_payments-{rnd}",
                        url,
                        "post_payments.lua",
                        duration,
                        s.connections,
                        s.threads,
                        {"BENCH_IDS": str(files["users"])},
                    )
                    record(config, "POST payments", r)
                finally:
                    svc.stop()
    finally:
        for b in baselines.values():
            b.stop()
    ws_runs = []
    if os.environ.get("BENCH_VARIANT_WS", "1") not in ("", "0"):
        nofile = raise_nofile(s.ws_connections + 4096)
        for config, env in WS_CONFIGS.items():
            port = free_port()
            gc_log = WORK / f"gc-{config.replace(' ', '_')}.json"
            svc = start_service(
                port,
                s.ws_connections,
                nofile,
                runner=["-m", "bench.run_variant"],
                extra_env={**env, "BENCH_GC_LOG": str(gc_log)},
            )
            try:
                ws = fanout.run(
                    port,
                    svc.pid,
                    files["users"],
                    s.ws_connections,
                    s.ws_users,
                    s.ws_rate,
                    s.ws_seconds,
                    s.ws_client_procs,
                )
            finally:
                svc.stop()
            gc_stats = json.loads(gc_log.read_text()) if gc_log.exists() else None
            ws_runs.append(
                {
                    "config": config,
                    "gc": gc_stats,
                    **{
                        k: ws[k]
                        for k in (
                            "connections_open",
                            "frames_received",
                            "frames_expected",
                            "frames_per_s",
                            "latency_ms",
                            "since_occurred_ms",
                            "service_rss_mib",
                            "service_cpu",
                            "cpu_cores",
                        )
                    },
                }
            )
            log(
                f"  ws {config:<16} p50 {ws['latency_ms']['p50']} ms p99 {ws['latency_ms']['p99']} ms, "
                f"{ws['frames_per_s']} frames/s; gen2 GC {gc_stats and gc_stats['gen2']}"
            )

    summary = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["config"], r["endpoint"]), []).append(r)
    stock = {}
    for (config, endpoint), rs in groups.items():
        row = {
            "config": config,
            "endpoint": endpoint,
            "rps": statistics.median(x["rps"] for x in rs),
            "p50_ms": statistics.median(x["p50_ms"] for x in rs),
            "p99_ms": statistics.median(x["p99_ms"] for x in rs),
            "rounds": len(rs),
        }
        if config in ("stock", "baseline asyncio"):
            stock[endpoint] = row["rps"]
        summary.append(row)
    for row in summary:
        ref = stock.get(row["endpoint"])
        row["vs_stock"] = round(row["rps"] / ref - 1, 4) if ref else 0.0
    out = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": code_version(),
        "duration_s": duration,
        "rounds": rounds,
        "connections": s.connections,
        "summary": summary,
        "ws": ws_runs,
        "ws_settings": {
            "connections": s.ws_connections,
            "users": s.ws_users,
            "rate": s.ws_rate,
            "seconds": s.ws_seconds,
        },
        "runs": runs,
    }
    (DOCS_BENCH / "variants.json").write_text(json.dumps(out, indent=2) + "\n")
    log(f"wrote {DOCS_BENCH / 'variants.json'}")
    if (DOCS_BENCH / "results.json").exists():
        report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
