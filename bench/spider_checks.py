"""Correctness of our transaction shape through Spider, for ``python -m bench.spider``: does the
one-round-trip create work, is the user's lock held on the backend, which backends a create
touches, which errors come back as the service expects them, what the front does with DDL,
SKIP LOCKED, the relay's statements and auto-increment ids. Each check returns what it saw."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import time
import uuid

import aiomysql
import pymysql

from bench.spider_load import DIRECT, SPIDER, SPIDER_AI2, Client, Route, create_statements, error_name, run
from bench.spider_stack import DIR, SHARDS, Stack, backend_of, id_on_shard, spider_ddl
from domain import outbox, users
from managers.mysql import MySQLManager, Tx, is_duplicate_key, is_missing_parent

RELAY_SELECT = (
    "SELECT id, event_type, partition_key, payload FROM outbox"
    " WHERE published_at IS NULL ORDER BY id LIMIT %s FOR UPDATE"
)  # domain/outbox.py's relay_once
RELAY_MARK = "UPDATE outbox SET published_at = UTC_TIMESTAMP(6) WHERE id IN ({})"  # its mark, as shipped
RELAY_MARK_LITERAL = "UPDATE outbox SET published_at = %s WHERE id IN ({})"  # the time computed by the client
READ_COMMITTED = ["SET TRANSACTION ISOLATION LEVEL READ COMMITTED", "BEGIN"]


def on(ids: list[str], backend: str) -> list[str]:
    return [i for i in ids if backend_of(i) == backend]


def described(exc: BaseException) -> dict:
    """An error as the service would see it: its code, and whether MySQLManager answers it
    with 503 (an outage) or lets it through as a bug (500)."""
    return {
        "error": error_name(exc),
        "message": str(exc)[:160],
        "service_answers_503": MySQLManager.is_unavailable(exc),
    }


async def run_all(stack: Stack, ids: dict[str, list[str]], timeout_s: float) -> dict:
    b1_users, b2_users = on(ids["users"], "b1"), on(ids["users"], "b2")
    return {
        "unique_keys_refused_on_front": stack.front_ddl_errors,
        "multi_statement_round_trip": await multi_statement(stack, b1_users[0], b2_users[0], timeout_s),
        "backend_statements_per_create": await statements_per_create(stack, b1_users[:40], timeout_s),
        "user_lock": await user_lock(stack, b1_users[1], timeout_s),
        "lost_updates": {r.name: await lost_updates(stack, r, b1_users[2], 50) for r in (DIRECT, SPIDER)},
        "errors_through_front": await errors_through_front(stack, b1_users[3], b2_users[3], timeout_s),
        "ddl": ddl_propagation(stack),
        "relay_statements": relay_statements(stack),
        "skip_locked": skip_locked(stack, b1_users[4]),
        "auto_increment": await auto_increment(stack, b1_users[5], b2_users[5], timeout_s),
        "default_auto_increment_under_load": await default_auto_increment(stack, ids, timeout_s),
    }


async def multi_statement(stack: Stack, b1_user: str, b2_user: str, timeout_s: float) -> dict:
    """The create's one round trip (BEGIN; lock; key; payment; event; COMMIT) through the front,
    for a user of each backend: the row counts, and where the rows landed."""
    out = {}
    for user_id in (b1_user, b2_user):
        statements = create_statements(user_id)
        payment_id, event_id = statements[2][1][0], statements[3][1][0]
        client = Client(stack, SPIDER, timeout_s)
        try:
            async with client.cursor(user_id) as cur:
                counts = await Tx(cur, timeout_s, ["BEGIN"]).script(statements, commit=True)
        finally:
            client.close()
        found = {}
        for name in SHARDS:
            with contextlib.closing(stack.connect(name)) as conn, conn.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM payments WHERE id = %s", (payment_id,))
                n_payment = cur.fetchone()[0]
                cur.execute("SELECT COUNT(*) FROM outbox WHERE event_id = %s", (event_id,))
                found[name] = {"payment": n_payment, "event": cur.fetchone()[0]}
        out[f"user on {backend_of(user_id)}"] = {"row_counts": counts, "rows_by_backend": found}
    return out


class Probe:
    """A connection to each backend, to read its counters and switch its general log; its own
    statements are left out of what it reports."""

    def __init__(self, stack: Stack):
        self.conns = {name: stack.connect(name) for name in SHARDS}
        self.threads = {name: conn.thread_id() for name, conn in self.conns.items()}

    def questions(self) -> dict[str, int]:
        out = {}
        for name, conn in self.conns.items():
            with conn.cursor() as cur:
                cur.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
                out[name] = int(cur.fetchone()[1])
        return out

    def general_log(self, on: bool) -> None:
        for name, conn in self.conns.items():
            with conn.cursor() as cur:
                if on:
                    (DIR / "logs" / f"{name}.general").write_text("")
                    cur.execute("SET GLOBAL general_log_file = %s", (str(DIR / "logs" / f"{name}.general"),))
                cur.execute(f"SET GLOBAL general_log = {int(on)}")

    def queries(self, name: str) -> list[str]:
        """What the general log of ``name`` holds, but the probe's own statements."""
        out = []
        for line in (DIR / "logs" / f"{name}.general").read_text().splitlines():
            if m := re.search(r"(\d+) Query\t(.*)", line):
                if int(m.group(1)) != self.threads[name]:
                    out.append(m.group(2)[:150])
        return out

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()


