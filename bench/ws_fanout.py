"""WebSocket fan-out client, run as its own process by the bench.

    python -m bench.ws_fanout --port P --users FILE --connections N [--proc I --procs K]

Opens this process's share of N connections (connection k goes to user
k mod len(users)), prints one JSON line ``{"ready": ...}``, then counts frames
until it reads ``stop`` on stdin. After ``stop`` it waits until no frame has
arrived for a second, prints one JSON line with its results and exits.

Latency: the REST driver puts its send time (``time.time()``, the same clock
in every process) into each payment's description as ``bench:<t>``; a
``payment_created`` frame's latency is its arrival time minus that.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import time
from collections import Counter

from websockets.asyncio.client import connect

from bench.env import raise_nofile

MARK = '"description":"bench:'
OCCURRED = '"occurred_at":"'


class Stats:
    def __init__(self) -> None:
        self.frames = 0
        self.event_frames = 0
        self.latencies: list[float] = []
        self.since_occurred: list[float] = []  # from the event's occurred_at (set in the service's handler)
        self._occurred: dict[str, float] = {}
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.per_conn: Counter[str] = Counter()
        self.open = 0
        self.failed = 0
        self.closed_early = 0  # opened, then closed before the end
        self.errors: list[str] = []


async def hold(url: str, key: str, stats: Stats, opened: asyncio.Queue) -> None:
    try:
        ws = await asyncio.wait_for(
            connect(url, ping_interval=None, compression=None, max_queue=None, open_timeout=60), 90
        )
        first = await asyncio.wait_for(ws.recv(), 30)
        if '"connected"' not in first:
            raise RuntimeError(f"unexpected first frame {first[:100]}")
    except Exception as exc:
        stats.failed += 1
        if len(stats.errors) < 5:
            stats.errors.append(repr(exc))
        opened.put_nowait(False)
        return
    stats.open += 1
    opened.put_nowait(True)
    try:
        async for message in ws:
            now = time.time()
            stats.frames += 1
            at = message.find(MARK)
            if at < 0 or '"type":"payment_created"' not in message:
                continue
            start = at + len(MARK)
            sent = float(message[start : message.index('"', start)])
            stats.event_frames += 1
            stats.per_conn[key] += 1
            stats.latencies.append(now - sent)
            at = message.find(OCCURRED)
            if at >= 0:
                stamp = message[at + len(OCCURRED) : message.index('"', at + len(OCCURRED))]
                occurred = stats._occurred.get(stamp)
                if occurred is None:
                    occurred = stats._occurred[stamp] = dt.datetime.fromisoformat(
                        stamp.replace("Z", "+00:00")
                    ).timestamp()
                stats.since_occurred.append(now - occurred)
            if stats.first_at is None:
                stats.first_at = now
            stats.last_at = now
    except Exception:
        pass
    stats.closed_early += 1


async def main_async(args: argparse.Namespace, users: list[str]) -> None:
    stats = Stats()
    opened: asyncio.Queue = asyncio.Queue()
    mine = [k for k in range(args.connections) if k % args.procs == args.proc]
    sem = asyncio.Semaphore(args.concurrency)
    tasks = []
    started = time.monotonic()
    expected_by_user: dict[str, list[str]] = {}

    async def open_one(k: int) -> None:
        user = users[k % len(users)]
        key = f"b{args.proc}-{k}"
        expected_by_user.setdefault(user, []).append(key)
        url = f"ws://127.0.0.1:{args.port}/ws?user_id={user}&client_id={key}"
        async with sem:
            tasks.append(asyncio.create_task(hold(url, key, stats, opened)))
            await opened.get()  # one handshake finished (or failed): let the next start

    await asyncio.gather(*(open_one(k) for k in mine))
    ready = {
        "ready": True,
        "proc": args.proc,
        "attempted": len(mine),
        "open": stats.open - stats.closed_early,
        "failed": stats.failed,
        "connect_seconds": round(time.monotonic() - started, 2),
        "errors": stats.errors,
    }
    print(json.dumps(ready), flush=True)

    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # "stop"
    quiet_since = time.monotonic()
    seen = stats.frames
    deadline = time.monotonic() + args.settle_timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        if stats.frames != seen:
            seen, quiet_since = stats.frames, time.monotonic()
        elif time.monotonic() - quiet_since >= 1.0:
            break
    result = {
        "proc": args.proc,
        "frames": stats.frames,
        "event_frames": stats.event_frames,
        "first_at": stats.first_at,
        "last_at": stats.last_at,
        "closed_early": stats.closed_early,
        "per_user_conns": {u: len(keys) for u, keys in expected_by_user.items()},
        "per_conn_min": min((stats.per_conn[k] for keys in expected_by_user.values() for k in keys), default=0),
        "latencies_ms": [round(x * 1000, 2) for x in stats.latencies],
        "since_occurred_ms": [round(x * 1000, 2) for x in stats.since_occurred],
        "rss_kib": _rss(),
        "cpu_s": time.process_time(),
    }
    print(json.dumps(result), flush=True)
    os._exit(0)  # no 10,000 closing handshakes: the kernel closes the sockets


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--users", required=True, help="file of user ids, one a line")
    parser.add_argument("--connections", type=int, default=10000, help="total over all client processes")
    parser.add_argument("--proc", type=int, default=0)
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=100, help="handshakes under way at once")
    parser.add_argument("--settle-timeout", type=float, default=120)
    args = parser.parse_args()
    raise_nofile(args.connections // args.procs + 1024)
    if os.environ.get("BENCH_WS_UVLOOP", "1") not in ("", "0"):
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    with open(args.users) as f:
        users = [line.strip() for line in f if line.strip()]
    asyncio.run(main_async(args, users))


if __name__ == "__main__":
    main()
