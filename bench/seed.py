"""Seed data over the REST API (so every row has its outbox event, as in real use)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from bench.env import HOST, WORK, log
from bench.httpclient import Pool, gather_limited

CONCURRENCY = 32


async def seed(port: int, users: int, list_users: int, payments_per_user: int) -> dict[str, Path]:
    """Create ``users`` users and ``payments_per_user`` payments for each of the first
    ``list_users``; read each once so the cache is warm. Returns the id files."""
    pool = Pool(HOST, port, CONCURRENCY)
    nonce = uuid.uuid4().hex[:8]
    started = time.monotonic()
    try:
        created = await gather_limited(
            CONCURRENCY,
            [
                pool.json("POST", "/api/v1/users", {"email": f"seed-{nonce}-{i}@example.com", "name": f"Seed {i}"}, 201)
                for i in range(users)
            ],
        )
        user_ids = [u["id"] for u in created]
        listed = user_ids[: min(list_users, len(user_ids))]
        payments = await gather_limited(
            CONCURRENCY,
            [
                pool.json(
                    "POST",
                    "/api/v1/payments",
                    {"user_id": uid, "amount": f"{(i % 500) + 1}.{i % 100:02d}", "currency": "USD"},
                    201,
                )
                for i in range(payments_per_user)
                for uid in listed
            ],
        )
        payment_ids = [p["id"] for p in payments]
        # Warm the cache-aside entries the GET runs read.
        await gather_limited(CONCURRENCY, [pool.json("GET", f"/api/v1/users/{uid}") for uid in user_ids])
        await gather_limited(CONCURRENCY, [pool.json("GET", f"/api/v1/payments/{pid}") for pid in payment_ids])
    finally:
        await pool.close()
    WORK.mkdir(parents=True, exist_ok=True)
    files = {"users": WORK / "users.txt", "list_users": WORK / "list_users.txt", "payments": WORK / "payments.txt"}
    files["users"].write_text("\n".join(user_ids) + "\n")
    files["list_users"].write_text("\n".join(listed) + "\n")
    files["payments"].write_text("\n".join(payment_ids) + "\n")
    log(f"seeded {len(user_ids)} users, {len(payment_ids)} payments in {time.monotonic() - started:.1f}s")
    return files


def seed_sync(port: int, users: int, list_users: int, payments_per_user: int) -> dict[str, Path]:
    return asyncio.run(seed(port, users, list_users, payments_per_user))
