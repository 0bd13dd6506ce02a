"""The bench's surroundings: its settings, its own stores (found as the service finds them:
config.yaml, its ``SINGLETON_*`` overrides and ``*_file`` secrets), the processes it starts, and
what /proc says about every process on the machine."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import json
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from managers import config as service_config
from managers.shards import logical_shard, new_id

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config.yaml"
WORK = REPO / "reports" / "bench"  # git-ignored scratch: logs, raw wrk output, id lists
DOCS_BENCH = REPO / "docs" / "bench"
PY = str(REPO / ".venv/bin/python") if (REPO / ".venv/bin/python").exists() else sys.executable
HOST = "127.0.0.1"
MYSQL_DATABASE = "singleton_test_bench"  # the devstack user may only create singleton_test%
REDIS_DB = 14
MONGO_DATABASE = "singleton_bench"
KAFKA_TOPIC = "singleton-bench"
ANALYTICS_GROUP = f"singleton-bench-analytics-{int(time.time())}"  # a fresh group each run
SERVICES = {"mariadb": "MariaDB", "redis": "Redis", "kafka": "Kafka", "postgres": "PostgreSQL", "ferretdb": "FerretDB"}
CODE = ("service", "handlers", "managers", "domain", "migrations", "bench")  # "+dirty" if changed


@dataclass
class Settings:
    """Every knob; each from BENCH_<NAME> if set (BENCH_DURATION_S=5; a tuple: 25,50,100)."""

    stages: str = "http,ws"
    phases: str = "shipped,costs"  # of the http stage
    cost_rounds: int = 5  # of the costs phase, the order rotated each round
    duration_s: int = 8  # a wrk run
    profile_s: int = 4  # a run under py-spy
    connections: int = 50
    users: int = 10000
    list_users: int = 100  # users with payments (25 each): the list pages
    payments_per_user: int = 25
    warmup_s: int = 3
    drain_timeout_s: float = 60.0
    ws_sockets: int = 10000
    ws_shared_users: int = 100
    ws_rates_single: tuple = (25.0, 50.0, 100.0, 200.0, 400.0, 600.0, 800.0)  # payments/s
    ws_rates_shared: tuple = (25.0, 50.0, 100.0, 150.0, 200.0, 250.0, 300.0, 400.0)
    ws_step_s: float = 5.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if raw := os.environ.get(f"BENCH_{name.upper()}"):
                typed = tuple(float(x) for x in raw.split(",")) if isinstance(value, tuple) else type(value)(raw)
                setattr(self, name, typed)

    def stage(self, name: str) -> bool:
        return name in self.stages.split(",")

    def phase(self, name: str) -> bool:
        return name in self.phases.split(",")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- the stores --------------------------------------------------------------------------------
@functools.cache
def config() -> dict:
    """The configuration the service would read here (``make services`` makes the dev secrets)."""
    if "shards" in (loaded := service_config.load(CONFIG)):
        raise SystemExit(f"{CONFIG} has shards: the bench measures one MariaDB server")
    return loaded


def redis_url() -> str:
    return urllib.parse.urlsplit(config()["redis"]["url"])._replace(path=f"/{REDIS_DB}").geturl()


def mysql_query(sql: str, args: tuple = (), owner: bool = False, many: list | None = None, db=MYSQL_DATABASE):
    """``sql``'s rows (or ``executemany`` over ``many``), as the service's user or with ``owner``
    as the migration user (for what the service may not do)."""
    import pymysql

    c, who = config()["mysql"], ("migrate_user", "migrate_password") if owner else ("user", "password")
    login = {"host": c["host"], "port": c["port"], "user": c[who[0]], "password": c[who[1]], "database": db}
    # The service writes UTC_TIMESTAMP(): in UTC, UNIX_TIMESTAMP() reads it back as written.
    conn = pymysql.connect(**login, autocommit=True, init_command="SET time_zone = '+00:00'")
    with contextlib.closing(conn), conn.cursor() as cur:
        if many is None:
            cur.execute(sql, args)
        else:
            cur.executemany(sql, many)
        return list(cur.fetchall())


BIG_USER_PAYMENTS = 100_000  # one minute apart from 2030-01-01: the filter's window holds 28 days of them
BIG_USER_WINDOW = "&created_gte=2030-02-01T00:00:00Z&created_lt=2030-03-01T00:00:00Z"


def big_user(user_id: str, n: int = BIG_USER_PAYMENTS) -> str:
    """``n`` payments for ``user_id`` written straight to MariaDB, a quarter of each of four statuses."""
    shard, start = logical_shard(user_id), datetime.datetime(2030, 1, 1)
    statuses = ("pending", "processing", "completed", "failed")
    rows = [
        (new_id(shard), user_id, 1000 + i % 9000, "USD", "bench", statuses[i % 4], 2 if i % 4 else 1)
        + (start + datetime.timedelta(minutes=i),) * 2
        for i in range(n)
    ]
    columns = "id, user_id, amount_minor, currency, description, status, version, created_at, updated_at"
    for k in range(0, n, 5000):  # plain values: pymysql sends each batch as one multi-row INSERT
        mysql_query(f"INSERT INTO payments ({columns}) VALUES ({', '.join(['%s'] * 9)})", many=rows[k : k + 5000])
    log(f"seeded {n:,} payments for one user")
    return user_id


def floor_tables() -> None:
    """The POST and PUT floors' tables, of the service's tables' shape: ``floor_payments`` a copy
    of ``payments`` as it is now (the PUT floor locks and updates the same ids), ``floor_outbox``."""
    for sql in (
        "DROP TABLE IF EXISTS floor_payments",
        "CREATE TABLE floor_payments LIKE payments",  # without the user's foreign key
        "INSERT INTO floor_payments SELECT * FROM payments",
        "CREATE TABLE IF NOT EXISTS floor_outbox LIKE outbox",
        "GRANT SELECT, INSERT, UPDATE ON floor_payments TO singleton_app",
        "GRANT SELECT, INSERT ON floor_outbox TO singleton_app",
    ):
        mysql_query(sql, owner=True)


def reset_stores() -> None:
    """A clean slate: the bench's MariaDB database, Redis db, Mongo database and Kafka topic."""
    import pymongo
    import redis

    mysql_query(f"DROP DATABASE IF EXISTS {MYSQL_DATABASE}", owner=True, db=None)
    mysql_query(f"CREATE DATABASE {MYSQL_DATABASE} CHARACTER SET utf8mb4", owner=True, db=None)
    redis.Redis.from_url(redis_url()).flushdb()
    with contextlib.closing(pymongo.MongoClient(config()["mongodb"]["uri"])) as mongo:
        mongo.drop_database(MONGO_DATABASE)
    asyncio.run(_recreate_topic())


