"""``python -m bench.profile`` (``make bench-profile``): py-spy on the service while
it is under load, for GET user (cache hit), POST payments and the WebSocket fan-out.

The service runs through bench/run_variant.py with only ``BENCH_GC_LOG`` set (stock
code plus a ``gc.callbacks`` timer, for the exact share of time in the garbage
collector). For each: wrk (or the fan-out stage) drives the service; after a short ramp,
``py-spy record`` takes collapsed stacks (for the tables) and then a flame graph
(docs/bench/profile-<name>.svg). Summaries go to docs/bench/profile.json, which
bench/report.py folds into docs/BENCHMARKS.md.

BENCH_PROFILE_SECONDS (default 10) per recording, BENCH_PROFILE_RATE (100 Hz),
BENCH_PROFILE="get_user,post_payments,ws_fanout,ws_fanout_gc_tuned" to choose (the last
one profiles a service started with gc.set_threshold(50000, 20, 100), to show what
remains once the collector is out of the way).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import fanout, pyspy, report, seed, wrk
from bench.env import (
    DOCS_BENCH,
    HOST,
    WORK,
    Settings,
    code_version,
    cpu_seconds,
    free_port,
    log,
    raise_nofile,
    reset_stores,
    services_up,
    start_service,
)

LABELS = {
    "get_user": "GET /api/v1/users/:id (cache hit)",
    "post_payments": "POST /api/v1/payments",
    "ws_fanout": "WebSocket fan-out (payments at a fixed rate to many connections)",
    "ws_fanout_gc_tuned": "WebSocket fan-out, service with gc.set_threshold(50000, 20, 100) (bench/run_variant.py)",
}
GC_TUNED = "50000,20,100"


GC_LOG = WORK / "profile-gc.json"


def _gc_seconds(gc_log: Path) -> tuple[float, float]:
    """Cumulative (all generations, full collections) GC seconds the service has logged."""
    try:
        data = json.loads(gc_log.read_text())
    except (OSError, ValueError):
        return 0.0, 0.0
    return sum(data[f"gen{g}"]["total_s"] for g in range(3)), data["gen2"]["total_s"]


def _record_both(pid: int, name: str, seconds: int, rate: int, gc_log: Path = GC_LOG) -> dict:
    raw = WORK / f"profile-{name}.raw.txt"
    cpu0, wall0, gc0 = cpu_seconds(pid), time.monotonic(), _gc_seconds(gc_log)
    pyspy.record(pid, raw, seconds, rate, "raw")
    time.sleep(0.6)  # the GC log is rewritten every 0.5 s
    wall = time.monotonic() - wall0
    cpu = (cpu_seconds(pid) - cpu0) / wall
    gc1 = _gc_seconds(gc_log)
    pyspy.record(pid, DOCS_BENCH / f"profile-{name}.svg", seconds, rate, "flamegraph")
    summary = pyspy.summarize(raw, seconds, rate)
    summary["cpu"] = round(cpu, 3)  # the service's CPU use while recorded, in cores
    summary["gc_share"] = round((gc1[0] - gc0[0]) / wall, 3)  # of wall time, from gc.callbacks
    summary["gc_full_share"] = round((gc1[1] - gc0[1]) / wall, 3)
    return summary


def _profile_fanout(
    s: Settings, port: int, pid: int, users_file: Path, seconds: int, rate: int, name: str, gc_log: Path
) -> dict:
    log(f"profiling {name}: {s.ws_connections} connections, {s.ws_rate:g} payments/s")
    box: dict = {}

    def record_later() -> None:
        time.sleep(1)
        box["summary"] = _record_both(pid, name, seconds, rate, gc_log)

    thread = threading.Thread(target=record_later)
    ws = fanout.run(
        port,
        pid,
        users_file,
        s.ws_connections,
        s.ws_users,
        s.ws_rate,
        2 + 2 * seconds,
        s.ws_client_procs,
        on_drive=thread.start,
    )
    thread.join()
    summary = box["summary"]
    summary.update(
        {
            "label": LABELS[name],
            "rps": ws["payments"]["achieved_rate"],
            "p99_ms": ws["latency_ms"]["p99"],
            "frames_per_s": ws["frames_per_s"],
        }
    )
    return summary


def main() -> int:
    s = Settings()
    seconds = int(os.environ.get("BENCH_PROFILE_SECONDS", "") or 10)
    rate = int(os.environ.get("BENCH_PROFILE_RATE", "") or 100)
    wanted = (os.environ.get("BENCH_PROFILE", "") or "get_user,post_payments,ws_fanout,ws_fanout_gc_tuned").split(",")
    WORK.mkdir(parents=True, exist_ok=True)
    DOCS_BENCH.mkdir(parents=True, exist_ok=True)
    raise_nofile(s.ws_connections + 4096)
    services_up()
    reset_stores()
    port = free_port()
    # run_variant with nothing switched on is the stock service plus a GC timer (gc.callbacks)
    GC_LOG.unlink(missing_ok=True)
    service = start_service(
        port,
        s.ws_connections,
        s.ws_connections + 4096,
        runner=["-m", "bench.run_variant"],
        extra_env={"BENCH_GC_LOG": str(GC_LOG)},
    )
    profiles: dict = {}
    try:
        files = seed.seed_sync(port, s.users, s.list_users, 5)
        url = f"http://{HOST}:{port}"
        load_s = 2 + 2 * seconds + 3
        http = {
            "get_user": ("get.lua", {"BENCH_IDS": str(files["users"]), "BENCH_PATH": "/api/v1/users/%s"}),
            "post_payments": ("post_payments.lua", {"BENCH_IDS": str(files["users"])}),
        }
        for name in wanted:
            if name in http:
                script, env = http[name]
                log(f"profiling {name}: wrk {load_s}s, py-spy {seconds}s raw + {seconds}s flame graph")
                with ThreadPoolExecutor(1) as pool:
                    load = pool.submit(wrk.run, f"profile-{name}", url, script, load_s, s.connections, s.threads, env)
                    time.sleep(2)
                    summary = _record_both(service.pid, name, seconds, rate)
                    result = load.result()
                summary.update({"label": LABELS[name], "rps": result.rps, "p99_ms": result.p99_ms})
                profiles[name] = summary
            elif name == "ws_fanout":
                profiles[name] = _profile_fanout(s, port, service.pid, files["users"], seconds, rate, name, GC_LOG)
            elif name == "ws_fanout_gc_tuned":
                service.stop()  # one service at a time: both would consume every event
                gc_log = WORK / "profile-gc-tuned.json"
                gc_log.unlink(missing_ok=True)
                port = free_port()
                service = start_service(
                    port,
                    s.ws_connections,
                    s.ws_connections + 4096,
                    runner=["-m", "bench.run_variant"],
                    extra_env={"BENCH_GC_LOG": str(gc_log), "BENCH_GC_THRESHOLD": GC_TUNED},
                )
                profiles[name] = _profile_fanout(s, port, service.pid, files["users"], seconds, rate, name, gc_log)
            for row in profiles[name]["packages"][:8]:
                log(f"    {row['pct']:5.1f}%  {row['package']}")
    finally:
        service.stop()
    out = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": code_version(),
        "duration_s": seconds,
        "rate": rate,
        "connections": s.connections,
        "profiles": profiles,
    }
    (DOCS_BENCH / "profile.json").write_text(json.dumps(out, indent=2) + "\n")
    if (DOCS_BENCH / "results.json").exists():
        report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
