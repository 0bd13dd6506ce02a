"""The chaos run's own stack: backing services in ``.devstack-chaos/`` on a block of
ports found free at the start, its own database, topic, consumer group and Mongo
database, and the faults it injects.

Nothing here reaches the everyday stack (``make services``): devstack runs with this
stack's DEVSTACK_DIR and ports, and a kill goes only to a pid that this stack's
devstack recorded, checked against the start time it recorded with it. The Kafka
jars and the FerretDB build are shared with the everyday stack (its ``cache/``, or
``$DEVSTACK_CACHE_DIR`` when set).

``Stack`` is what the rest of the run asks of a stack (the service's address and
environment, the topic, the shards' rows, kill and up); chaos/cluster.py's
``ClusterStack`` is the same for a copy of the cluster stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from managers import config as service_config

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "reports" / "chaos"  # git-ignored: logs and the raw results (a stack's own: Stack.work)
PY = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
HOST = "127.0.0.1"

DATABASE = "singleton_test_chaos"  # the devstack user may create only singleton_test% databases
TOPIC = "singleton-chaos"
PARTITIONS = 3
ANALYTICS_GROUP = "singleton-analytics-chaos"
MONGO_DATABASE = "singleton_chaos"
PORT_NAMES = ("mysql", "redis", "kafka", "kafka_controller", "mongo", "postgres", "service")
METRICS_PORTS = 4  # a supervisor of 2 workers uses metrics.port + 0..3 (service/supervisor.py)
DEVSTACK_TIMEOUT_S = 240  # one `services.sh up|down`, Kafka's log recovery included
# What each server is called in devstack, and which ones one fault takes down together.
SERVERS = {"mariadb": ("mariadb",), "redis": ("redis",), "kafka": ("kafka",), "ferretdb": ("ferretdb", "postgres")}
SINGLE_SHARD = "main"  # the one MariaDB of the everyday stack, as managers/shards.py names it


def chaos_settings(secrets: Path, metrics_port: int) -> dict:
    """What every chaos run changes in the service's configuration, whatever the stack:
    auth on with an admin key of the run's own (none written to a file), rate limits far
    above the load (the limiter still makes its Redis round trip), /metrics on a port of
    its own, JSON logs on stdout."""
    return {
        "auth": {"token_secret_file": str(secrets / "ws_token.secret"), "bootstrap_admin_key_file": ""},
        "metrics": {"port": metrics_port},
        "logging": {"file": "", "level": "INFO"},
        "rate_limit": {f"{kind}_{n}": 100000 for kind in ("read", "write", "anonymous") for n in ("per_s", "burst")},
    }


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def port_free(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no owner
        try:
            s.bind((host, port))
        except OSError:
            return False
    with socket.socket() as s:  # and nobody listens on another address of it
        return s.connect_ex((host, port)) != 0


def free_block(base: int, size: int, step: int = 100, tries: int = 50) -> int:
    """The first ``base + k * step`` whose ``size`` ports are all free: below the
    ephemeral range, so a client's outgoing port never lands on a stopped server's."""
    for k in range(tries):
        start = base + k * step
        if all(port_free(start + i) for i in range(size)):
            return start
    raise RuntimeError(f"no {size} free ports from {base} in {tries} steps of {step}")


def _proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


class Stack:
    dir_variable, default_dir = "CHAOS_DEVSTACK_DIR", ".devstack-chaos"
    devstack_flags: tuple[str, ...] = ()  # services.sh's stack option
    topic, partitions, analytics_group = TOPIC, PARTITIONS, ANALYTICS_GROUP
    host = HOST  # where the service listens
    warm_up_s = 0.0  # at most this long of writes before the first scenario (Run.warm_up); none here

    def __init__(self) -> None:
        self.dir = Path(os.environ.get(self.dir_variable) or REPO / self.default_dir).resolve()
        everyday = Path(os.environ.get("DEVSTACK_DIR") or REPO / ".devstack").resolve()
        if self.dir in (everyday, (REPO / ".devstack-cluster").resolve()):
            raise SystemExit(f"the chaos stack cannot live in {self.dir}, another stack's: it kills what it runs")
        self.cache = Path(os.environ.get("DEVSTACK_CACHE_DIR") or everyday / "cache").resolve()
        self.work = WORK
        self.ports = self.choose_ports()
        self.work.mkdir(parents=True, exist_ok=True)

    def choose_ports(self) -> dict[str, int]:
        base = free_block(int(os.environ.get("CHAOS_PORT_BASE") or 23300), len(PORT_NAMES) + METRICS_PORTS)
        ports = {name: base + i for i, name in enumerate(PORT_NAMES)}
        ports["metrics"] = base + len(PORT_NAMES)
        return ports

    @property
    def service_url(self) -> str:
        return f"http://{self.host}:{self.ports['service']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports['metrics']}/metrics"

    def service_args(self) -> list[str]:
        """``python -m service`` options before its command (a config file)."""
        return []

    # -- environments --------------------------------------------------------------------
    def devstack_env(self) -> dict[str, str]:
        """The caller's environment without its SINGLETON_* settings, pointed at this stack."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SINGLETON_")}
        p = self.ports
        env.update(
            DEVSTACK_DIR=str(self.dir),
            DEVSTACK_CACHE_DIR=str(self.cache),
            MYSQL_PORT=str(p["mysql"]),
            REDIS_PORT=str(p["redis"]),
            KAFKA_PORT=str(p["kafka"]),
            KAFKA_CONTROLLER_PORT=str(p["kafka_controller"]),
            MONGO_PORT=str(p["mongo"]),
            POSTGRES_PORT=str(p["postgres"]),
        )
        return env

    def service_env(self, **extra: str) -> dict[str, str]:
        """``python -m service`` on this stack: auth on, limits far above the load (the
        limiter still runs), its own stores, JSON logs on stdout."""
        p, secrets = self.ports, self.dir / "secrets"
        settings = {
            "mysql": {
                "port": p["mysql"],
                "database": DATABASE,
                "password_file": str(secrets / "mysql.password"),
                "migrate_password_file": str(secrets / "mysql-migrate.password"),
            },
            "redis": {"url": f"redis://{HOST}:{p['redis']}/0"},
            "kafka": {"bootstrap_servers": self.kafka, "topic": TOPIC, "analytics_group": ANALYTICS_GROUP},
            "mongodb": {"uri": f"mongodb://{HOST}:{p['mongo']}/", "database": MONGO_DATABASE},
            **chaos_settings(secrets, p["metrics"]),
        }
        return service_config.as_env(settings, base=self.devstack_env()) | {"PYTHONUNBUFFERED": "1", **extra}

    @property
    def kafka(self) -> str:
        return f"{HOST}:{self.ports['kafka']}"

    @property
    def mysql_password(self) -> str:
        return (self.dir / "secrets" / "mysql.password").read_text().strip()

    # -- devstack ------------------------------------------------------------------------
    async def devstack(self, command: str, *services: str) -> float:
        """``devstack/services.sh COMMAND SERVICE...`` on this stack; seconds it took."""
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            "bash",
            str(REPO / "devstack" / "services.sh"),
            *self.devstack_flags,
            command,
            *services,
            cwd=REPO,
            env=self.devstack_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        what = " ".join(("services.sh", *self.devstack_flags, command, *services))
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), DEVSTACK_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            raise RuntimeError(f"{what}: no end in {DEVSTACK_TIMEOUT_S} s") from None
        finally:
            await proc.wait()
        with (self.work / "devstack.log").open("ab") as f:  # noqa: ASYNC230 (a few lines, once per call)
            f.write(out or b"")
        if proc.returncode != 0:
            raise RuntimeError(f"{what} failed ({proc.returncode}): see {self.work}/devstack.log")
        return time.monotonic() - started

    async def fresh(self) -> None:
        """Stop what an earlier run may have left, forget its data, start every server."""
        await self.devstack("down")
        shutil.rmtree(self.dir / "data", ignore_errors=True)
        shutil.rmtree(self.dir / "logs", ignore_errors=True)
        await self.devstack("up")

    def servers(self, fault: str) -> tuple[str, ...]:
        """The devstack servers a fault takes down together (a cluster stack's fault is one server)."""
        return SERVERS.get(fault, (fault,))

    async def up(self, fault: str) -> float:
        return await self.devstack("up", *self.servers(fault))

    def recorded_pid(self, server: str) -> int | None:
        """The pid devstack recorded for ``server`` if that very process still runs."""
        run = self.dir / "run"
        try:
            pid = int((run / f"{server}.pid").read_text())
            start = (run / f"{server}.start").read_text().strip()
        except (OSError, ValueError):
            return None
        stat = _proc_stat(pid)
        return pid if stat is not None and alive(pid) and stat[19] == start else None

    async def kill(self, fault: str) -> None:
        """SIGKILL the servers of ``fault``, each with its process group (PostgreSQL's
        backends die with their postmaster), and wait until they are gone."""
        pids = []
        for server in self.servers(fault):
            pid = self.recorded_pid(server)
            if pid is None:
                raise RuntimeError(f"{server}: no running process recorded by this stack's devstack")
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
            pids.append(pid)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in pids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{fault}: still alive 10 s after SIGKILL")
            await asyncio.sleep(0.05)

    async def down(self) -> None:
        await self.devstack("down")

    # -- where a user's rows are -----------------------------------------------------------
    @property
    def shards(self) -> tuple[str, ...]:
        return (SINGLE_SHARD,)

    def shard_of(self, user_id: str) -> str:
        """The physical shard that holds ``user_id``'s rows now."""
        return SINGLE_SHARD

    def query_shards(self, sql: str, args: tuple = ()) -> dict[str, list[tuple]]:
        """``sql`` on every physical shard: its rows by shard."""
        return {shard: self.mysql(sql, args, shard=shard) for shard in self.shards}

    # -- the run's stores ----------------------------------------------------------------
    def mysql(
        self,
        sql: str,
        args: tuple = (),
        database: str | None = DATABASE,
        shard: str = SINGLE_SHARD,
        owner: bool = False,
    ) -> list[tuple]:
        """``sql`` as the service's user (``owner``: as the migration user, which creates databases)."""
        import pymysql

        login = ("singleton_migrate", "mysql-migrate.password") if owner else ("singleton", "mysql.password")
        password = (self.dir / "secrets" / login[1]).read_text().strip()
        connect = dict(host=HOST, port=self.ports["mysql"], user=login[0], password=password)
        connect.update(database=database, connect_timeout=5, read_timeout=30, autocommit=True)
        with contextlib.closing(pymysql.connect(**connect)) as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    async def prepare(self) -> str:
        """The run's database and topic; returns an admin key made by ``keys create``."""
        self.mysql(f"CREATE DATABASE IF NOT EXISTS `{DATABASE}` CHARACTER SET utf8mb4", database=None, owner=True)
        await self.ensure_topic()
        return await self.admin_key()

    async def admin_key(self) -> str:
        """A new admin key, made by ``python -m service keys create`` on this stack."""
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-m",
            "service",
            *self.service_args(),
            "keys",
            "create",
            "--role",
            "admin",
            cwd=REPO,
            env=self.service_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        if proc.returncode != 0:
            raise RuntimeError(f"keys create failed: {err.decode()[-2000:]}")
        return out.decode().strip()

    async def ensure_topic(self, partitions: int = 3) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka, request_timeout_ms=10000)
        await asyncio.wait_for(admin.start(), 30)
        try:
            await asyncio.wait_for(admin.create_topics([NewTopic(TOPIC, partitions, 1)]), 30)
        except TopicAlreadyExistsError:
            pass
        finally:
            await asyncio.wait_for(admin.close(), 15)