async def statements_per_create(stack: Stack, b1_users: list[str], timeout_s: float) -> dict:
    """What each backend receives per create of a user on b1, one route at a time: statements
    (the backends' Questions counter, less the probe's own reads, over a run of creates), and
    round trips (queries in the general log for one create); for the front, what b2 got."""
    out: dict = {}
    probe = Probe(stack)
    try:
        for route in (DIRECT, SPIDER, SPIDER_AI2):
            client = Client(stack, route, timeout_s)
            await client.create(b1_users[0])  # the connection and the front's table state exist
            n = len(b1_users) // 2
            before = probe.questions()
            for user_id in b1_users[1 : n + 1]:
                await client.create(user_id)
            after = probe.questions()
            probe.general_log(True)
            await client.create(b1_users[-1])
            probe.general_log(False)
            client.close()
            out[route.name] = {
                "statements": {name: round((after[name] - before[name] - 1) / n, 1) for name in SHARDS},
                "round_trips": {name: len(probe.queries(name)) for name in SHARDS},
            }
            if route.via_front:
                out[route.name]["b2 got"] = probe.queries("b2")
    finally:
        probe.close()
    return out


async def user_lock(stack: Stack, user_id: str, timeout_s: float) -> dict:
    """A transaction through the front takes the user's lock (and keeps the BEGIN open): is the
    row locked on the backend (NOWAIT there fails), and does a second transaction through the
    front wait until the first commits?"""
    holder, waiter = Client(stack, SPIDER, timeout_s), Client(stack, SPIDER, timeout_s)
    out: dict = {}
    try:
        async with holder.cursor(user_id) as cur:
            tx = Tx(cur, timeout_s, ["BEGIN"])
            await tx.script([users.lock_statement(user_id)])
            with contextlib.closing(stack.connect(backend_of(user_id))) as conn, conn.cursor() as probe:
                try:
                    probe.execute("SELECT id FROM users WHERE id = %s FOR UPDATE NOWAIT", (user_id,))
                    out["locked_on_backend"] = False
                except pymysql.err.MySQLError as exc:
                    out["locked_on_backend"] = True
                    out["backend_nowait_error"] = error_name(exc)

            async def second() -> float:
                t = time.monotonic()
                async with waiter.cursor(user_id) as cur2:
                    await Tx(cur2, timeout_s, ["BEGIN"]).script([users.lock_statement(user_id)], commit=True)
                return time.monotonic() - t

            task = asyncio.create_task(second())
            await asyncio.sleep(1.0)
            out["second_waiting_after_1s"] = not task.done()
            await cur.connection.commit()
            out["second_took_s"] = round(await task, 2)
    finally:
        holder.close()
        waiter.close()
    return out


