"""``python -m service [--config PATH] [--port N]``: run the service.

``python -m service keys create --role admin|user [--user-id ID] | list | revoke ID``:
manage API keys. ``create`` prints only the new key on stdout (it is shown nowhere
else, ever); ``list`` and ``revoke`` print one JSON object per key.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import signal
import sys
import time

from domain import auth
from domain.errors import APIError
from handlers.base import BaseHandler
from managers import config as config_module
from managers.base import DependencyUnavailable
from managers.logger import LoggerManager
from managers.mysql import MySQLManager
from service.app import make_app, make_metrics_app, server_options
from service.lifecycle import shutdown, startup

log = logging.getLogger("singleton.service")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m service", description="users-and-payments service")
    parser.add_argument("--config", help="path to config.yaml (default: the repository's)")
    parser.add_argument("--port", type=int, help="listen port (overrides server.port)")
    commands = parser.add_subparsers(dest="command")
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create a key and print it (shown this once only)")
    create.add_argument("--role", choices=auth.ROLES, required=True)
    create.add_argument("--user-id", help="the user a user key is bound to")
    keys.add_parser("list", help="every key, without its secret")
    revoke = keys.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    return parser.parse_args(argv)


async def manage_keys(config: dict, args: argparse.Namespace) -> int:
    """The ``keys`` commands: MariaDB only, no port opened."""
    try:
        mysql = await MySQLManager.start(config["mysql"])
    except DependencyUnavailable as exc:
        print(f"cannot reach {exc.dependency}: {exc.cause!r}", file=sys.stderr)
        return 1
    try:
        await mysql.migrate()
        if args.action == "create":
            created = await auth.create_key(args.role, args.user_id)
            print(created["key"])
        elif args.action == "list":
            for key in await auth.list_keys():
                print(json.dumps(key))
        else:
            print(json.dumps(await auth.revoke_key(args.key_id)))
    except APIError as exc:
        print(f"{exc.code}: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await mysql.close()
    return 0


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
    server_cfg, metrics_cfg = config["server"], config["metrics"]
    server = make_app(config).listen(server_cfg["port"], address=server_cfg["host"], **server_options(config))
    metrics_server = make_metrics_app().listen(metrics_cfg["port"], address=metrics_cfg["host"])
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    log.info(
        "listening",
        extra={"host": server_cfg["host"], "port": server_cfg["port"], "metrics_port": metrics_cfg["port"]},
    )
    await stopping.wait()

    log.info("stopping: no new connections, draining requests")
    server.stop()
    metrics_server.stop()
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
    if args.command == "keys":  # stdout is the command's answer: logs go to stderr
        logger = LoggerManager.start({**config["logging"], "file": "", "level": "WARNING"}, stream=sys.stderr)
        run = manage_keys(config, args)
    else:
        logger = LoggerManager.start(config["logging"])
        run = serve(config)
    try:
        return asyncio.run(run)
    finally:
        logger.close()


if __name__ == "__main__":
    sys.exit(main())
