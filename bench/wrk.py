"""wrk with one of bench/lua/*.lua: run it, parse the line its ``done()`` prints, and note
what every process on the machine used of the CPU meanwhile."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time

from bench.env import REPO, WORK, cpu_split, processes

LUA = REPO / "bench" / "lua"


def run(name: str, url: str, script: str, duration_s: int, connections: int, threads: int, env: dict) -> dict:
    """``wrk -t threads -c connections -d duration_s -s bench/lua/<script> url``; ``env``
    reaches the script (BENCH_KEY, BENCH_IDS, BENCH_PATH, and ``names``: pid -> label
    for the CPU table)."""
    names = env.pop("names", {})
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--timeout", "10s", "-s", str(LUA / script)]
    full_env = os.environ | {"LUA_PATH": f"{LUA}/?.lua;;", "BENCH_THREADS": str(threads)} | env
    before, usage, started = processes(), resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    proc = subprocess.run([*argv, url], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, ended, after = proc.stdout, time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = after.ru_utime - usage.ru_utime + after.ru_stime - usage.ru_stime  # wrk has exited: its own CPU
    (WORK / f"wrk-{name}.txt").write_text(out)
    line = next((x for x in out.splitlines() if x.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk {name} failed ({proc.returncode}):\n{out}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    lat, seconds = data["latency_us"], data["duration_us"] / 1e6
    cpu = cpu_split(before, processes(), ended - started, names) | {"wrk": round(wrk_cpu / (ended - started), 2)}
    return {
        "rps": round(data["requests"] / seconds, 1),
        **{f"{p}_ms": lat[p] / 1000 for p in ("p50", "p90", "p99", "max")},
        "errors": sum(data["errors"].values()) - data["errors"]["status"],
        "non_2xx": data["errors"]["status"],
        "passes": data.get("passes"),
        "ended_at": ended,
        "cpu_cores": dict(sorted(cpu.items(), key=lambda kv: -kv[1])),
    }