async def lost_updates(stack: Stack, route: Route, user_id: str, n: int) -> dict:
    """``n`` transactions at once, each reading the user's version FOR UPDATE and writing it
    back plus one (two round trips): with the lock held, the version rises by exactly ``n``."""
    target = "front" if route.via_front else backend_of(user_id)

    def version() -> int:
        with contextlib.closing(stack.connect(backend_of(user_id))) as conn, conn.cursor() as cur:
            cur.execute("SELECT version FROM users WHERE id = %s", (user_id,))
            return int(cur.fetchone()[0])

    async def bump() -> None:
        conn = await aiomysql.connect(**stack.login(target), autocommit=True, charset="utf8mb4")
        try:
            async with conn.cursor(aiomysql.DictCursor) as cur:
                tx = Tx(cur, 60, ["BEGIN"])
                row = await tx.fetchone("SELECT version FROM users WHERE id = %s FOR UPDATE", (user_id,))
                assert row is not None
                await tx.script([("UPDATE users SET version = %s WHERE id = %s", (row["version"] + 1, user_id))], True)
        finally:
            conn.close()

    start, t = version(), time.monotonic()
    results = await asyncio.gather(*(bump() for _ in range(n)), return_exceptions=True)
    failed = [error_name(r) for r in results if isinstance(r, BaseException)]
    return {
        "transactions": n,
        "failed": failed,
        "version_rose_by": version() - start,
        "seconds": round(time.monotonic() - t, 2),
    }


async def errors_through_front(stack: Stack, b1_user: str, b2_user: str, timeout_s: float) -> dict:
    """The errors the service's create relies on (a missing user fails the payment's foreign
    key, 1452; a key in use fails its own, 1062), and a unique email across backends."""
    out: dict = {}
    client = Client(stack, SPIDER, timeout_s)
    try:
        ghost = id_on_shard(7)  # no such user
        try:
            await client.create(ghost)
            out["missing_user"] = {"error": None}
        except pymysql.err.MySQLError as exc:
            out["missing_user"] = described(exc) | {"is_missing_parent": _is(is_missing_parent, exc)}
        statements = create_statements(b1_user)
        async with client.cursor(b1_user) as cur:
            await Tx(cur, timeout_s, ["BEGIN"]).script(statements, commit=True)
        again = create_statements(b1_user)
        again[1] = (again[1][0], (statements[1][1][0], *again[1][1][1:]))  # the same idempotency key
        try:
            async with client.cursor(b1_user) as cur:
                await Tx(cur, timeout_s, ["BEGIN"]).script(again, commit=True)
            out["idempotency_key_reused"] = {"error": None}
        except pymysql.err.MySQLError as exc:
            out["idempotency_key_reused"] = described(exc) | {"is_duplicate_key": _is(is_duplicate_key, exc)}
        email, accepted = f"same-{uuid.uuid4().hex[:8]}@example.com", []
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        for user_id in (id_on_shard(100), id_on_shard(900)):  # one on each backend
            async with client.cursor(user_id) as cur:
                await Tx(cur, timeout_s).execute(
                    "INSERT INTO users (id, email, name, created_at, updated_at) VALUES (%s, %s, 'x', %s, %s)",
                    (user_id, email, now, now),
                )
                accepted.append(backend_of(user_id))
        out["one_email_two_backends"] = {"accepted_on": accepted}
    finally:
        client.close()
    return out


def _is(check, exc: pymysql.err.MySQLError) -> bool:
    return isinstance(exc, pymysql.err.IntegrityError) and check(exc)


