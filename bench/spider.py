"""``python -m bench.spider`` (``make bench-spider``): MariaDB's Spider engine as the routing layer
against routing in the service, on our transaction shape (issue 15). Writes
docs/bench/spider.json and prints its tables (``python -m bench.spider --table`` prints them
again from the JSON).

It starts its own three servers (bench/spider_stack.py: two InnoDB backends and a Spider front,
127.0.0.1, ports 23306-23308 unless BENCH_SPIDER_PORTS says otherwise), installs
mariadb-plugin-spider if it is missing, and stops and removes everything at the end. Then:

- the checks (bench/spider_checks.py): our create's one round trip through the front, the
  user's lock, which backends a create touches, errors, DDL, SKIP LOCKED, auto-increment;
- the load (bench/spider_load.py), in alternating rounds: payment create (the service's
  statements, Tx.script's one round trip), read a user by id, read a payment by id; direct (the
  service routes) and through the front, at each concurrency;
- the outbox relay's batches both ways (bench/spider_relay.py);
- one backend down (bench/spider_outage.py).

Settings: BENCH_SPIDER_SECONDS (5, a load run), BENCH_SPIDER_ROUNDS (3), BENCH_SPIDER_CONCURRENCY
(16,50), BENCH_SPIDER_USERS (2000), BENCH_SPIDER_BACKLOG (20000 relay events),
BENCH_SPIDER_OUTAGE_S (5), BENCH_SPIDER_OUTAGE_CONCURRENCY (16).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench import env, spider_checks, spider_outage, spider_relay
from bench.env import DOCS_BENCH, REPO, log
from bench.spider_load import DIRECT, SPIDER_AI2, run, seed, summary
from bench.spider_stack import DIR, SHARDS, Stack, ensure_spider_plugin

RESULTS = DOCS_BENCH / "spider.json"
CODE = ("bench", "migrations", "managers", "domain")


@dataclass
class Settings:
    seconds: float = 5.0
    rounds: int = 3
    concurrency: str = "16,50"
    users: int = 2000
    backlog: int = 20000
    outage_s: float = 5.0
    outage_concurrency: int = 16

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if raw := os.environ.get(f"BENCH_SPIDER_{name.upper()}"):
                setattr(self, name, type(value)(raw))

    @property
    def levels(self) -> list[int]:
        return [int(c) for c in self.concurrency.split(",")]


def service_timeout_s() -> float:
    """The deadline the service puts on every statement (config.yaml's mysql.query_timeout_s)."""
    return float(yaml.safe_load((REPO / "config.yaml").read_text())["mysql"]["query_timeout_s"])


async def load(stack: Stack, ids: dict, s: Settings, timeout_s: float) -> list[dict]:
    # Through the front with spider_auto_increment_mode 2 (each backend assigns outbox ids):
    # with Spider's default, two creates at a time already deadlock, so the default is
    # measured in the checks, not here.
    plan = [(op, (DIRECT, SPIDER_AI2)) for op in ("create", "read_user", "read_payment")]
    for op, routes in plan:  # first use of each table through the front, and the backends' caches
        for route in routes:
            await run(stack, route, op, ids, 4, 1.0, timeout_s)
    runs: dict[tuple, list[dict]] = defaultdict(list)
    for r in range(s.rounds):
        for concurrency in s.levels:
            for op, routes in plan:
                for route in routes if r % 2 == 0 else routes[::-1]:  # alternate the order: drift cancels
                    result = await run(stack, route, op, ids, concurrency, s.seconds, timeout_s)
                    runs[(op, concurrency, route.name)].append(result)
                    log(f"spider: {op} c={concurrency} {route.name}: {result['ops_per_s']}/s p99 {result['p99_ms']} ms")
    out = [summary(group) for group in runs.values()]
    for r in out:  # each round's ratio to the direct run beside it, the median of those
        direct = runs[(r["op"], r["concurrency"], DIRECT.name)]
        mine = runs[(r["op"], r["concurrency"], r["route"])]
        ratios = [m["ops_per_s"] / d["ops_per_s"] for m, d in zip(mine, direct, strict=True) if d["ops_per_s"]]
        r["x_direct"] = round(statistics.median(ratios), 2) if ratios else 0.0
    return out


async def measure(stack: Stack, ids: dict, s: Settings, timeout_s: float) -> dict:
    log("spider: checks")
    checks = await spider_checks.run_all(stack, ids, timeout_s)
    log("spider: load")
    loads = await load(stack, ids, s, timeout_s)
    log("spider: relay")
    relay = spider_relay.summary(await spider_relay.measure(stack, s.backlog, s.rounds, 30.0))
    log("spider: one backend down")
    outage = await spider_outage.measure(stack, ids, s.outage_concurrency, s.outage_s, timeout_s)
    return {"checks": checks, "load": loads, "relay": relay, "outage": outage}


def engines(stack: Stack) -> dict[str, bool]:
    """Whether each server has Spider loaded (the backends start as devstack's MariaDB does)."""
    out = {}
    for name in stack.servers:
        with stack.connect(name) as conn, conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.ENGINES WHERE ENGINE = 'SPIDER'")
            out[name] = cur.fetchone()[0] == 1
    return out


def commit() -> str:
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", *CODE) else "")


def main() -> None:
    s, timeout_s = Settings(), service_timeout_s()
    started, load_at_start = dt.datetime.now(dt.UTC), os.getloadavg()[0]
    background_at_start = env.background_load()  # what else uses the shared cores
    install = ensure_spider_plugin()
    stack = Stack()
    ok = False
    try:
        stack.up()
        install["spider_loaded"] = engines(stack)
        log(f"spider: seeding {s.users} users")
        ids = seed(stack, s.users)
        measured = asyncio.run(measure(stack, ids, s, timeout_s))
        ok = True
    finally:
        log("spider: stopping the servers" + ("" if ok else f"; logs kept in {DIR / 'logs'}"))
        stack.down(keep_logs=not ok)
    result = {
        "date": started.strftime("%Y-%m-%d"),
        "commit": commit(),
        "machine": {
            "nproc": os.cpu_count(),
            "load_average_at_start": round(load_at_start, 2),
            "load_average_at_end": round(os.getloadavg()[0], 2),
            "other_cpu_use_at_start": background_at_start,
            "other_cpu_use_at_end": env.background_load(),
        },
        "settings": vars(s) | {"service_deadline_s": timeout_s, "shards": SHARDS},
        "install": install,
    } | measured
    RESULTS.write_text(json.dumps(result, indent=1, default=str) + "\n")
    log(f"spider: wrote {RESULTS.relative_to(REPO)}")
    print(tables(result))


# -- the tables ----------------------------------------------------------------------------------
def tables(result: dict) -> str:
    lines = [f"Spider against routing in the service: {result['date']}, commit {result['commit']}", ""]
    lines += ["| operation | tasks | route | ops/s | × direct | p50 ms | p99 ms | errors | CPU ms/op: front | b1+b2 |"]
    lines += ["|---|---:|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in sorted(result["load"], key=lambda r: (r["op"], r["concurrency"])):
        cpu = r["cpu_ms_per_op"]
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
        lines.append(
            f"| {r['op']} | {r['concurrency']} | {r['route']} | {r['ops_per_s']:,.0f} | {r['x_direct']:.2f} "
            f"| {r['p50_ms']} | {r['p99_ms']} | {errors} | {cpu.get('front', 0):.2f} "
            f"| {cpu.get('b1', 0) + cpu.get('b2', 0):.2f} |"
        )
    lines += ["", "| relay | events/s (each round) | batches out of order | batches marking other rows "]
    lines[-1] += "| CPU ms per 1,000 events: front / b1+b2 |"
    lines += ["|---|---:|---:|---:|---|"]
    for r in result["relay"]:
        rounds = ", ".join(f"{x:,}" for x in r["rounds"])
        lines.append(
            f"| {r['route']} | {r['events_per_s']:,} ({rounds}) | {r['batches_out_of_order']} "
            f"| {r['batches_marked_other']} | {r['cpu_ms_per_1000']['front']} / {r['cpu_ms_per_1000']['backends']} |"
        )
    lines += ["", "| b2 | route | b1 users' creates/s | their errors | a b2 user's create (the service's answer) "]
    lines[-1] += "| b2 back |"
    lines += ["|---|---|---:|---|---|---|"]
    for r in result["outage"]:
        d, probe, rec = r["during"], r["b2_user"], r["recovery"]
        errors = ", ".join(f"{k}: {v}" for k, v in d["errors"].items()) or "none"
        if d["first_error_after_s"] is not None:
            errors += f" (first after {d['first_error_after_s']} s)"
        back = f"ok after {rec['first_ok_after_s']} s" if rec["first_ok_after_s"] is not None else "never"
        lines.append(f"| {r['b2']} | {r['route']} | {d['ops_per_s']} | {errors} | {_answer(probe)} | {back} |")
    lines += ["", *checks(result["checks"], result["outage"])]
    return "\n".join(lines)


def _answer(probe: dict) -> str:
    if "error" not in probe:
        return f"ok after {probe['after_s']} s"
    verdict = "503" if probe["service_answers_503"] else "500"
    return f"{probe['error']} after {probe['after_s']} s ({verdict})"


def checks(c: dict, outage: list[dict]) -> list[str]:
    """The checks, a line each."""
    ms, per = c["multi_statement_round_trip"], c["backend_statements_per_create"]
    lock, dflt, ai = c["user_lock"], c["default_auto_increment_under_load"], c["auto_increment"]
    errs, skip = c["errors_through_front"], c["skip_locked"]
    out = ["Checks:"]
    out.append(
        f"- one-round-trip create through the front: row counts {ms['user on b1']['row_counts']}; rows by backend"
        f" for a b1 user {ms['user on b1']['rows_by_backend']}, for a b2 user {ms['user on b2']['rows_by_backend']}"
    )
    for route, p in per.items():
        out.append(
            f"- a b1 user's create, {route}: round trips b1 {p['round_trips']['b1']}, b2 {p['round_trips']['b2']};"
            f" statements b1 {p['statements']['b1']}, b2 {p['statements']['b2']}"
        )
    out.append(
        f"- the user's lock through the front: held on the backend {lock['locked_on_backend']}"
        f" ({lock.get('backend_nowait_error')}); a second one waited {lock['second_took_s']} s, until the commit"
    )
    for route, r in c["lost_updates"].items():
        out.append(
            f"- {r['transactions']} read-modify-writes of one user at once, {route}: version +{r['version_rose_by']}"
        )
    out.append(f"- unique keys the front refuses: {c['unique_keys_refused_on_front']}")
    out.append(
        f"- one email for users on two backends, through the front: accepted on"
        f" {errs['one_email_two_backends']['accepted_on']}"
    )
    for k in ("missing_user", "idempotency_key_reused"):
        out.append(f"- {k} through the front: {errs[k].get('error')}")
    out.append(f"- DDL on the front: {c['ddl']}")
    out.append(f"- the relay's statements through the front: {c['relay_statements']}")
    out.append(f"- SKIP LOCKED with one row locked: direct {skip['direct']}; through the front {skip['spider']}")
    out.append(f"- outbox ids from empty tables: {ai}")
    out.append(f"- Spider's default auto-increment: {dflt}")
    for r in outage:
        if "b1_user_spider_defaults" in r:
            out.append(
                f"- b2 {r['b2']}: a b1 user's create through the front with Spider's default auto-increment:"
                f" {_answer(r['b1_user_spider_defaults'])}"
            )
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["--table"]:
        print(tables(json.loads(Path(RESULTS).read_text())))
    else:
        main()