async def _recreate_topic() -> None:
    """The bench topic deleted and created anew with as many partitions as the service's topic."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError

    admin = AIOKafkaAdminClient(bootstrap_servers=config()["kafka"]["bootstrap_servers"])
    await admin.start()
    try:
        [shape] = await admin.describe_topics([config()["kafka"]["topic"]])
        with contextlib.suppress(UnknownTopicOrPartitionError):
            await admin.delete_topics([KAFKA_TOPIC])
        for _ in range(120):  # deletion completes in the background: retry until the name is free
            with contextlib.suppress(TopicAlreadyExistsError):
                return await admin.create_topics([NewTopic(KAFKA_TOPIC, len(shape["partitions"]), 1)])
            await asyncio.sleep(0.5)
        raise RuntimeError(f"topic {KAFKA_TOPIC} could not be created again")
    finally:
        await admin.close()


# -- processes ---------------------------------------------------------------------------------
def service_env(overrides: dict[str, str]) -> dict[str, str]:
    """The shipped configuration in the bench's stores, with limits no bench load reaches (the
    limiter still runs; every fan-out socket comes from one address), ``overrides`` on top."""
    settings = {
        "mysql": {"database": MYSQL_DATABASE},
        "redis": {"url": redis_url()},
        "mongodb": {"database": MONGO_DATABASE},
        "kafka": {"topic": KAFKA_TOPIC, "analytics_group": ANALYTICS_GROUP},
        "logging": {"file": str(WORK / "service-app.log")},
        "auth": {"bootstrap_admin_key_file": ""},
        "metrics": {"port": 0},  # a free port for each process
        # The address's bucket too: a key this process has no verdict for takes one of its tokens.
        "rate_limit": {f"{k}_{n}": 1_000_000_000 for k in ("read", "write", "anonymous") for n in ("per_s", "burst")},
        "websocket": {n: 1_000_000 for n in ("max_connections", "max_per_user", "max_per_ip")},
    }
    return service_config.as_env(settings) | overrides


class Proc:
    """A child process in its own process group, its output in reports/bench/<name>.log."""

    def __init__(self, name: str, argv: list[str], env: dict | None = None):
        WORK.mkdir(parents=True, exist_ok=True)
        self.name, self.log_path = name, WORK / f"{name}.log"
        with open(self.log_path, "w") as out:
            self.popen = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=out, start_new_session=True)
        self.pid = self.popen.pid

    def stop(self) -> None:
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 5)):
            if self.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(wait_s)

    def wait_http(self, url: str, timeout_s: float = 90) -> Proc:
        """Until ``url`` answers 200."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.popen.poll() is None:
            with contextlib.suppress(OSError):  # refused, or an HTTP error (503 until ready)
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return self
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} not ready at {url}; see {self.log_path}")


