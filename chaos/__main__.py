"""``python -m chaos`` (``make chaos``): the everyday stack's scenarios, then the cluster
stack's (issue 15), each stage on a fresh stack of its own with the service on it, the
tables in docs/RELIABILITY.md; exit 1 if any scenario lost or doubled a payment, left
analytics inexact, failed a write for good or answered 500.

``--stage cluster`` (``make chaos-cluster``) plays one stage only. ``CHAOS_SCENARIOS=kafka,
shard-move`` plays only those (keys of either stage; a stage with none is skipped, and the
tables go to reports/chaos/RELIABILITY.partial.md, leaving the document alone).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable

from chaos import cluster_report, report
from chaos.cluster import ClusterStack
from chaos.cluster_scenarios import CLUSTER_SCENARIOS, KAFKA_RATE_PER_S
from chaos.load import RATE_PER_S
from chaos.run import Run
from chaos.scenarios import SCENARIOS
from chaos.stack import REPO, WORK, Stack, log

Scenarios = dict[str, Callable[[Run], Awaitable[None]]]
STAGES: dict[str, tuple[type[Stack], Scenarios]] = {
    "everyday": (Stack, SCENARIOS),
    "cluster": (ClusterStack, CLUSTER_SCENARIOS),
}


def chosen(stages: list[str]) -> dict[str, list[str]]:
    """The scenarios to play, by stage, in each stage's order."""
    wanted = [k for k in os.environ.get("CHAOS_SCENARIOS", "").split(",") if k]
    known = {key for stage in stages for key in STAGES[stage][1]}
    unknown = set(wanted) - known
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; known: {', '.join(sorted(known))}")
    return {stage: [k for k in STAGES[stage][1] if not wanted or k in wanted] for stage in stages}


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


async def play(run: Run, scenarios: Scenarios, key: str) -> None:
    """One scenario; a scenario that breaks is recorded, and the stack and service restored."""
    try:
        await scenarios[key](run)
    except Exception as exc:
        traceback.print_exc()
        run.results.append({"key": key, "title": key, "error": f"{type(exc).__name__}: {exc}"})
        await run.stack.devstack("up")
        if run.service is None or not run.service.running():
            run.spawn(f"after-{key}")
        await run.ready()


async def stage(name: str, keys: list[str]) -> bool:
    """One stage: its stack afresh, the service, its scenarios, its section; True if all passed."""
    make_stack, scenarios = STAGES[name]
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    stack = make_stack()
    log(f"{name} stack in {stack.dir}, service on {stack.service_url}; logs in {stack.work}")
    run = None
    try:
        await stack.fresh()
        run = Run(stack, await stack.prepare())
        stack_s = time.monotonic() - started
        run.spawn(f"{name}-main" if name != "everyday" else "main")
        await run.ready()
        warm_up = await run.warm_up(stack.warm_up_s) if stack.warm_up_s else None
        for key in keys:
            await play(run, scenarios, key)
    finally:
        if run is not None:
            await run.close()
        await stack.down()
    everyday = name == "everyday"
    meta = {
        "stack": name,
        "what": "the everyday stage of `make chaos`" if everyday else "the cluster stage, `make chaos-cluster`",
        "date": dt.date.today().isoformat(),
        "commit": commit(),
        "runtime_s": time.monotonic() - started,
        "stack_s": stack_s,
        "warm_up": warm_up,
        "rate_per_s": RATE_PER_S,
        "rate_note": "" if everyday else f" ({KAFKA_RATE_PER_S} in the Kafka broker scenario)",
        "cores": os.cpu_count(),
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],  # 1-minute, at start and end
        "scenarios": keys,
    }
    whole = keys == list(scenarios)
    extra = [] if everyday else cluster_report.extra(run.results)
    report.write(
        run.results, meta, stack.work, doc=report.DOC if whole else WORK / "RELIABILITY.partial.md", extra=extra
    )
    failed = [r["key"] for r in run.results if not report.passed(r)]
    verdict = "FAILED " + ", ".join(failed) if failed else "every scenario ok"
    log(f"{name} stage done in {meta['runtime_s'] / 60:.1f} min: {verdict}")
    for demand in [] if everyday else cluster_report.unmet(run.results):
        log(f"not met: {demand}")
    return not failed


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=[*STAGES, "all"], default="all")
    args = parser.parse_args(argv)
    # The run's own Kafka clients meet every outage it makes: their errors are expected.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    started = time.monotonic()
    plan = chosen(list(STAGES) if args.stage == "all" else [args.stage])
    ok = True
    for name, keys in plan.items():
        if keys:
            ok = await stage(name, keys) and ok
    log(f"done in {(time.monotonic() - started) / 60:.1f} min: {'every scenario ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
