"""``python -m bench.shard_move`` (``make bench-shard-move``): how long a logical shard's writes
are refused while ``python -m service shards move`` moves it, with ``USERS`` users on it and
writes going on; writes docs/bench/shard_move.json.

On the cluster stack (a sharded configuration, ``BENCH_CONFIG``), in the bench's stores:

1. ``USERS`` users seeded on logical shard ``LOGICAL`` (on the home), directly in SQL: each
   with 1 to 3 payments, a third of those completed (a status change in the history), and
   an outbox row for each payment, already published. Their email claims in the home.
2. A service (``--role all``, the shipped ``shards.map_refresh_s``) and a writer creating
   payments over REST at ``RATE``/s for users of the moving logical shard and as many for
   users of another logical shard of the same server, every answer's status and time kept.
3. ``python -m service shards move LOGICAL --to <the other shard>``, then the same back: the
   command's ``copy_s`` (copied while served) and ``switch_s`` (writes refused), the writes
   refused meanwhile (503) and the window from the first to the last, and every table's rows
   of the logical shard before and after, which the accepted writes account for.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import subprocess
import time

from bench import client, env
from bench.env import log
from domain import codec, events, payments
from managers.shards import new_id
from service.supervisor import free_port

USERS = int(os.environ.get("BENCH_MOVE_USERS", 10_000))
# payments/s to each of the two logical shards: well under what one service serves on a shared 2-core
# machine (at 50/s each, in a run at load average 23, the service fell behind and the writes of both
# groups timed out by the hundred: that measures an overloaded service, not the move)
RATE = float(os.environ.get("BENCH_MOVE_RATE", 10))
LOGICAL, CONTROL = 7, 8  # both on the home in config's map (a: 0-511)
CHUNK = 500  # rows per INSERT
MARGIN_S = 2.0  # writing before the move starts and after it ends
PAYMENT_COLUMNS = ("id", "user_id", "amount_minor", "currency", "description", "status", "version", "created_at")
PAYMENT_COLUMNS += ("updated_at",)
TABLES = ("users", "payments", "payment_status_history", "idempotency_keys", "outbox")


def seed_sql(logical: int, users: int, rng: random.Random) -> dict[str, list[str]]:
    """``users`` users of ``logical`` with their payments, history and published events, in SQL."""
    home = next(iter(env.shards()))
    aware = dt.datetime.now(dt.UTC)
    now = aware.replace(tzinfo=None)  # as MariaDB's DATETIME columns hold UTC
    ids = [new_id(logical) for _ in range(users)]
    rows: dict[str, list[tuple]] = {t: [] for t in ("users", "email_claims", "payments", "history", "outbox")}
    for n, user in enumerate(ids):
        email = f"move-{user}@example.com"
        rows["users"].append((user, email, f"Mover {n}", 1, now, now))
        rows["email_claims"].append((email, user, now))
        for _ in range(rng.randint(1, 3)):
            done = rng.random() < 1 / 3
            payment = {"id": new_id(logical), "user_id": user, "amount_minor": rng.randint(100, 50_000)}
            payment |= {"currency": rng.choice(("USD", "EUR")), "description": None, "version": 2 if done else 1}
            payment |= {"status": "completed" if done else "pending", "created_at": now, "updated_at": now}
            rows["payments"].append(tuple(payment[c] for c in PAYMENT_COLUMNS))
            if done:
                rows["history"].append((payment["id"], "pending", "completed", 2, now))
            event = events.envelope(events.PAYMENT_CREATED, user, payments.to_api(payment), aware)
            rows["outbox"].append((event["event_id"], event["type"], user, codec.dumps(event).decode(), now, now))
    statements = {
        "users": "INSERT INTO users (id, email, name, version, created_at, updated_at) VALUES ",
        "email_claims": "INSERT INTO email_claims (email, user_id, claimed_at) VALUES ",
        "payments": f"INSERT INTO payments ({', '.join(PAYMENT_COLUMNS)}) VALUES ",
        "history": "INSERT INTO payment_status_history (payment_id, from_status, to_status, version, created_at)"
        " VALUES ",
        "outbox": "INSERT INTO outbox (event_id, event_type, partition_key, payload, created_at, published_at) VALUES ",
    }
    with contextlib.closing(env.mysql_connect(shard=home)) as conn, conn.cursor() as cur:
        for table, sql in statements.items():
            values = rows[table]
            width = "(" + ", ".join(["%s"] * len(values[0])) + ")"
            for i in range(0, len(values), CHUNK):
                chunk = values[i : i + CHUNK]
                cur.execute(sql + ", ".join([width] * len(chunk)), [v for row in chunk for v in row])
    log(f"seeded logical shard {logical}: " + ", ".join(f"{len(v):,} {k}" for k, v in rows.items()))
    return {"users": ids}


def counts(logical: int) -> dict[str, dict[str, int]]:
    """Each physical shard's rows of ``logical``, table by table (the moved rows and what was written)."""
    low, high = format(logical << 2, "03x"), format((logical + 1) << 2, "03x")
    keys = {"users": "id", "payments": "id", "payment_status_history": "payment_id"}
    keys |= {"idempotency_keys": "idem_key", "outbox": "partition_key"}
    out = {}
    for shard in env.shards():
        with contextlib.closing(env.mysql_connect(shard=shard)) as conn, conn.cursor() as cur:
            out[shard] = {}
            for table in TABLES:
                cur.execute(
                    f"SELECT COUNT(*) FROM {table} WHERE {keys[table]} >= %s AND {keys[table]} < %s", (low, high)
                )
                out[shard][table] = cur.fetchone()[0]
    return out


