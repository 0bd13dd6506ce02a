"""``python -m chaos`` (``make chaos``): a fresh stack of the run's own, the service on it,
every scenario in turn, the tables in docs/RELIABILITY.md; exit 1 if any scenario lost
or doubled a payment, left analytics inexact, failed a write for good or answered 500.

``CHAOS_SCENARIOS=kafka,rolling`` plays only those (the document is then left alone).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import subprocess
import sys
import time
import traceback

from chaos import report
from chaos.load import RATE_PER_S
from chaos.run import Run
from chaos.scenarios import SCENARIOS
from chaos.stack import REPO, WORK, Stack, log


def chosen() -> list[str]:
    wanted = [k for k in os.environ.get("CHAOS_SCENARIOS", "").split(",") if k]
    unknown = set(wanted) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    return wanted or list(SCENARIOS)


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


async def play(run: Run, key: str) -> None:
    """One scenario; a scenario that breaks is recorded, and the stack and service restored."""
    try:
        await SCENARIOS[key](run)
    except Exception as exc:
        traceback.print_exc()
        run.results.append({"key": key, "title": key, "error": f"{type(exc).__name__}: {exc}"})
        await run.stack.devstack("up")
        if run.service is None or not run.service.running():
            run.spawn(f"after-{key}")
        await run.ready()


async def main() -> int:
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    # The run's own Kafka clients meet every outage it makes: their errors are expected.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    keys = chosen()
    stack = Stack()
    log(f"stack in {stack.dir}, ports {stack.ports}; logs in {WORK}")
    run = None
    try:
        await stack.fresh()
        run = Run(stack, await stack.prepare())
        stack_s = time.monotonic() - started
        run.spawn("main")
        await run.ready()
        for key in keys:
            await play(run, key)
    finally:
        if run is not None:
            await run.close()
        await stack.down()
    meta = {
        "stack": "everyday",
        "what": "the whole `make chaos`",
        "date": dt.date.today().isoformat(),
        "commit": commit(),
        "runtime_s": time.monotonic() - started,
        "stack_s": stack_s,
        "rate_per_s": RATE_PER_S,
        "cores": os.cpu_count(),
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],  # 1-minute, at start and end
        "scenarios": keys,
    }
    whole = keys == list(SCENARIOS)
    report.write(run.results, meta, stack.work, doc=report.DOC if whole else WORK / "RELIABILITY.partial.md")
    failed = [r["key"] for r in run.results if not report.passed(r)]
    log(f"done in {meta['runtime_s'] / 60:.1f} min: {'FAILED ' + ', '.join(failed) if failed else 'every scenario ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