def ddl_propagation(stack: Stack) -> dict:
    """A column added on the front: does it reach the backends?"""
    for name in SHARDS:
        with contextlib.closing(stack.connect(name)) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE ddl_probe (id CHAR(36) NOT NULL PRIMARY KEY) ENGINE=InnoDB")
            cur.execute("SHOW CREATE TABLE ddl_probe")
            shape = cur.fetchone()[1]
    out: dict = {}
    with contextlib.closing(stack.connect("front")) as conn, conn.cursor() as cur:
        cur.execute(spider_ddl("ddl_probe", shape, "id", keep_unique=True))
        cur.execute("ALTER TABLE ddl_probe ADD COLUMN note VARCHAR(20) NULL")
        try:
            cur.execute("INSERT INTO ddl_probe (id, note) VALUES (%s, 'x')", (id_on_shard(1),))
            out["insert_with_new_column"] = "ok"
        except pymysql.err.MySQLError as exc:
            out["insert_with_new_column"] = error_name(exc)
    for name in SHARDS:
        with contextlib.closing(stack.connect(name)) as conn, conn.cursor() as cur:
            cur.execute("SHOW COLUMNS FROM ddl_probe LIKE 'note'")
            out[f"column on {name}"] = cur.fetchone() is not None
    return out


def relay_statements(stack: Stack) -> dict:
    """Each statement the relay and its housekeeping send (domain/outbox.py), through the front,
    in a transaction rolled back: does the front accept it?"""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    statements = {
        "select batch FOR UPDATE": (RELAY_SELECT, (500,)),
        "mark, as shipped (UTC_TIMESTAMP(6))": (RELAY_MARK.format("1, 2, 3"), None),
        "mark, the time as a literal": (RELAY_MARK_LITERAL.format("1, 2, 3"), (now,)),
        "backlog gauge": ("SELECT COUNT(*), MIN(created_at) FROM outbox WHERE published_at IS NULL", None),
        "housekeeping: old events": (
            "DELETE FROM outbox WHERE published_at IS NOT NULL"
            " AND created_at < UTC_TIMESTAMP(6) - INTERVAL %s SECOND LIMIT 5000",
            (86400,),
        ),
        "housekeeping: old keys": (
            "DELETE FROM idempotency_keys WHERE created_at < UTC_TIMESTAMP(6) - INTERVAL %s SECOND LIMIT 5000",
            (86400,),
        ),
    }
    out = {}
    with contextlib.closing(stack.connect("front")) as conn, conn.cursor() as cur:
        for label, (sql, args) in statements.items():
            cur.execute("BEGIN")
            try:
                cur.execute(sql, args)
                out[label] = "ok"
            except pymysql.err.MySQLError as exc:
                out[label] = f"{error_name(exc)}: {str(exc.args[1])[:90]}"
            cur.execute("ROLLBACK")
    return out


def skip_locked(stack: Stack, b1_user: str, wait_s: float = 3.0) -> dict:
    """Two pending events on b1, one locked by another transaction on b1: the relay's select
    with SKIP LOCKED, straight on b1 and through the front (given ``wait_s``)."""
    event_ids = [str(uuid.uuid4()) for _ in range(2)]
    with contextlib.closing(stack.connect("b1")) as conn, conn.cursor() as cur:
        for event_id in event_ids:
            sql, args = outbox.insert({"event_id": event_id, "type": "probe", "user_id": b1_user})
            cur.execute(sql, args)
    sql = RELAY_SELECT.replace("FOR UPDATE", "FOR UPDATE SKIP LOCKED")
    out = {}
    with contextlib.closing(stack.connect("b1")) as holder, holder.cursor() as hc:
        hc.execute("BEGIN")
        hc.execute("SELECT id FROM outbox WHERE event_id = %s FOR UPDATE", (event_ids[0],))
        for target in ("b1", "front"):
            conn = stack.connect(target, read_timeout=wait_s)
            t = time.monotonic()
            try:
                with conn.cursor() as cur:
                    cur.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    cur.execute("BEGIN")
                    cur.execute(sql, (500,))
                    out["direct" if target == "b1" else "spider"] = {
                        "rows": len(cur.fetchall()),
                        "seconds": round(time.monotonic() - t, 2),
                    }
                    cur.execute("ROLLBACK")
            except pymysql.err.MySQLError as exc:
                label = "direct" if target == "b1" else "spider"
                out[label] = {"blocked": error_name(exc), "seconds": round(time.monotonic() - t, 2)}
            finally:
                with contextlib.suppress(Exception):
                    conn.close()
        hc.execute("ROLLBACK")
    with contextlib.closing(stack.connect("b1")) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM outbox WHERE event_type = 'probe'")
    return out


