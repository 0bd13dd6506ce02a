"""MySQLManager against the real MariaDB: who gets a connection when the pool is short."""

from __future__ import annotations

import asyncio

import pytest

from managers.mysql import MySQLManager
from tests.helpers import wait_until


@pytest.mark.gen_test(timeout=30)
async def test_connections_go_to_waiters_in_the_order_they_came(services, config):
    """aiomysql hands a released connection to whoever asks next, not to the one who
    waited longest: ``late`` arrives as ``first`` lets go, and must wait behind ``second``."""
    mysql = MySQLManager({**config["mysql"], "pool_min": 1, "pool_max": 1}, config["reconnect"])
    await mysql._connect_and_migrate()
    mysql.ready.set()
    asked: list[str] = []
    served: list[str] = []
    first_holds, second_waits = asyncio.Event(), asyncio.Event()
    tasks: list[asyncio.Task] = []

    async def use(name: str) -> None:
        asked.append(name)  # nothing between this and the request for a connection yields
        async with mysql._connection() as conn:
            served.append(name)
            await asyncio.wait_for(conn.ping(), 5)
            if name == "first":
                first_holds.set()
                await second_waits.wait()
                # Asks as this one lets go (nothing between here and the release awaits),
                # before the wake-up the release schedules for ``second`` has run.
                tasks.append(asyncio.ensure_future(use("late")))

    try:
        tasks.append(asyncio.ensure_future(use("first")))
        await first_holds.wait()
        tasks.append(asyncio.ensure_future(use("second")))
        # Once this task runs again, ``second`` has asked and is suspended in its request:
        # with the one connection held, it can only be waiting for it.
        await wait_until(lambda: "second" in asked, timeout=5, interval=0.001, what="second to ask for the connection")
        assert served == ["first"]
        second_waits.set()
        await asyncio.wait_for(asyncio.gather(*tasks[:2]), 10)
        await asyncio.wait_for(tasks[2], 10)
        assert asked == ["first", "second", "late"]
        assert served == ["first", "second", "late"]
    finally:
        await mysql.release()
