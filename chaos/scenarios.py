"""The fault scenarios, in the order a run plays them. Each is a short choreography on
``Run``: users of its own, steady writes, the fault, the way back.

``SCENARIOS`` maps a key (``CHAOS_SCENARIOS=kafka,sigterm`` plays some only) to the
scenario. A dependency's "down" is a SIGKILL of its server (FerretDB with its
PostgreSQL), and "back" is ``devstack/services.sh up`` with the stack's environment.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable

from chaos.run import Run

NAMES = {"kafka": "Kafka", "mariadb": "MariaDB", "redis": "Redis", "ferretdb": "FerretDB + PostgreSQL"}
DOWN_S = {"kafka": 25.0, "mariadb": 10.0, "redis": 10.0, "ferretdb": 15.0}  # deliberate outage lengths
DOWN_AT_START_S = 10.0


def kill_dependency(fault: str) -> Callable[[Run], Awaitable[None]]:
    async def scenario(run: Run) -> None:
        s = await run.prepare(fault, f"SIGKILL {NAMES[fault]}, restarted {DOWN_S[fault]:.0f} s later")
        async with run.loaded(s):
            s.fault_start = time.monotonic()
            await run.stack.kill(fault)
            await asyncio.sleep(DOWN_S[fault])  # deliberate: the outage
            s.notes["restart_s"] = round(await run.stack.up(fault), 1)
            s.fault_end = time.monotonic()

    return scenario


async def sigterm_service(run: Run) -> None:
    s = await run.prepare("sigterm", "SIGTERM of the service mid-writes, a new process started")
    async with run.loaded(s) as load:
        # Mid-writes indeed: the signal goes while a request is on the wire.
        deadline = time.monotonic() + 5
        while not load.in_flight() and time.monotonic() < deadline:  # noqa: ASYNC110 (the load's own state)
            await asyncio.sleep(0.001)
        s.notes["in_flight"] = load.in_flight()
        s.fault_start = time.monotonic()
        old = run.service
        s.notes["exit_code"] = await old.stop(signal.SIGTERM)
        s.notes["stopped_in_s"] = round(time.monotonic() - s.fault_start, 1)
        run.spawn("after-sigterm")
        s.fault_end = time.monotonic()
        if s.notes["exit_code"] != 0:
            s.problems.append(f"the service exited {s.notes['exit_code']} on SIGTERM")


def start_with_dependency_down(fault: str) -> Callable[[Run], Awaitable[None]]:
    async def scenario(run: Run) -> None:
        title = f"service started with {NAMES[fault]} down, restarted {DOWN_AT_START_S:.0f} s later"
        s = await run.prepare(f"start-{fault}", title)
        if (code := await run.service.stop()) != 0:
            s.problems.append(f"the previous service exited {code} on SIGTERM")
        s.fault_start = time.monotonic()
        await run.stack.kill(fault)
        run.spawn(f"start-without-{fault}")
        async with run.loaded(s, warmup_s=0):
            await asyncio.sleep(DOWN_AT_START_S)  # deliberate: the outage
            s.notes["restart_s"] = round(await run.stack.up(fault), 1)
            s.fault_end = time.monotonic()

    return scenario


async def rolling_restart(run: Run) -> None:
    """issue 10: a rolling restart of server.processes: 2 under the same load fails no request."""
    await run.service.stop()
    supervisor = run.spawn("supervisor", processes=2)
    await supervisor.wait_logged("instance ready", count=2, timeout_s=90)
    await run.ready()
    s = await run.prepare("rolling", "rolling restart (SIGHUP) of server.processes: 2")
    async with run.loaded(s):
        s.fault_start = time.monotonic()
        supervisor.send(signal.SIGHUP)
        await supervisor.wait_logged("rolling restart done", timeout_s=180)
        s.fault_end = time.monotonic()
        replaced, ready = len(supervisor.logged("worker replaced")), len(supervisor.logged("instance ready"))
        s.notes.update(workers_replaced=replaced, instances_ready=ready)
        # As tests/service/test_supervisor.py asserts: both replaced, each replacement ready once.
        if (replaced, ready) != (2, 4):
            s.problems.append(f"{replaced} workers replaced and {ready} instances ready, not 2 and 4")


SCENARIOS: dict[str, Callable[[Run], Awaitable[None]]] = {
    **{fault: kill_dependency(fault) for fault in ("kafka", "mariadb", "redis", "ferretdb")},
    "sigterm": sigterm_service,
    **{f"start-{fault}": start_with_dependency_down(fault) for fault in ("mariadb", "kafka", "redis", "ferretdb")},
    "rolling": rolling_restart,
}