async def auto_increment(stack: Stack, b1_user: str, b2_user: str, timeout_s: float) -> dict:
    """Outbox ids through the front, from empty tables: with Spider's default
    (spider_auto_increment_mode 0) and with mode 2 (each backend assigns its own). Then one
    relay batch through the front, as the relay sends it: rows selected against rows marked."""
    out: dict = {}
    for name in SHARDS:
        with contextlib.closing(stack.connect(name)) as conn, conn.cursor() as cur:
            cur.execute("TRUNCATE TABLE outbox")
    for route in (SPIDER_AI2, SPIDER):
        client = Client(stack, route, timeout_s)
        try:
            for user_id in (b1_user, b2_user):
                await client.create(user_id)
        finally:
            client.close()
        out[route.name] = {name: _ids(stack, name) for name in SHARDS}
    with contextlib.closing(stack.connect("front")) as conn, conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        cur.execute("BEGIN")
        cur.execute(RELAY_SELECT, (1,))
        picked = [row[0] for row in cur.fetchall()]
        cur.execute(
            RELAY_MARK_LITERAL.format(",".join(map(str, picked))), (dt.datetime.now(dt.UTC).replace(tzinfo=None),)
        )
        out["relay batch of 1 through the front"] = {"selected": len(picked), "marked_published": cur.rowcount}
        cur.execute("ROLLBACK")
    return out


def _ids(stack: Stack, name: str) -> list[int]:
    with contextlib.closing(stack.connect(name)) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM outbox ORDER BY id")
        return [row[0] for row in cur.fetchall()]


def waiting(stack: Stack) -> dict[str, int]:
    """Transactions waiting on a lock, and transactions open, on each backend."""
    out = {}
    for name in SHARDS:
        with contextlib.closing(stack.connect(name)) as conn, conn.cursor() as cur:
            cur.execute("SELECT SUM(trx_state = 'LOCK WAIT'), COUNT(*) FROM information_schema.INNODB_TRX")
            lock_wait, open_trx = cur.fetchone()
            out[f"{name} waiting"], out[f"{name} open"] = int(lock_wait or 0), int(open_trx)
    return out


async def default_auto_increment(stack: Stack, ids: dict, timeout_s: float, seconds: float = 3.0) -> dict:
    """Creates through the front as installed (spider_auto_increment_mode 0: every outbox insert
    reads each backend's last id FOR UPDATE), one at a time and two at a time; then how long
    direct writes to the backends stay blocked, by a direct create tried until one succeeds.
    The front is restarted afterwards, so that nothing it still holds reaches later runs."""
    out: dict = {}
    for concurrency in (1, 2):
        r = await run(stack, SPIDER, "create", ids, concurrency, seconds, timeout_s)
        out[f"{concurrency} at a time"] = {k: r[k] for k in ("ops_per_s", "p50_ms", "p99_ms", "errors")}
    out["backends after"] = waiting(stack)
    client, t, attempt = Client(stack, DIRECT, timeout_s), time.monotonic(), 0
    out["direct creates blocked for_s"] = None
    while time.monotonic() - t < 300:
        attempt += 1
        try:
            await client.create(ids["users"][attempt % len(ids["users"])])
            out["direct creates blocked for_s"] = round(time.monotonic() - t, 1)
            break
        except Exception:
            await asyncio.sleep(0.2)
    client.close()
    stack["front"].restart()
    return out
