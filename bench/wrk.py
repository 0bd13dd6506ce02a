"""Run wrk with one of bench/lua/*.lua and parse the line its done() prints."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from dataclasses import asdict, dataclass

from bench.env import BENCH_DIR, WORK

LUA_DIR = BENCH_DIR / "lua"


@dataclass
class WrkResult:
    name: str
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    errors: dict
    non_2xx: int
    started_at: float
    ended_at: float
    passes: int | None = None
    cpu_s: float = 0.0  # wrk's own CPU time (user + system)

    def as_dict(self) -> dict:
        return asdict(self)


def run(
    name: str,
    url: str,
    script: str,
    duration_s: int,
    connections: int,
    threads: int,
    env: dict | None = None,
) -> WrkResult:
    """``wrk -t threads -c connections -d duration_s -s bench/lua/<script> url``."""
    full_env = dict(os.environ)
    full_env.update(
        {"LUA_PATH": f"{LUA_DIR}/?.lua;;", "BENCH_THREADS": str(threads), "BENCH_NONCE": str(time.time_ns())}
    )
    full_env.update(env or {})
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA_DIR / script),
        url,
    ]
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    proc = subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=duration_s + 60)
    ended = time.time()
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / f"wrk-{name}.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk {name} failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    data, passes, non_2xx = None, None, 0
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line.removeprefix("BENCH_JSON "))
        elif line.startswith("BENCH_PASSES "):
            passes = int(line.split()[1])
        elif "Non-2xx or 3xx responses:" in line:
            non_2xx = int(line.rsplit(":", 1)[1])
    if data is None:
        raise RuntimeError(f"wrk {name}: no BENCH_JSON line in output:\n{proc.stdout}\n{proc.stderr}")
    lat = data["latency_us"]
    duration = data["duration_us"] / 1e6
    return WrkResult(
        name=name,
        requests=data["requests"],
        duration_s=round(duration, 3),
        rps=round(data["requests"] / duration, 1) if duration else 0.0,
        p50_ms=lat["p50"] / 1000,
        p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000,
        max_ms=lat["max"] / 1000,
        mean_ms=round(lat["mean"] / 1000, 3),
        errors=data["errors"],
        non_2xx=non_2xx,
        started_at=started,
        ended_at=ended,
        passes=passes,
        cpu_s=round(cpu_s, 3),
    )
