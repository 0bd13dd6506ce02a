"""py-spy around a running process: record, and summarize collapsed stacks."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

from bench.env import REPO

PY_SPY = str(REPO / ".venv" / "bin" / "py-spy")

# The event loop's own frames sit under every sample: leave them out of the tables.
SCAFFOLD = (
    "<module> (",
    "_run_module_as_main (",
    "_run_code (",
    "main (",
    "run (asyncio/runners.py",
    "Runner.run (",
    "BaseEventLoop.run_until_complete",
    "BaseEventLoop.run_forever",
    "BaseEventLoop._run_once",
    "Handle._run (",
    "Loop.run_",  # uvloop
)

# Where a sample's innermost frame lives, by path fragment (first match wins).
PACKAGES = (
    ("gc_collect", "CPython cyclic GC (gc_collect_main)"),
    ("EpollSelector.select", "waiting in epoll (idle)"),
    ("(libc.so", "system calls (send/recv/...)"),
    ("(libpython", "CPython internals"),
    (".so", "C extensions"),
    ("prometheus_client/", "prometheus_client (metrics)"),
    ("jsonschema/", "jsonschema (request validation)"),
    ("referencing/", "jsonschema (request validation)"),
    ("rpds", "jsonschema (request validation)"),
    ("tornado/websocket", "tornado websocket"),
    ("tornado/", "tornado"),
    ("asyncio/", "asyncio"),
    ("selectors.py", "asyncio"),
    ("_weakrefset.py", "asyncio"),
    ("aiomysql/", "aiomysql/pymysql"),
    ("pymysql/", "aiomysql/pymysql"),
    ("redis/", "redis-py"),
    ("aiokafka/", "aiokafka"),
    ("kafka/", "aiokafka"),
    ("pymongo/", "pymongo"),
    ("bson/", "pymongo"),
    ("logging/", "logging"),
    ("json/", "json (stdlib)"),
    ("uuid.py", "uuid"),
    ("re/", "re"),
    ("domain/", "service: domain/"),
    ("handlers/", "service: handlers/"),
    ("managers/", "service: managers/"),
    ("service/", "service: service/"),
)


def record(pid: int, out: Path, duration: int, rate: int, fmt: str) -> None:
    """``py-spy record --nonblocking --idle --threads`` for ``duration`` s (fmt: raw or flamegraph).

    Non-blocking: the target is never paused, so its throughput and timing are left
    alone (a blocking ``--native`` run here over-counted system calls several times
    over against the process's own user/system split). ``--idle`` keeps every sample,
    so shares are of wall time. Time in the cyclic garbage collector shows up under
    whatever Python frame triggered it; bench/profile.py measures it exactly with
    ``gc.callbacks`` instead.
    """
    argv = [PY_SPY, "record", "--pid", str(pid), "--duration", str(duration), "--rate", str(rate)]
    argv += ["--nonblocking", "--idle", "--threads", "--format", fmt, "-o", str(out)]
    if fmt == "raw":
        argv.append("--function")  # aggregate by function, not by line
    subprocess.run(argv, check=True, capture_output=True, timeout=duration + 60)


def _package(frame: str) -> str:
    for fragment, name in PACKAGES:
        if fragment in frame:
            return name
    return "other"


def summarize(raw: Path, duration: int, rate: int, top: int = 25) -> dict:
    """Inclusive and self percentages per function, and self time per package."""
    stacks: list[tuple[list[str], int]] = []
    other_threads = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        thread, *frames = stack.split(";")
        if "MainThread" not in thread:  # the event loop's thread only (not executor workers)
            other_threads += int(count)
            continue
        stacks.append((frames or ["(no Python frame)"], int(count)))
    total = sum(c for _, c in stacks) or 1
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    for frames, count in stacks:
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
        packages[_package(frames[-1])] += count

    def rows(counter: Counter, skip_scaffold: bool) -> list[dict]:
        out = []
        for frame, count in counter.most_common():
            if skip_scaffold and (frame.startswith(SCAFFOLD) or count >= 0.99 * total):
                continue
            out.append({"frame": frame, "pct": round(100 * count / total, 1)})
            if len(out) >= top:
                break
        return out

    return {
        "samples": total,
        "other_thread_samples": other_threads,
        "inclusive": rows(inclusive, True),
        "self": rows(own, False),
        "packages": [{"package": p, "pct": round(100 * c / total, 1)} for p, c in packages.most_common()],
    }
