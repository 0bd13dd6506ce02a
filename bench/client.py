"""The bench's REST client (keep-alive HTTP/1.1 on asyncio streams) and what the bench does
with it: seed users and payments, mint WebSocket tokens, create payments at a fixed rate."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from bench.env import HOST, log


class Pool:
    """``size`` keep-alive connections, each request on a free one, every request with the key."""

    def __init__(self, port: int, key: str, size: int = 32):
        self.port, self.key = port, key
        self._free: asyncio.Queue = asyncio.Queue()
        for _ in range(size):
            self._free.put_nowait(None)  # opened on first use

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        conn = await self._free.get()
        try:
            if conn is None or conn[1].is_closing():
                conn = await asyncio.open_connection(HOST, self.port)
            data = b"" if body is None else json.dumps(body).encode()
            head = (
                f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nAuthorization: Bearer {self.key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
            )
            conn[1].write(head.encode() + data)
            status_line, *headers = (await conn[0].readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            length = next((int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:")), 0)
            return int(status_line.split()[1]), await conn[0].readexactly(length)
        except BaseException:
            if conn is not None:
                conn[1].close()
            conn = None
            raise
        finally:
            self._free.put_nowait(conn)

    def close(self) -> None:
        while not self._free.empty():
            if conn := self._free.get_nowait():
                conn[1].close()


async def call_all(port: int, key: str, calls: list[tuple]) -> list:
    """The JSON answer to every (method, path, body, expected status) call, as many at once as a
    pool of its own has connections."""
    pool = Pool(port, key)

    async def one(method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        status, payload = await pool.request(method, path, body)
        if status != expect:
            raise RuntimeError(f"{method} {path}: {status} {payload[:300]!r}")
        return json.loads(payload)

    try:
        return await asyncio.gather(*(one(*call) for call in calls))
    finally:
        pool.close()


async def seed(port: int, key: str, users: int, list_users: int, per_user: int, keys: int) -> dict[str, list[str]]:
    """``users`` users, ``per_user`` payments for each of the first ``list_users``, each read once so
    that the GET runs hit the cache; and ``keys`` admin keys, for wrk's requests to spread over."""
    nonce, started = uuid.uuid4().hex[:8], time.monotonic()
    bodies = [{"email": f"seed-{nonce}-{i}@example.com", "name": f"Seed {i}"} for i in range(users)]
    user_ids = [u["id"] for u in await call_all(port, key, [("POST", "/api/v1/users", b, 201) for b in bodies])]
    pairs = enumerate(user_ids[:list_users] * per_user)
    bodies = [{"user_id": u, "amount": f"{i % 500 + 1}.{i % 100:02d}", "currency": "USD"} for i, u in pairs]
    payment_ids = [p["id"] for p in await call_all(port, key, [("POST", "/api/v1/payments", b, 201) for b in bodies])]
    reads = [f"/api/v1/users/{u}" for u in user_ids] + [f"/api/v1/payments/{p}" for p in payment_ids]
    await call_all(port, key, [("GET", path) for path in reads])
    calls = [("POST", "/api/v1/api-keys", {"role": "admin"}, 201)] * keys
    admin = [k["key"] for k in await call_all(port, key, calls)]
    log(f"seeded {len(user_ids):,} users, {len(payment_ids):,} payments in {time.monotonic() - started:.1f}s")
    return {"users": user_ids, "list_users": user_ids[:list_users], "payments": payment_ids, "keys": admin}


async def tokens(port: int, key: str, users: list[str]) -> dict[str, str]:
    """A WebSocket token per user (``POST /api/v1/ws-tokens`` with the admin key)."""
    minted = await call_all(port, key, [("POST", "/api/v1/ws-tokens", {"user_id": u}, 201) for u in users])
    return {u: t["token"] for u, t in zip(users, minted, strict=True)}


async def drive(port: int, key: str, users: list[str], rate: float, seconds: float) -> dict:
    """POST payments at ``rate``/s for ``seconds``, round-robin over ``users``; each
    description carries its send time (``bench:<epoch s>``) for the clients to read."""
    pool, statuses, tasks, start = Pool(port, key, 256), {}, [], time.monotonic()

    async def one(user: str) -> None:
        body = {"user_id": user, "amount": "1.00", "currency": "USD", "description": f"bench:{time.time():.6f}"}
        status = (await pool.request("POST", "/api/v1/payments", body))[0]
        statuses[status] = statuses.get(status, 0) + 1

    for i in range(int(rate * seconds)):
        if (delay := start + i / rate - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(users[i % len(users)])))
    sending_s = time.monotonic() - start
    await asyncio.gather(*tasks)
    pool.close()
    return {"statuses": statuses, "achieved_rate": round(len(tasks) / sending_s, 1)}
