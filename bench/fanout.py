"""The WebSocket fan-out stage (bench/README.md): payments over REST at a fixed rate
(bench/client.py ``drive``), their frames read by bench/ws_client.py processes, a step per rate."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE, Popen

from bench import client
from bench.env import PY, REPO, WORK, Proc, cpu_split, log, mysql_query, percentile, processes

P99_LIMIT_MS = 100.0
TARGET_RATE = 1000.0  # payments/s per process (issue 17), or the POST ceiling if lower


@dataclass
class Service:
    """The service process under test: its REST port, an admin key, its /metrics URL."""

    port: int
    key: str
    proc: Proc
    metrics: str

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
        return next(int(x.split()[1]) for x in status if x.startswith("VmRSS:"))

    def open_files(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def loop_waited_s(self) -> float:
        """Seconds so far its event loop (the main thread) was runnable but waiting for a core."""
        return int(Path(f"/proc/{self.proc.pid}/schedstat").read_text().split()[1]) / 1e9


class Clients:
    """Client processes sharing one set of sockets; a command goes to each of them."""

    def __init__(self, svc: Service, count: int, tag: str):
        self.tag, self.service, self.files = tag, svc, svc.open_files()  # its files before the sockets
        argv = [PY, "-m", "bench.ws_client", str(svc.port)]
        logs = [open(WORK / f"ws-client-{tag}-{i}.log", "w") for i in range(count)]  # noqa: SIM115 (the child's)
        self.procs = [Popen(argv, cwd=REPO, stdin=PIPE, stdout=PIPE, stderr=f, text=True) for f in logs]

    def ask(self, command: str, per_process: list[str] | None = None) -> list[dict]:
        for proc, arg in zip(self.procs, per_process or [""] * len(self.procs), strict=True):
            proc.stdin.write(f"{command} {arg}\n")
            proc.stdin.flush()
        if not all(answers := [proc.stdout.readline() for proc in self.procs]):
            raise RuntimeError(f"a ws client exited; see {WORK}/ws-client-{self.tag}-*.log")
        return [json.loads(a) for a in answers]

    def close(self) -> None:
        """End the processes, then wait until the service is back to the open files it had before them."""
        for proc in self.procs:
            proc.stdin.close()
            proc.wait(30)
        deadline = time.monotonic() + 60
        while self.service.open_files() > self.files + 50 and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(3)  # and its collector has had the closed sockets' garbage


def run(svc: Service, users: list[str], s, ceiling: Callable[[], dict]) -> dict:
    """Both shapes, and the target step at 1,000 payments/s or, if lower, the POST ceiling (``ceiling()``:
    wrk's POSTs with the sockets open)."""
    single, shared = users[: s.ws_sockets], users[: s.ws_shared_users]
    clients, one = open_shape(svc, single, 1, "single")
    out: dict = {"rss_before_kib": one["rss_before_kib"], "single": one, "post_ceiling": ceiling()}
    clients.ask("collect")  # the ceiling's frames are not a step's
    one["steps"] = steps(svc, clients, single, 1, s.ws_rates_single, s.ws_step_s)
    target = min(TARGET_RATE, math.floor(out["post_ceiling"]["rps"]))
    log(f"ws: the target, {target:g} payments/s (1,000 or the POST ceiling, {out['post_ceiling']['rps']:,.0f}/s)")
    [one["target"]] = steps(svc, clients, single, 1, [target], s.ws_step_s)
    clients.close()
    clients, out["shared"] = open_shape(svc, shared, per_user := s.ws_sockets // len(shared), "shared")
    out["shared"]["steps"] = steps(svc, clients, shared, per_user, s.ws_rates_shared, s.ws_step_s)
    clients.close()
    return out


def open_shape(svc: Service, users: list[str], per_user: int, tag: str) -> tuple[Clients, dict]:
    """``per_user`` sockets for each of ``users``, dealt out over two client processes (tokens minted
    now: they last 5 minutes), and the service's RSS before them and per socket."""
    log(f"ws: {per_user} socket(s) each for {len(users):,} users")
    tokens = asyncio.run(client.tokens(svc.port, svc.key, users))
    rss_before, clients = svc.rss_kib(), Clients(svc, 2, tag)
    sockets, n = [f"{tokens[u]} c{k}" for k in range(per_user) for u in users], len(clients.procs)
    answers = clients.ask("open", [" ".join(sockets[i::n]) for i in range(n)])
    opened = {k: sum(a[k] for a in answers) for k in ("open", "failed")}
    errors, seconds = [e for a in answers for e in a["errors"]][:3], max(a["seconds"] for a in answers)
    shape = {"users": len(users), "per_user": per_user, **opened, "errors": errors, "seconds": seconds}
    per_socket = (svc.rss_kib() - rss_before) / max(1, opened["open"])
    return clients, shape | {"rss_before_kib": rss_before, "per_socket_kib": per_socket}


HUB = 'singleton_kafka_consumer_delay_seconds_bucket{consumer="broadcast",'  # Kafka -> the hub
GC = "singleton_gc_pause_seconds_sum"


def scrape(url: str) -> tuple[dict[float, float], float]:
    """The service's ``HUB`` histogram (upper bound -> cumulative count), and the seconds its
    collector passes took so far (``GC``)."""
    text = urllib.request.urlopen(url, timeout=5).read().decode().splitlines()
    matches = (re.search(r'le="([^"]+)"\} (\S+)', line) for line in text if line.startswith(HUB))
    return {float(m[1]): float(m[2]) for m in matches if m}, sum(float(x.split()[-1]) for x in text if x.startswith(GC))


def bucket_ms(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The upper bound (ms) of the bucket holding quantile ``q`` of what was observed in between."""
    delta = sorted((le, after[le] - before.get(le, 0)) for le in after)
    total = delta[-1][1] if delta else 0
    return next((le * 1000 for le, n in delta if n >= total * q / 100), None) if total else None


def legs(since: float) -> dict:
    """Where a step's events spent their time before Kafka, from their outbox rows: REST call
    -> committed (``created_at``), committed -> acknowledged by Kafka (``published_at``)."""
    rows = mysql_query(
        "SELECT JSON_VALUE(payload, '$.data.description'), UNIX_TIMESTAMP(created_at), UNIX_TIMESTAMP(published_at)"
        " FROM outbox WHERE created_at >= FROM_UNIXTIME(%s) AND published_at IS NOT NULL",
        (since,),
    )
    times = [(float(d.removeprefix("bench:")), float(c), float(p)) for d, c, p in rows if d and d.startswith("bench:")]
    rest, relay = sorted((c - t) * 1000 for t, c, _ in times), sorted((p - c) * 1000 for _, c, p in times)
    return {name: [percentile(v, 50), percentile(v, 99)] for name, v in (("rest", rest), ("relay", relay))}


def steps(svc: Service, clients: Clients, users: list[str], per_user: int, rates, seconds: float) -> list[dict]:
    """A step per rate, up to the first whose p99 passes the limit, loses a frame or falls behind."""
    rows, names = [], {svc.proc.pid: "service", os.getpid(): "bench (REST driver)"}
    names |= {p.pid: "ws client" for p in clients.procs}
    for rate in rates:
        before, started, waited = processes(), time.time(), svc.loop_waited_s()
        hub_before, gc_before = scrape(svc.metrics)
        driven = asyncio.run(client.drive(svc.port, svc.key, users, rate, seconds))
        answers = clients.ask("collect")
        cpu, elapsed = cpu_split(before, processes(), time.time() - started, names), time.time() - started
        lat, window = sorted(x for a in answers for x in a["latencies_ms"]), max(a["last"] for a in answers) - started
        expected = driven["statuses"].get(201, 0) * per_user
        row = {"rate": rate, "achieved_rate": driven["achieved_rate"], "statuses": driven["statuses"]}
        row |= {"offered_fps": rate * per_user, "frames": len(lat), "expected": expected}
        row |= {f"p{q}_ms": percentile(lat, q) for q in (50, 99)} | {"max_ms": lat[-1] if lat else None}
        row["fps"] = round(len(lat) / window) if lat and window > 0 else 0
        row["frames_per_cpu_s"] = round(len(lat) / (cpu.get("service", 0) * elapsed or math.inf))
        hub_after, gc_after = scrape(svc.metrics)  # the service's own: Kafka to the hub (bucket bounds), GC
        hub = [bucket_ms(hub_before, hub_after, q) for q in (50, 99)]
        row |= {"cpu_cores": cpu, "legs_ms": legs(started) | {"kafka_to_hub": hub}}
        row["loop_stalls"] = [round(x / elapsed, 3) for x in (svc.loop_waited_s() - waited, gc_after - gc_before)]
        failed = {
            f"p99 over {P99_LIMIT_MS:g} ms": (row["p99_ms"] or math.inf) > P99_LIMIT_MS,
            "frames lost": len(lat) < expected,
            "REST fell behind the rate": driven["achieved_rate"] < 0.95 * rate,
            "payments refused": set(driven["statuses"]) != {201},
        }
        row["why_not"] = [why for why, yes in failed.items() if yes]
        log(f"  {rate:g} payments/s: {row['fps']:,} frames/s, p99 {row['p99_ms']} ms, {len(lat)}/{expected} frames")
        rows.append(row)
        if row["why_not"]:
            break
    return rows
