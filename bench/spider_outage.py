"""One backend down, for ``python -m bench.spider``: backend b2 paused (SIGSTOP: a host that
hangs, connections open and silent) or killed (SIGKILL: connections refused), while tasks
create payments for users on b1, the backend that is still up. For each route:

- ``during``: the creates for b1 users in the outage, each under the service's deadline
  (mysql.query_timeout_s): how many succeed, the errors, when the first came;
- ``b2_user``: one create for a b2 user on a connection opened before the outage, under a long
  deadline: how long the layer itself takes to answer, and with what;
- ``recovery``: b2 back (SIGCONT, or started again), creates for b2 users until one succeeds.

The tasks' connections are opened, and used for users of both backends, before the outage:
the front then holds connections to b2 in each session, as it would in service."""

from __future__ import annotations

import asyncio
import signal
import time

from bench.env import log
from bench.spider_checks import described, on
from bench.spider_load import DIRECT, SPIDER, SPIDER_AI2, SPIDER_TUNED, Client, Route, run
from bench.spider_stack import Stack

PROBE_S = 30.0
RECOVERY_S = 60.0
ROUTES = (DIRECT, SPIDER_TUNED, SPIDER_AI2)  # default net timeouts last: threads stuck on b2 end with its return


async def one(stack: Stack, route: Route, kind: str, ids: dict, concurrency: int, seconds: float, timeout_s: float):
    b2 = stack["b2"]
    clients = [Client(stack, route, timeout_s) for _ in range(concurrency)]
    await run(stack, route, "create", ids, concurrency, 1.0, timeout_s, clients)  # every connection in use
    b1_users, b2_users = {"users": on(ids["users"], "b1")}, on(ids["users"], "b2")
    if kind == "paused":
        b2.signal(signal.SIGSTOP)
    else:
        b2.signal(signal.SIGKILL)
        assert b2.popen is not None
        b2.popen.wait(10)
    out: dict = {"route": route.name, "b2": kind}
    try:
        out["during"] = await run(stack, route, "create", b1_users, concurrency, seconds, timeout_s, clients, 0)
        clients[0].timeout_s = PROBE_S
        out["b2_user"] = await probe_create(clients[0], b2_users[0])
        if route is SPIDER_AI2:  # Spider's default auto-increment reads every backend's last outbox id
            out["b1_user_spider_defaults"] = await probe_create(Client(stack, SPIDER, PROBE_S), b1_users["users"][0])
    finally:
        if kind == "paused":
            b2.signal(signal.SIGCONT)
        else:
            b2.start()
    out["recovery"] = await recovery(clients[1], b2_users)
    for client in clients:
        client.close()
    log(f"spider: outage ({kind}) via {route.name}: {out['during']['ok']} ok, {out['during']['errors']}")
    return out


async def probe_create(client: Client, user_id: str) -> dict:
    """One create under ``client``'s deadline: its answer, and how long it took."""
    t = time.monotonic()
    try:
        await client.create(user_id)
        out = {"answer": "ok"}
    except Exception as exc:
        out = described(exc)
    client.close()
    return out | {"after_s": round(time.monotonic() - t, 2)}


async def recovery(client: Client, b2_users: list[str]) -> dict:
    """From b2's return: creates for b2 users every 0.1 s, until one succeeds."""
    t, errors, attempt = time.monotonic(), {}, 0
    while time.monotonic() - t < RECOVERY_S:
        attempt += 1
        try:
            await client.create(b2_users[attempt % len(b2_users)])
            return {"first_ok_after_s": round(time.monotonic() - t, 2), "errors_before": errors}
        except Exception as exc:
            name = described(exc)["error"]
            errors[name] = errors.get(name, 0) + 1
            await asyncio.sleep(0.1)
    return {"first_ok_after_s": None, "errors_before": errors}


async def measure(stack: Stack, ids: dict, concurrency: int, seconds: float, timeout_s: float) -> list[dict]:
    out = []
    for kind in ("paused", "killed"):
        for route in ROUTES:
            out.append(await one(stack, route, kind, ids, concurrency, seconds, timeout_s))
    return out