class Writer:
    """POST payments at ``RATE``/s for each group of users, every answer kept with its time."""

    def __init__(self, port: int, key: str, groups: dict[str, list[str]]):
        self.pool, self.groups = client.Pool(port, key, 128), groups
        self.answers: list[tuple[str, float, str]] = []  # group, answered at (epoch), "status code"
        self._stop = asyncio.Event()

    async def run(self) -> None:
        tasks, start, n = [], time.monotonic(), 0
        while not self._stop.is_set():
            if (delay := start + n / RATE - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            for group, users in self.groups.items():
                tasks.append(asyncio.create_task(self.one(group, users[n % len(users)])))
            n += 1
        await asyncio.gather(*tasks)
        self.pool.close()

    async def one(self, group: str, user: str) -> None:
        body = {"user_id": user, "amount": "1.00", "currency": "USD"}
        try:
            status, payload = await asyncio.wait_for(self.pool.request("POST", "/api/v1/payments", body), 30)
            answer = "201" if status == 201 else f"{status} {json.loads(payload)['error']['code']}"
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            answer = f"no answer ({type(exc).__name__})"  # the payment may still have been made
        self.answers.append((group, time.time(), answer))

    def stop(self) -> None:
        self._stop.set()

    def summary(self, t0: float) -> dict:
        """Each group's answers by kind over the whole run, each kind's first and last answer in
        seconds from ``t0``, and the 503s: how many, and the window from the first to the last."""
        out = {}
        for group in self.groups:
            kinds: dict[str, dict] = {}
            for g, t, answer in self.answers:
                if g == group:
                    kind = kinds.setdefault(answer, {"n": 0, "first_s": round(t - t0, 2)})
                    kind["n"] += 1
                    kind["last_s"] = round(t - t0, 2)
            refused = kinds.get("503 shard_moving", {"n": 0, "first_s": 0, "last_s": 0})
            window = round(refused["last_s"] - refused["first_s"], 2)
            out[group] = {"answers": kinds, "refused": refused["n"], "refused_window_s": window}
        return out


async def move(port: int, key: str, groups: dict[str, list[str]], target: str) -> dict:
    """One move of ``LOGICAL`` to ``target`` under the writer's load."""
    before = counts(LOGICAL)
    writer = Writer(port, key, groups)
    writing = asyncio.create_task(writer.run())
    await asyncio.sleep(MARGIN_S)
    started = time.time()
    argv = [env.PY, "-W", "ignore", "-m", "service", "--config", str(env.CONFIG), "shards", "move", str(LOGICAL)]
    argv += ["--to", target]
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=env.REPO, env=env.service_env({}), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    steps: list[tuple[float, str]] = []  # the command's own lines (stderr), timed as they came

    async def follow() -> None:
        async for line in proc.stderr:
            if text := line.decode().strip():
                steps.append((round(time.time() - started, 2), text))

    out, *_ = await asyncio.wait_for(asyncio.gather(proc.stdout.read(), follow(), proc.wait()), 600)
    ended = time.time()
    await asyncio.sleep(MARGIN_S)
    writer.stop()
    await writing
    if proc.returncode != 0:
        raise RuntimeError(f"shards move failed ({proc.returncode}): {steps[-5:]}")
    moved = json.loads(out.decode().strip().splitlines()[-1])
    log(f"move to {target}: " + " | ".join(f"{s} s {line}" for s, line in steps))
    result = {"target": target, "copy_s": round(moved["copy_s"], 3), "switch_s": round(moved["switch_s"], 3)}
    result |= {"command_s": round(ended - started, 2), "steps": steps, "rows_after_move": moved["rows"]}
    result["writes"] = writes = writer.summary(started)
    result |= {"rows_before": before, "rows_after": counts(LOGICAL)}
    answers = writes[next(iter(groups))]["answers"]
    accepted = answers.get("201", {}).get("n", 0)
    unknown = sum(kind["n"] for answer, kind in answers.items() if answer.startswith("no answer"))
    grew = {t: sum(result["rows_after"][s][t] - before[s][t] for s in before) for t in ("payments", "outbox")}
    exact = all(accepted <= n <= accepted + unknown for n in grew.values())
    result["accounted"] = {"accepted": accepted, "no answer": unknown, "rows added": grew, "exact": exact}
    log(f"  copy {result['copy_s']} s, switch {result['switch_s']} s, writes {result['writes']}")
    return result


def main() -> None:
    names = list(env.shards())
    if len(names) < 2:
        raise SystemExit(f"{env.CONFIG} has one physical shard: nowhere to move to (BENCH_CONFIG=config.cluster.yaml)")
    results = {"at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": env.machine()}
    results |= {"config": str(env.CONFIG.relative_to(env.REPO)), "load_before": env.background_load()}
    results |= {"users": USERS, "rate_per_group": RATE, "logical": LOGICAL, "control": CONTROL}
    env.reset_stores()
    port = free_port()
    service = env.start_service("move", port, {})  # migrates every shard
    try:
        rng = random.Random(7)
        moving = seed_sql(LOGICAL, USERS, rng)["users"]
        control = seed_sql(CONTROL, 200, rng)["users"]
        key = env.create_admin_key()
        groups = {f"logical {LOGICAL} (moving)": moving, f"logical {CONTROL} (not moving)": control}
        results["moves"] = [asyncio.run(move(port, key, groups, target)) for target in (names[1], names[0])]
    finally:
        service.stop()
    results["load_after"] = env.background_load()
    (env.DOCS_BENCH / "shard_move.json").write_text(json.dumps(results, indent=2) + "\n")
    log("wrote docs/bench/shard_move.json")


if __name__ == "__main__":
    main()
