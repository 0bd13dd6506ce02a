"""``python -m service [--config PATH] [--port N]``"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
import time

from handlers.base import BaseHandler
from managers import config as config_module
from managers.base import DependencyUnavailable
from managers.logger import LoggerManager
from service.app import make_app
from service.lifecycle import shutdown, startup

log = logging.getLogger("singleton.service")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m service", description="users-and-payments service")
    parser.add_argument("--config", help="path to config.yaml (default: the repository's)")
    parser.add_argument("--port", type=int, help="listen port (overrides server.port)")
    return parser.parse_args(argv)


async def drain(timeout_s: float) -> None:
    """Wait, up to a deadline, for requests already being handled to finish."""
    deadline = time.monotonic() + timeout_s
    while BaseHandler.in_flight > 0 and time.monotonic() < deadline:  # noqa: ASYNC110 (a counter, not an event)
        await asyncio.sleep(0.05)
    if BaseHandler.in_flight:
        log.warning("shutdown deadline passed with requests in flight", extra={"in_flight": BaseHandler.in_flight})


# Fewer, cheaper collections: the default first threshold (700) ran a young-generation
# pass every few requests, and full passes over 10,000 WebSocket connections took up
# to 0.86 s. Measured in docs/BENCHMARKS.md (GET user +17%, fan-out p99 4.4 s -> 0.5-1 s).
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Move what startup allocated out of the collector's sight, then raise the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(config: dict) -> int:
    try:
        await startup(config)
    except DependencyUnavailable as exc:
        log.error("startup failed", extra={"dependency": exc.dependency, "error": repr(exc.cause)})
        return 1
    tune_gc()
    server_cfg = config["server"]
    app = make_app(config)
    server = app.listen(server_cfg["port"], address=server_cfg["host"], max_body_size=server_cfg["max_body_bytes"])
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    log.info("listening", extra={"host": server_cfg["host"], "port": server_cfg["port"]})
    await stopping.wait()

    log.info("stopping: no new connections, draining requests")
    server.stop()
    await drain(server_cfg["shutdown_timeout_s"])
    await asyncio.wait_for(server.close_all_connections(), server_cfg["shutdown_timeout_s"])
    await shutdown()
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {"server": {"port": args.port}} if args.port is not None else None
    try:
        config = config_module.load(args.config, overrides=overrides)
    except config_module.ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return 2
    logger = LoggerManager.start(config["logging"])
    try:
        return asyncio.run(serve(config))
    finally:
        logger.close()


if __name__ == "__main__":
    sys.exit(main())
