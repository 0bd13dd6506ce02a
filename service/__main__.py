"""``python -m service [--config PATH] [--port N] [--role all|api|relay|analytics]``: run the service.

``python -m service keys create --role admin|user [--user-id ID] | list | revoke ID``:
manage API keys. ``create`` prints only the new key on stdout (it is shown nowhere
else, ever); ``list`` and ``revoke`` print one JSON object per key.

``python -m service shards map | move LOGICAL --to PHYSICAL [--grace-s S]``: the shard
map (which physical shard holds each range of logical shards), and moving one logical
shard while the service runs (domain/moves.py). A move runs as the migration user
(``mysql.migrate_user``): it deletes the moved rows, history and audit rows included,
which the service's own user may not.

``python -m service migrate``: apply the migrations to every shard, as the migration user,
and print what each shard applied. The service does the same at start when
``mysql.migrate_user`` is set; with it empty, the service waits for this command.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable

import pymysql
import tornado.httpserver

from domain import audit, auth, moves
from domain.auth import Authenticator
from domain.errors import APIError
from handlers.base import Traffic
from managers import config as config_module
from managers import metrics
from managers.config import Config
from managers.health import HealthMonitor
from managers.logger import LoggerManager
from managers.mysql import Database, MySQLManager, as_owner, shard_configs
from managers.shards import ShardMapError, compact, parse_ranges
from service.app import make_app, make_ops_app, server_options
from service.lifecycle import ROLES, Lifecycle
from service.supervisor import Supervisor

log = logging.getLogger("singleton.service")
COMMAND_WAIT_S = 30  # how long the keys and shards commands wait for MariaDB


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m service", description="users-and-payments service")
    parser.add_argument("--config", help="path to config.yaml (default: the repository's)")
    parser.add_argument("--port", type=int, help="listen port (overrides server.port)")
    parser.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)  # a worker of the supervisor's
    parser.add_argument("--join-when-ready", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--role",
        choices=ROLES,
        default="all",
        help="what this process runs (default all; see service/lifecycle.py ROLES)",
    )
    commands = parser.add_subparsers(dest="command")
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create a key and print it (shown this once only)")
    create.add_argument("--role", choices=auth.ROLES, required=True)
    create.add_argument("--user-id", help="the user a user key is bound to")
    keys.add_parser("list", help="every key, without its secret")
    revoke = keys.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    shards = commands.add_parser("shards", help="the shard map; move a logical shard")
    shard_actions = shards.add_subparsers(dest="action", required=True)
    shard_actions.add_parser("map", help="each physical shard and the logical shards it holds")
    move = shard_actions.add_parser("move", help="move logical shards to another physical shard, live")
    move.add_argument("logical", help='the logical shards, one at a time: "7", or "0-63, 100"')
    move.add_argument("--to", required=True, help="the physical shard's name (config's shards.physical)")
    move.add_argument(
        "--grace-s",
        type=float,
        help="wait this long after the switch before deleting the old copies (default: 3 map refreshes)",
    )
    commands.add_parser("migrate", help="apply the migrations to every shard, as mysql.migrate_user")
    return parser.parse_args(argv)


async def mysql_command(config: Config, command: Callable[[MySQLManager], Awaitable[None]]) -> int:
    """Run a command that needs MariaDB only (the ``keys`` and ``shards`` commands; no port
    opened) once every shard is reached and migrated: its failure is one line on stderr and
    the exit code."""
    mysql = MySQLManager.start(config)
    try:
        await mysql.wait_ready(COMMAND_WAIT_S)
        await command(mysql)
    except TimeoutError:
        print(f"cannot reach every mysql shard within {COMMAND_WAIT_S} s", file=sys.stderr)
        return 1
    except APIError as exc:
        print(f"{exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except ShardMapError as exc:
        print(f"invalid logical shards: {exc}", file=sys.stderr)
        return 2
    finally:
        await mysql.close()
    return 0


async def migrate(config: Config) -> int:
    """Every shard migrated, one after the other; one JSON line per shard: what it applied."""
    configs, _, _ = shard_configs(config)
    for name, cfg in configs.items():
        database = Database(name, cfg, config["reconnect"])
        try:
            applied = await asyncio.wait_for(database.migrate(), COMMAND_WAIT_S)
        except (RuntimeError, OSError, pymysql.err.MySQLError) as exc:  # TimeoutError is an OSError
            print(f"shard {name}: migration failed: {exc!r}", file=sys.stderr)
            return 1
        print(json.dumps({"shard": name, "applied": applied}), flush=True)
    return 0


async def manage_keys(mysql: MySQLManager, args: argparse.Namespace) -> None:
    if args.action == "create":
        created = await auth.create_key(args.role, args.user_id, audit.operator("keys-create"))
        print(created["key"])
    elif args.action == "list":
        for key in await auth.list_keys():
            print(json.dumps(key))
    else:
        print(json.dumps(await auth.revoke_key(args.key_id, audit.operator("keys-revoke"))))


async def manage_shards(mysql: MySQLManager, args: argparse.Namespace) -> None:
    if mysql.sharded:
        await mysql.refresh_map()
    if args.action == "map":
        for name in mysql.databases:
            print(json.dumps({"physical": name, "logical": compact(mysql.shard_map.held_by(name))}))
        return
    grace_s = args.grace_s if args.grace_s is not None else 3 * mysql.map_refresh_s
    for logical in parse_ranges(args.logical):
        if mysql.for_logical(logical).name == args.to:
            continue  # there already: a range half moved before is simply run again
        moved = await moves.move(logical, args.to, grace_s, say=lambda line: print(line, file=sys.stderr))
        print(json.dumps(moved._asdict()), flush=True)


async def drain(traffic: Traffic, timeout_s: float) -> None:
    """Wait, up to a deadline, for requests already being handled to finish; meanwhile
    every response asks its client to close the connection."""
    traffic.draining = True
    deadline = time.monotonic() + timeout_s
    while traffic.in_flight > 0 and time.monotonic() < deadline:  # noqa: ASYNC110 (a counter, not an event)
        await asyncio.sleep(0.05)
    if traffic.in_flight:
        log.warning("shutdown deadline passed with requests in flight", extra={"in_flight": traffic.in_flight})


# Fewer, cheaper collections: the default first threshold (700) ran a young-generation
# pass every few requests, and full passes over 10,000 WebSocket connections took up
# to 0.86 s. Measured in docs/BENCHMARKS.md (GET user +17%, fan-out p99 4.4 s -> 0.5-1 s).
# The second threshold bounds generation 1, which holds what survived the last young
# passes: at 20 it grew to 930,000 objects when 10,000 sockets opened at once (a
# reconnect storm) and its next pass stopped the loop for 330 ms; at 2 it holds at most
# 150,000 (docs/PROFILING.md, the event path).
GC_THRESHOLDS = (50_000, 2, 100)


def tune_gc() -> None:
    """Move what startup allocated out of the collector's sight, then raise the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    metrics.time_gc()  # each pass's pause, in /metrics (singleton_gc_pause_seconds)


