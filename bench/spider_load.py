"""The load of ``python -m bench.spider``: our statements, sent each way, by N tasks at once.

A route is how a task reaches a user's rows: ``direct`` (the service routes: a connection to
the user's backend, picked by the logical shard in the user id) or through the Spider front
(one connection, the front routes), with session settings of its own. Every transaction goes
as the service sends it: ``managers.mysql.Tx.script``, BEGIN to COMMIT in one round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import aiomysql
from pymysql.constants import CLIENT

from bench.env import percentile
from bench.spider_stack import SHARDS, Stack, backend_of, cpu_seconds, id_on_shard, logical_shard
from domain import codec, events, outbox, payments, users
from managers.mysql import MySQLManager, Statement, Tx

# The columns and statements of domain/payments.py's create and the reads by id.
PAYMENT_COLUMNS = "id, user_id, amount_minor, currency, description, status, version, created_at, updated_at"
USER_COLUMNS = "id, email, name, version, created_at, updated_at"
INSERT_KEY = (
    "INSERT INTO idempotency_keys (idem_key, request_hash, status_code, response_body, created_at)"
    " VALUES (%s, %s, 201, %s, %s)"
)
INSERT_PAYMENT = f"INSERT INTO payments ({PAYMENT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
LOWERED_TIMEOUTS = "spider_net_read_timeout = 2, spider_net_write_timeout = 2, spider_connect_timeout = 2"


@dataclass(frozen=True)
class Route:
    name: str
    via_front: bool
    session: str = ""  # SET SESSION ... on each new connection (the front's settings)


DIRECT = Route("direct", False)
SPIDER = Route("spider, defaults", True)  # Spider as installed (spider_auto_increment_mode 0)
# The documented mode for partitioned Spider tables: each backend assigns its own ids.
SPIDER_AI2 = Route("spider", True, "spider_auto_increment_mode = 2")
SPIDER_TUNED = Route("spider, net timeouts 2 s", True, f"spider_auto_increment_mode = 2, {LOWERED_TIMEOUTS}")


def create_statements(user_id: str) -> list[Statement]:
    """domain/payments.py's create, with an idempotency key: the user's lock, the key, the
    payment (its id on the user's logical shard), its event. The key starts with the user id,
    the column the front routes idempotency_keys by."""
    now = codec.utc_now()
    row = {"id": id_on_shard(logical_shard(user_id)), "user_id": user_id, "amount_minor": random.randint(100, 50_000)}
    row |= {"currency": "USD", "description": "bench", "status": "pending", "version": 1}
    row |= {"created_at": now, "updated_at": now}
    payment = payments.to_api(row)
    key = f"{user_id}:admin:{uuid.uuid4()}"
    fingerprint = payments.request_fingerprint(user_id, row["amount_minor"], "USD", "bench")
    return [
        users.lock_statement(user_id),
        (INSERT_KEY, (key, fingerprint, codec.dumps(payment).decode(), now)),
        (INSERT_PAYMENT, tuple(row[c.strip()] for c in PAYMENT_COLUMNS.split(","))),
        outbox.insert(events.envelope(events.PAYMENT_CREATED, user_id, payment, now)),
    ]


class Client:
    """One task's connections: to the front, or to each backend (opened when first needed).
    A connection that fails or times out is closed and opened again next time, as the
    service's pool does."""

    def __init__(self, stack: Stack, route: Route, timeout_s: float):
        self.stack, self.route, self.timeout_s = stack, route, timeout_s
        self.conns: dict[str, aiomysql.Connection] = {}

    def target(self, user_id: str) -> str:
        return "front" if self.route.via_front else backend_of(user_id)

    async def conn(self, name: str) -> aiomysql.Connection:
        if name not in self.conns:
            login = self.stack.login(name)
            init = f"SET SESSION {self.route.session}" if self.route.session and name == "front" else None
            self.conns[name] = await aiomysql.connect(
                **login,
                autocommit=True,
                charset="utf8mb4",
                client_flag=CLIENT.MULTI_STATEMENTS,
                connect_timeout=self.timeout_s,
                init_command=init,
            )
        return self.conns[name]

    @contextlib.asynccontextmanager
    async def cursor(self, user_id: str):
        name = self.target(user_id)
        try:
            async with asyncio.timeout(self.timeout_s):
                conn = await self.conn(name)
            async with conn.cursor(aiomysql.DictCursor) as cur:
                yield cur
        except BaseException:
            self.drop(name)
            raise

    def drop(self, name: str) -> None:
        if (conn := self.conns.pop(name, None)) is not None:
            conn.close()

    def close(self) -> None:
        for name in list(self.conns):
            self.drop(name)

    async def create(self, user_id: str) -> None:
        async with self.cursor(user_id) as cur:
            await Tx(cur, self.timeout_s, ["BEGIN"]).script(create_statements(user_id), commit=True)

    async def read_user(self, user_id: str) -> None:
        async with self.cursor(user_id) as cur:
            if (
                await Tx(cur, self.timeout_s).fetchone(f"SELECT {USER_COLUMNS} FROM users WHERE id = %s", (user_id,))
                is None
            ):
                raise LookupError("user not found")

    async def read_payment(self, payment_id: str) -> None:
        async with self.cursor(payment_id) as cur:  # the payment's id carries its user's shard
            sql = f"SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = %s"
            if await Tx(cur, self.timeout_s).fetchone(sql, (payment_id,)) is None:
                raise LookupError("payment not found")


OPS = {
    "create": lambda client, ids: client.create(random.choice(ids["users"])),
    "read_user": lambda client, ids: client.read_user(random.choice(ids["users"])),
    "read_payment": lambda client, ids: client.read_payment(random.choice(ids["payments"])),
}


def error_name(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    return f"{type(exc).__name__} {code}" if code is not None else type(exc).__name__


class CPU:
    """CPU seconds of the three servers and the bench itself, between two points."""

    def __init__(self, stack: Stack):
        self.pids = {name: server.pid for name, server in stack.servers.items()} | {"bench": os.getpid()}
        self.start, self.t = self.now(), time.monotonic()

    def now(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                out[name] = cpu_seconds(pid)
        return out

    def cores(self) -> dict[str, float]:
        wall, end = time.monotonic() - self.t, self.now()
        return {name: round((end[name] - self.start[name]) / wall, 3) for name in end if name in self.start}


async def run(
    stack: Stack,
    route: Route,
    op: str,
    ids: dict[str, list[str]],
    concurrency: int,
    seconds: float,
    timeout_s: float,
    clients: list[Client] | None = None,
    warmup_s: float = 0.5,
) -> dict:
    """``concurrency`` tasks doing ``op`` back to back for ``seconds``, after ``warmup_s`` of the
    same (connections opened, the front's connections to the backends too): throughput,
    latency, errors by kind (when the first came, and whether the service would answer it with
    503), CPU of each server in cores and per operation."""
    own = clients is None
    clients = clients or [Client(stack, route, timeout_s) for _ in range(concurrency)]
    latencies: list[float] = []
    errors: Counter = Counter()
    samples: dict[str, BaseException] = {}
    first_error: list[float] = []

    async def task(client: Client, start: float, deadline: float) -> None:
        while (t := time.monotonic()) < deadline:
            try:
                await OPS[op](client, ids)
                latencies.append(time.monotonic() - t)
            except Exception as exc:
                errors[error_name(exc)] += 1
                samples.setdefault(error_name(exc), exc)
                first_error.append(time.monotonic() - start)
                await asyncio.sleep(0.05)  # no hot loop against a refusing server

    if warmup_s > 0:
        t = time.monotonic()
        await asyncio.gather(*(task(c, t, t + warmup_s) for c in clients))
        for kept in (latencies, first_error):
            kept.clear()
        errors.clear()
        samples.clear()
    cpu, start = CPU(stack), time.monotonic()
    await asyncio.gather(*(task(c, start, start + seconds) for c in clients))
    wall, cores = time.monotonic() - start, cpu.cores()
    if own:
        for c in clients:
            c.close()
    latencies.sort()
    done = len(latencies)
    out = {"route": route.name, "op": op, "concurrency": concurrency, "seconds": round(wall, 2), "ok": done}
    out |= {"ops_per_s": round(done / wall, 1), "p50_ms": _ms(percentile(latencies, 50))}
    out |= {"p99_ms": _ms(percentile(latencies, 99)), "max_ms": _ms(latencies[-1] if latencies else None)}
    out |= {"errors": dict(errors), "first_error_after_s": round(min(first_error), 2) if first_error else None}
    out["errors_answered_503"] = {name: MySQLManager.is_unavailable(exc) for name, exc in samples.items()}
    out["cpu_cores"] = cores
    out["cpu_ms_per_op"] = {k: round(v * wall / done * 1000, 3) for k, v in cores.items()} if done else {}
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def summary(runs: list[dict]) -> dict:
    """The median of rounds of one (route, op, concurrency)."""

    def med(key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return round(statistics.median(values), 2) if values else None

    cpu = {k: round(statistics.median(r["cpu_cores"].get(k, 0.0) for r in runs), 3) for k in runs[0]["cpu_cores"]}
    per_op = {
        k: round(statistics.median(r["cpu_ms_per_op"].get(k, 0.0) for r in runs), 3) for k in runs[0]["cpu_ms_per_op"]
    }
    errors: Counter = Counter()
    for r in runs:
        errors.update(r["errors"])
    head = {k: runs[0][k] for k in ("route", "op", "concurrency")}
    return head | {
        "ops_per_s": med("ops_per_s"),
        "p50_ms": med("p50_ms"),
        "p99_ms": med("p99_ms"),
        "errors": dict(errors),
        "cpu_cores": cpu,
        "cpu_ms_per_op": per_op,
        "rounds": [{k: r[k] for k in ("ops_per_s", "p50_ms", "p99_ms", "errors")} for r in runs],
    }


# -- seeding -------------------------------------------------------------------------------------
def seed(stack: Stack, n_users: int) -> dict[str, list[str]]:
    """``n_users`` users spread over every logical shard, and one payment each, written straight
    to each user's backend (the same rows the front sees)."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    ids: dict[str, list[str]] = {"users": [], "payments": []}
    rows: dict[str, tuple[list, list]] = {name: ([], []) for name in SHARDS}
    for i in range(n_users):
        user_id = id_on_shard(i * 1024 // n_users)
        payment_id = id_on_shard(logical_shard(user_id))
        ids["users"].append(user_id)
        ids["payments"].append(payment_id)
        user_rows, payment_rows = rows[backend_of(user_id)]
        user_rows.append((user_id, f"{user_id}@example.com", "bench", now, now))
        payment_rows.append((payment_id, user_id, 1000, "USD", "seed", "pending", now, now))
    for name, (user_rows, payment_rows) in rows.items():
        with contextlib.closing(stack.connect(name)) as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO users (id, email, name, version, created_at, updated_at) VALUES (%s, %s, %s, 1, %s, %s)",
                user_rows,
            )
            cur.executemany(
                f"INSERT INTO payments ({PAYMENT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, 1, %s, %s)", payment_rows
            )
    return ids
