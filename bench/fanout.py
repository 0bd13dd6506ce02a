"""The WebSocket fan-out stage: N connections held by client processes
(bench/ws_fanout.py), payments created over REST at a fixed rate, delivery
latency, frames/s and the service's memory."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bench import drain
from bench.env import HOST, PY, REPO, WORK, cpu_by_process, cpu_seconds, cpu_split, log, rss_kib
from bench.httpclient import Pool


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


async def drive(port: int, users: list[str], rate: float, seconds: float) -> dict:
    """POST payments at ``rate``/s for ``seconds``, round-robin over ``users``. Each
    request carries its send time in the description for the clients to read."""
    pool = Pool(HOST, port, 64)
    total = int(rate * seconds)
    statuses: dict[int, int] = {}
    per_user: dict[str, int] = {}
    late = 0
    start = time.monotonic()

    async def one(i: int) -> None:
        user = users[i % len(users)]
        body = {"user_id": user, "amount": "1.00", "currency": "USD", "description": f"bench:{time.time():.6f}"}
        status, _ = await pool.request("POST", "/api/v1/payments", body)
        statuses[status] = statuses.get(status, 0) + 1
        if status == 201:
            per_user[user] = per_user.get(user, 0) + 1

    tasks = []
    first_sent = time.time()
    for i in range(total):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.05:
            late += 1
        tasks.append(asyncio.create_task(one(i)))
    sending_s = time.monotonic() - start
    await asyncio.gather(*tasks)
    ended = time.time()
    await pool.close()
    return {
        "requested": total,
        "statuses": statuses,
        "per_user": per_user,
        "send_seconds": round(sending_s, 3),
        "achieved_rate": round(total / sending_s, 1) if sending_s else None,
        "sent_late": late,
        "first_sent_at": first_sent,
        "ended_at": ended,
    }


def run(
    port: int,
    service_pid: int,
    users_file: Path,
    connections: int,
    ws_users: int,
    rate: float,
    seconds: float,
    procs: int = 1,
    on_drive: Callable[[], None] | None = None,
) -> dict:
    """The whole stage; ``on_drive`` is called just before the first payment is sent."""
    all_users = [u for u in users_file.read_text().split() if u]
    users = all_users[:ws_users]
    fan_users = WORK / "ws_users.txt"
    fan_users.write_text("\n".join(users) + "\n")
    rss_before = rss_kib(service_pid)
    log(f"ws: opening {connections} connections over {len(users)} users ({procs} client process(es))")
    clients = [
        subprocess.Popen(
            [
                PY,
                "-m",
                "bench.ws_fanout",
                "--port",
                str(port),
                "--users",
                str(fan_users),
                "--connections",
                str(connections),
                "--proc",
                str(i),
                "--procs",
                str(procs),
            ],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(WORK / f"ws-client-{i}.log", "w"),
            text=True,
        )
        for i in range(procs)
    ]
    try:
        ready = [json.loads(_readline(c, 300)) for c in clients]
        opened = sum(r["open"] for r in ready)
        rss_connected = rss_kib(service_pid)
        log(
            f"ws: {opened} open ({sum(r['failed'] for r in ready)} failed) in "
            f"{max(r['connect_seconds'] for r in ready)}s; service RSS {rss_connected['VmRSS'] / 1024:.0f} MiB"
        )
        time.sleep(1)
        log(f"ws: creating payments at {rate:g}/s for {seconds:g}s")
        pids = [service_pid] + [c.pid for c in clients]
        cpu0, wall0 = [cpu_seconds(p) for p in pids], time.monotonic()
        machine0 = cpu_by_process()
        if on_drive is not None:
            on_drive()
        driven = asyncio.run(drive(port, users, rate, seconds))
        drained = drain.measure(port, driven["ended_at"])
        for c in clients:
            c.stdin.write("stop\n")
            c.stdin.flush()
        # each client answers once no frame has come for a second: CPU from the first send to then
        results = []
        for c in clients:
            results.append(json.loads(_readline(c, 180)))
        cpu1 = [cpu_seconds(service_pid)] + [r["cpu_s"] for r in results]
        wall1 = time.monotonic() - 1.0
        names = {service_pid: "service", **{c.pid: "ws client" for c in clients}, os.getpid(): "bench (REST driver)"}
        machine = cpu_split(machine0, cpu_by_process(), wall1 - wall0, names)
        rss_after = rss_kib(service_pid)
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
            c.wait(10)

    conns_per_user: dict[str, int] = {}
    for r in results:
        for u, n in r["per_user_conns"].items():
            conns_per_user[u] = conns_per_user.get(u, 0) + n
    expected = sum(n * conns_per_user.get(u, 0) for u, n in driven["per_user"].items())
    latencies = sorted(x for r in results for x in r["latencies_ms"])
    since_occurred = sorted(x for r in results for x in r["since_occurred_ms"])
    event_frames = sum(r["event_frames"] for r in results)
    firsts = [r["first_at"] for r in results if r["first_at"]]
    lasts = [r["last_at"] for r in results if r["last_at"]]
    window = (max(lasts) - driven["first_sent_at"]) if lasts else None
    return {
        "connections_requested": connections,
        "connections_open": opened,
        "connections_failed": sum(r["failed"] for r in ready),
        "connect_seconds": max(r["connect_seconds"] for r in ready),
        "connect_errors": [e for r in ready for e in r["errors"]][:5],
        "closed_early": sum(r["closed_early"] for r in results),
        "users": len(users),
        "rate_requested": rate,
        "seconds": seconds,
        "payments": driven,
        "frames_expected": expected,
        "frames_received": event_frames,
        "frames_all": sum(r["frames"] for r in results),
        "delivered_ratio": round(event_frames / expected, 5) if expected else None,
        "min_frames_one_connection": min(r["per_conn_min"] for r in results),
        "frames_per_s": round(event_frames / window, 1) if window else None,
        "delivery_window_s": round(window, 3) if window else None,
        "first_frame_after_s": round(min(firsts) - driven["first_sent_at"], 3) if firsts else None,
        "latency_ms": {
            "p50": _percentile(latencies, 50),
            "p90": _percentile(latencies, 90),
            "p99": _percentile(latencies, 99),
            "max": latencies[-1] if latencies else None,
            "mean": round(statistics.fmean(latencies), 2) if latencies else None,
        },
        # from the event's occurred_at (taken in the service's POST handler) to arrival: the part
        # after the service accepted the request (outbox, Kafka, consumer, hub, socket, client)
        "since_occurred_ms": {
            "p50": _percentile(since_occurred, 50),
            "p99": _percentile(since_occurred, 99),
        },
        # the sorted latencies at every 0.1% (for the CDF plot)
        "latency_cdf_ms": [_percentile(latencies, q / 10) for q in range(1001)] if latencies else [],
        "outbox_drain": drained,
        "service_rss_mib": {
            "before_connections": round(rss_before["VmRSS"] / 1024, 1),
            "connected_idle": round(rss_connected["VmRSS"] / 1024, 1),
            "after_events": round(rss_after["VmRSS"] / 1024, 1),
            "peak_hwm": round(rss_after["VmHWM"] / 1024, 1),
        },
        "client_rss_mib": [round(r["rss_kib"] / 1024, 1) for r in results],
        # share of one core from the first send until the last frame arrived
        "service_cpu": round((cpu1[0] - cpu0[0]) / (wall1 - wall0), 3),
        "cpu_cores": machine,
        "client_cpu": [round((b - a) / (wall1 - wall0), 3) for a, b in zip(cpu0[1:], cpu1[1:], strict=True)],
    }


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    """One line of the client's stdout, or an error naming its log if it died or hung."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        raise RuntimeError(f"ws client gave no answer in {timeout}s (see {WORK}/ws-client-*.log)")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"ws client exited ({proc.poll()}); see {WORK}/ws-client-*.log")
    return line