async def serve(
    config: Config,
    role: str,
    listen_fd: int | None = None,
    join_when_ready: bool = False,
    check_keys: bool = True,
) -> int:
    """One worker: the managers, the API on the port (or on the supervisor's socket), the ops listener.

    A worker that replaces another (``join_when_ready``) takes connections from the
    shared socket only once it is ready: until then the others serve them.
    ``check_keys=False`` is the bench's switch alone (bench/without.py).
    """
    lifecycle = Lifecycle(config, role)
    await lifecycle.start()
    if not check_keys:
        Authenticator.instance().disable_for_bench()
    tune_gc()
    server_cfg, metrics_cfg = config["server"], config["metrics"]
    app = make_app(config, role=role)
    server = tornado.httpserver.HTTPServer(app, **server_options(config))
    metrics_server = make_ops_app().listen(metrics_cfg["port"], address=metrics_cfg["host"])
    if listen_fd is None:
        server.listen(server_cfg["port"], address=server_cfg["host"])
    else:
        if join_when_ready:
            await HealthMonitor.instance().wait_ready()
        server.add_sockets([socket.socket(fileno=listen_fd)])
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    if listen_fd is not None:  # a worker: restarts are the supervisor's business
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log.info(
        "listening",
        extra={
            "host": server_cfg["host"],
            "port": server_cfg["port"],
            "metrics_port": metrics_cfg["port"],
            "role": role,
        },
    )
    await stopping.wait()

    log.info("stopping: no new connections, draining requests")
    server.stop()
    metrics_server.stop()
    await drain(app.settings["traffic"], server_cfg["shutdown_timeout_s"])
    await asyncio.wait_for(server.close_all_connections(), server_cfg["shutdown_timeout_s"])
    await lifecycle.stop()
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None, check_keys: bool = True) -> int:
    """``python -m service``. ``check_keys=False`` serves the API without checking keys,
    every caller an admin: only the bench's own entry point passes it (bench/without.py),
    so no configuration or environment of a normal start can."""
    args = parse_args(argv)
    overrides = {"server": {"port": args.port}} if args.port is not None else None
    try:
        config = config_module.load(args.config, overrides=overrides)
    except config_module.ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=loop_factory(config["server"]["event_loop"])) as runner:
        return runner.run(run(config, args, check_keys))


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """``server.event_loop``: uvloop (libuv's loop: GET user +N%, POST payments +N% in one
    bench, docs/BENCHMARKS.md), or asyncio's own, the fallback should uvloop misbehave."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


async def run(config: Config, args: argparse.Namespace, check_keys: bool = True) -> int:
    if args.command in ("keys", "shards", "migrate"):  # stdout is the command's answer: logs go to stderr
        logger = LoggerManager.start({**config["logging"], "file": "", "level": "WARNING"}, stream=sys.stderr)
    else:
        logger = LoggerManager.start(config["logging"])
    try:
        if args.command == "migrate":
            return await migrate(config)
        if args.command == "shards" and args.action == "move":  # it deletes history and audit rows
            try:
                config = as_owner(config)
            except RuntimeError as exc:
                print(str(exc), file=sys.stderr)
                return 2
        if args.command in ("keys", "shards"):
            manage = manage_keys if args.command == "keys" else manage_shards
            return await mysql_command(config, lambda mysql: manage(mysql, args))
        if config["server"]["processes"] > 1 and args.listen_fd is None:
            if not check_keys:  # its workers would be `python -m service`, checking keys
                print("the bench's switch runs one process: server.processes must be 1", file=sys.stderr)
                return 2
            passed_on = [*(["--config", args.config] if args.config else []), "--role", args.role]
            return await Supervisor(config, passed_on).run()
        return await serve(config, args.role, args.listen_fd, args.join_when_ready, check_keys)
    finally:
        await logger.close()


if __name__ == "__main__":
    sys.exit(main())
