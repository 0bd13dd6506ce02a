"""``python -m bench.floors KIND PORT``: what an endpoint is measured against, each in its own
process. A floor does the bare minimum of its endpoint's I/O on the same stack (Tornado,
redis.asyncio, aiomysql) and the bench's stores, with none of the service's code and its pools
the size of the service's; the bench passes its event loop, stores, pool sizes and key file in
``BENCH_FLOOR`` (JSON). Every floor but ``bare`` checks the bearer key against a set of the
bench's keys first.

- ``bare``: no I/O, a small JSON dict (the baseline);
- ``get``: one HMGET of the user's or payment's cache entry, as the service reads it (the same
  bytes move), its body returned;
- ``post``: one transaction in one round trip, as the service's: a payment row and an outbox row;
- ``put``: one transaction in two round trips, as the service's: the payment row locked
  (``SELECT ... FOR UPDATE``), then its status updated and committed;
- ``page``: the service's query for a page of 20 (the ids from the index, then their rows),
  with the same filters, its rows returned as JSON."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import aiomysql
import tornado.web
import uvloop
from pymysql.constants import CLIENT
from redis import asyncio as aioredis

COLUMNS = "id, user_id, amount_minor, currency, description, status, version, created_at, updated_at"
FILTERS = {"status": "status = %s", "created_gte": "created_at >= %s", "created_lt": "created_at < %s"}
# The POST and PUT floors' statements, on tables of the service's tables' shape (bench/env.py floor_tables)
BEGIN, COMMIT = ("START TRANSACTION", ()), ("COMMIT", ())
INSERT = f"INSERT INTO floor_payments ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, 1, %s, %s)"
OUTBOX = (
    "INSERT INTO floor_outbox (event_id, event_type, partition_key, payload, created_at)"
    " VALUES (%s, 'payment_created', %s, %s, UTC_TIMESTAMP(6))"
)
LOCK = "SELECT status, version FROM floor_payments WHERE id = %s FOR UPDATE"
UPDATE = "UPDATE floor_payments SET status = %s, version = version + 1, updated_at = UTC_TIMESTAMP(6) WHERE id = %s"


class Floor(tornado.web.RequestHandler):
    def initialize(self, keys: set[str], redis: aioredis.Redis, pool: aiomysql.Pool) -> None:
        self.keys, self.redis, self.pool = keys, redis, pool

    def prepare(self) -> None:
        if self.request.headers.get("Authorization", "").removeprefix("Bearer ") not in self.keys:
            raise tornado.web.HTTPError(401)


async def script(cur: aiomysql.Cursor, *statements: tuple[str, tuple]) -> list[tuple]:
    """``statements`` in one round trip, as the service's ``Tx.script``; the rows of the last."""
    await cur.execute(";".join(cur.mogrify(sql, args) for sql, args in statements))
    while await cur.nextset():
        pass
    return list(await cur.fetchall())


class Bare(Floor):
    def prepare(self) -> None:  # no key check
        pass

    def get(self) -> None:
        self.write({"status": "ok", "service": "baseline"})


class Get(Floor):
    async def get(self, kind: str, item: str) -> None:
        _, _, body = await self.redis.hmget(f"{kind}:v2:{item}", ("v", "o", "b"))
        if body is None:
            raise tornado.web.HTTPError(404)
        self.set_header("Content-Type", "application/json")
        self.write(body)


class Page(Floor):
    async def get(self, user: str) -> None:
        where, args = ["user_id = %s"], [user]
        for name, sql in FILTERS.items():
            if value := self.get_query_argument(name, None):
                where.append(sql)
                args.append(value.replace("T", " ").removesuffix("Z"))
        ids = f"SELECT id FROM payments WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC LIMIT 21"
        query = f"SELECT {COLUMNS} FROM payments JOIN ({ids}) AS page USING (id) ORDER BY created_at DESC, id DESC"
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(query, args)
            rows = await cur.fetchall()
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps({"items": rows[:20]}, default=str))


class Post(Floor):
    async def post(self) -> None:
        body, new, now = json.loads(self.request.body), str(uuid.uuid4()), dt.datetime.now(dt.UTC)
        user, minor = body["user_id"], int(Decimal(body["amount"]) * 100)
        row = (new, user, minor, body.get("currency", "USD"), body.get("description"), "pending", now, now)
        event = json.dumps({"type": "payment_created", "user_id": user, "data": body, "at": now.isoformat()})
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await script(cur, BEGIN, (INSERT, row), (OUTBOX, (str(uuid.uuid4()), user, event)), COMMIT)
        self.set_status(201)
        self.write({"id": new, "status": "pending"})


class Put(Floor):
    async def put(self, payment: str) -> None:
        status = json.loads(self.request.body)["status"]
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            if not await script(cur, BEGIN, (LOCK, (payment,))):
                await conn.rollback()
                raise tornado.web.HTTPError(404)
            await script(cur, (UPDATE, (status, payment)), COMMIT)
        self.write({"id": payment, "status": status})


ROUTES = {
    "bare": [],
    "get": [(r"/api/v1/(user|payment)s/([^/]+)", Get)],
    "page": [(r"/api/v1/users/([^/]+)/payments", Page)],
    "post": [(r"/api/v1/payments", Post)],
    "put": [(r"/api/v1/payments/([^/]+)/status", Put)],
}


async def serve(kind: str, port: int, stores: dict, keys: set[str]) -> None:
    redis, pool = None, None
    if kind != "bare":
        redis = aioredis.Redis.from_url(stores["redis"], max_connections=64)
        mysql = stores["mysql"] | {"autocommit": True, "charset": "utf8mb4", "client_flag": CLIENT.MULTI_STATEMENTS}
        pool = await aiomysql.create_pool(**mysql)
    routes = [*ROUTES[kind], (r"/", Bare)]  # every floor answers / (ready)
    handlers = [(path, cls, {"keys": keys, "redis": redis, "pool": pool}) for path, cls in routes]
    tornado.web.Application(handlers, log_function=lambda handler: None).listen(port, address="127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    kind, port, stores = sys.argv[1], int(sys.argv[2]), json.loads(os.environ["BENCH_FLOOR"])
    keys = set(Path(stores["keys"]).read_text().split()) if kind != "bare" else set()
    (uvloop.run if stores["loop"] == "uvloop" else asyncio.run)(serve(kind, port, stores, keys))
