"""wrk with bench/wrk.lua: run it, parse the line its ``done()`` prints, and note what
every process used of the CPU meanwhile; for the process under test (``pid``), its CPU µs per
request and, with ``profile``, where they went: py-spy samples it (250 Hz, idle threads left
out), each sample counts for its innermost frame's module group, and a group's share of the
samples times the CPU µs per request is its µs per request."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import time
from collections import Counter

from bench.env import REPO, WORK, cpu_split, processes

SCRIPT = REPO / "bench" / "wrk.lua"
PYSPY = [str(REPO / ".venv/bin/py-spy"), "record", "--rate", "250", "--nonblocking", "--full-filenames"]
OURS = ("handlers", "domain", "managers", "service", "bench")  # bench/: a floor's own code
# A frame's group by a package in its file's path (after ours), in the profile table's order.
GROUPS = {"tornado": "tornado"} | dict.fromkeys(("asyncio", "uvloop", "selectors"), "asyncio/uvloop")
GROUPS |= dict.fromkeys(("aiomysql", "pymysql"), "aiomysql/pymysql") | {p: p for p in ("redis", "aiokafka", "pymongo")}
GROUPS |= {p: p for p in ("prometheus_client", "jsonschema", "logging", "json")} | {"referencing": "jsonschema"}
WAITS = re.compile(r"^BatchWriter\._monitor \(")
ORDER = (*(f"{d}/" for d in OURS), *dict.fromkeys(GROUPS.values()), "other")  # the profile table's rows


def group(frame: str) -> str:
    """``frame`` (py-spy's ``function (path:line)``) by module group."""
    path = re.sub(r"^.*\((.*):\d+\)$", r"\1", frame)
    if (parts := path.removeprefix(f"{REPO}/").split("/"))[0] in OURS:
        return parts[0] + "/"
    modules = [*parts[:-1], parts[-1].removesuffix(".py")]  # the package first, not its subpackage
    return next((GROUPS[p] for p in modules if p in GROUPS), "other")


def run(name: str, url: str, seconds: int, connections: int, env: dict, pid: int = 0, profile: bool = False) -> dict:
    """``wrk -t2 -c connections -d seconds -s bench/wrk.lua url``; ``env`` reaches the script
    (BENCH_KEYS, BENCH_IDS, BENCH_PATH, ...), and ``names`` (pid -> label) the CPU split."""
    names = env.pop("names", {})
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(SCRIPT), url]
    if profile:
        stacks = WORK / f"py-spy-{name}.txt".replace(": ", "-")
        argv_spy = [*PYSPY, "--pid", str(pid), "-d", str(seconds + 1), "-f", "raw", "-o", str(stacks)]
        spy = subprocess.Popen(argv_spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # attached
    before, usage, started = processes(), resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    env = os.environ | {"BENCH_THREADS": "2"} | env  # as -t2: the PUT walk's slices
    proc = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, ended, after, done = proc.stdout, time.time(), processes(), resource.getrusage(resource.RUSAGE_CHILDREN)
    (WORK / f"wrk-{name}.txt").write_text(out)
    line = next((x for x in out.splitlines() if x.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk {name} failed ({proc.returncode}):\n{out}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    lat, requests = data["latency_us"], data["requests"]
    wrk_cpu = done.ru_utime - usage.ru_utime + done.ru_stime - usage.ru_stime  # wrk has exited: its own CPU
    cpu = cpu_split(before, after, ended - started, names) | {"wrk": round(wrk_cpu / (ended - started), 2)}
    r = {
        "rps": round(requests / (data["duration_us"] / 1e6), 1),
        **{f"{p}_ms": lat[p] / 1000 for p in ("p50", "p90", "p99", "max")},
        "errors": sum(data["errors"].values()) - data["errors"]["status"],
        "non_2xx": data["errors"]["status"],
        "ended_at": ended,
        "cpu_cores": dict(sorted(cpu.items(), key=lambda kv: -kv[1])),
    }
    if pid:  # the process under test alone (not its children): its CPU-seconds over the requests
        r["cpu_us"] = round((after[pid][2] - before[pid][2]) / max(1, requests) * 1e6, 1)
    if profile:
        spy.wait(30)
        samples: Counter = Counter()
        # split at "\n" only: a frame name py-spy misread under load can hold a "\r"
        for stack, _, count in (x.rpartition(" ") for x in stacks.read_text().split("\n") if x):
            if WAITS.search(stack.rpartition(";")[2]) is None:
                samples[group(stack.rpartition(";")[2])] += int(count)
        r["profile_us"] = {g: round(n / max(1, samples.total()) * r["cpu_us"], 1) for g, n in samples.most_common()}
    return r