def start_service(name: str, port: int, overrides: dict[str, str], role: str = "all", module: str = "service") -> Proc:
    """``python -m service --port N --role R`` (or the bench's own entry point ``module``, e.g.
    ``bench.without auth``) in the shipped configuration plus ``overrides``; back once ready."""
    argv = [PY, "-m", *module.split(), "--config", str(CONFIG), "--port", str(port), "--role", role]
    proc = Proc("service-" + "".join(filter(str.isalnum, name)), argv, service_env(overrides))
    return proc.wait_http(f"http://{HOST}:{port}/health/ready")


def start_floor(kind: str, port: int, keys: Path | None = None) -> Proc:
    """``python -m bench.floors KIND PORT`` on the service's event loop, with the bench's stores and
    the service's pool sizes (``bare``: the baseline, no store)."""
    c = config()["mysql"]
    mysql = {"host": c["host"], "port": c["port"], "user": c["user"], "password": c["password"]}
    mysql |= {"db": MYSQL_DATABASE, "minsize": c["pool_min"], "maxsize": c["pool_max"]}
    stores = {"loop": config()["server"]["event_loop"], "redis": redis_url(), "mysql": mysql, "keys": str(keys)}
    argv = [PY, "-m", "bench.floors", kind, str(port)]
    proc = Proc(f"floor-{kind}", argv, os.environ | {"BENCH_FLOOR": json.dumps(stores)})
    return proc.wait_http(f"http://{HOST}:{port}/")


def create_admin_key() -> str:
    """``python -m service keys create --role admin`` against the bench's database."""
    argv = [PY, "-m", "service", "--config", str(CONFIG), "keys", "create", "--role", "admin"]
    made = subprocess.run(argv, cwd=REPO, env=service_env({}), check=True, capture_output=True, text=True)
    return made.stdout.strip()


# -- /proc ---------------------------------------------------------------------------------------
def processes() -> dict[int, tuple[str, int, float]]:
    """Every process: command name, parent pid, CPU seconds so far (user + system)."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for entry in os.scandir("/proc"):
        with contextlib.suppress(OSError, ValueError):
            text = Path(entry.path, "stat").read_text()
            fields = text.rsplit(")", 1)[1].split()
            comm, cpu = text[text.index("(") + 1 : text.rindex(")")], (int(fields[11]) + int(fields[12])) / tick
            out[int(entry.name)] = (comm, int(fields[1]), cpu)
    return out


def own_services() -> dict[int, str]:
    """The bench's own backing services by pid (devstack's pid files), capitalised so that other
    work on the machine stands apart."""
    run, out = Path(os.environ.get("DEVSTACK_DIR") or REPO / ".devstack") / "run", {}
    with contextlib.suppress(OSError):
        for entry in os.scandir(run):
            if name := SERVICES.get(entry.name.removesuffix(".pid")):
                with contextlib.suppress(OSError, ValueError):
                    out[int(Path(entry.path).read_text())] = name
    return out


def cpu_split(before: dict, after: dict, seconds: float, names: dict[int, str], top: int = 8) -> dict[str, float]:
    """CPU between two ``processes()`` snapshots in cores by name (``names`` and the bench's own
    services label pids and their children), largest first: every named one, and the ``top``
    largest of the others (other work on the machine), the rest summed as "other"."""
    use: dict[str, float] = {}
    names = own_services() | names
    for pid, (comm, ppid, cpu) in after.items():
        if (used := cpu - before.get(pid, (comm, ppid, 0.0))[2]) > 0:
            label = names.get(pid) or names.get(ppid) or comm
            use[label] = use.get(label, 0.0) + used / seconds
    ranked = sorted(use.items(), key=lambda kv: -kv[1])
    strangers = [k for k, _ in ranked if k not in set(names.values())]
    shown = {k: round(v, 2) for k, v in ranked if k not in strangers or k in strangers[:top]}
    rest = sum(v for k, v in ranked if k not in shown)
    return shown | ({"other": round(rest, 2)} if rest >= 0.01 else {})


def machine() -> dict:
    def first(path: str, prefix: str) -> str:
        return next(x.split(":", 1)[1].strip() for x in Path(path).read_text().splitlines() if x.startswith(prefix))

    def run(*argv: str) -> str:
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True).stdout.strip()

    dirty = "+dirty" if run("git", "status", "--porcelain", *CODE) else ""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": first("/proc/cpuinfo", "model name"),
        "mem_total_gib": round(int(first("/proc/meminfo", "MemTotal").split()[0]) / 1024**2, 1),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "wrk": run("wrk", "-v").split()[1],
        "nofile_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "commit": run("git", "rev-parse", "--short", "HEAD") + dirty,
        "event_loop": config()["server"]["event_loop"],
    }


def percentile(ordered: list[float], q: float) -> float | None:
    """The ``q``-th percentile of sorted values (nearest rank); None for none."""
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else None
