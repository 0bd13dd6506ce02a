"""The bench's surroundings: its settings, its own stores in the backing services, the
processes it starts, and what /proc says about every process on the machine. Where
the services are comes from the service's own configuration: config.yaml, or the file
``BENCH_CONFIG`` names (config.cluster.yaml for ``make bench-cluster``), with its
``SINGLETON_*`` overrides and ``*_file`` secrets. With a ``shards`` section the bench's
database is on every physical shard."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import json
import os
import re
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
from managers.mysql import shard_configs
from managers.shards import LOGICAL_SHARDS, logical_shard, new_id

REPO = Path(__file__).resolve().parent.parent
CONFIG = (REPO / os.environ.get("BENCH_CONFIG", "config.yaml")).resolve()  # what the bench and its services read
WORK = REPO / "reports" / "bench"  # git-ignored scratch: logs, raw wrk output
DOCS_BENCH = REPO / "docs" / "bench"
OUT = os.environ.get("BENCH_OUT", "")  # "cluster": results in docs/bench/cluster/, docs/BENCHMARKS-cluster.md
# (a path: "cluster/post" puts them in docs/bench/cluster/post/ and docs/BENCHMARKS-cluster-post.md)
DOCS_OUT = DOCS_BENCH / OUT
PY = str(REPO / ".venv/bin/python") if (REPO / ".venv/bin/python").exists() else sys.executable
HOST = "127.0.0.1"
MYSQL_DATABASE = "singleton_test_bench"  # the devstack user may only create singleton_test%
REDIS_DB = 14
MONGO_DATABASE = "singleton_bench"
KAFKA_TOPIC = "singleton-bench"
SERVICES = {"mariadb": "MariaDB", "redis": "Redis", "kafka": "Kafka", "postgres": "PostgreSQL", "ferretdb": "FerretDB"}
# devstack's pid files: run/kafka.pid, or a cluster stack's run/kafka-2.pid, run/mariadb-a.pid
PID_FILE = re.compile(rf"^({'|'.join(SERVICES)})(?:-(\w+))?\.pid$")
CODE = ("service", "handlers", "managers", "domain", "migrations", "bench")  # measured: "+dirty" if changed
ANALYTICS_GROUP = f"singleton-bench-analytics-{int(time.time())}"  # a fresh group each run


@dataclass
class Settings:
    """Every knob; each from BENCH_<NAME> if set (BENCH_DURATION_S=5; a tuple: 25,50,100)."""

    stages: str = "http,ws,analytics"
    phases: str = "shipped,pool,costs,processes,shards,tls"  # of the http stage (bench/__main__.py PHASES)
    shard_rounds: int = 3  # POST payments on 1 shard and on all, alternating (a sharded configuration)
    shards_apart: int = 1  # 1: one service at a time, started anew for each run; 0: both side by side
    duration_s: int = 10  # a wrk run
    connections: int = 50
    users: int = 10000
    list_users: int = 100  # users with payments (25 each): the list pages
    payments_per_user: int = 25
    warmup_s: int = 3
    drain_timeout_s: float = 60.0
    ws_sockets: int = 10000
    ws_shared_users: int = 100
    ws_rates_single: tuple = (25.0, 50.0, 100.0, 200.0, 400.0, 800.0)  # payments/s
    ws_rates_shared: tuple = (25.0, 50.0, 100.0, 150.0, 200.0, 250.0, 300.0, 400.0)
    ws_step_s: float = 5.0
    ws_most: int = 1  # 0: skip holding the most sockets the open-files limit allows (minutes)
    analytics_payments: int = 1_000_000

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


# -- backing services ------------------------------------------------------------------------
@functools.cache
def config() -> dict:
    """The configuration the service would read here (``make services`` makes the dev secrets)."""
    return service_config.load(CONFIG)


def redis_url() -> str:
    return urllib.parse.urlsplit(config()["redis"]["url"])._replace(path=f"/{REDIS_DB}").geturl()


def shards() -> dict[str, dict]:
    """Each physical shard's MariaDB settings, the home first (``main`` without a ``shards`` section)."""
    databases, home, _ = shard_configs(config())
    return {home: databases[home]} | {name: cfg for name, cfg in databases.items() if name != home}


def one_shard() -> dict[str, str]:
    """SINGLETON_* overrides for the layout of one physical shard: the home alone, on its own
    server, holding every logical shard (what a sharded configuration is compared with)."""
    cfg = config()["shards"]
    home = {**cfg["physical"][cfg["global"]], "logical": f"0-{LOGICAL_SHARDS - 1}"}
    return {"SINGLETON_SHARDS__PHYSICAL": json.dumps({cfg["global"]: home})}


def on_home(ids: list[str]) -> list[str]:
    """Those of the user (or payment) ``ids`` whose logical shard config's map puts on the home."""
    _, home, shard_map = shard_configs(config())
    return [i for i in ids if shard_map.physical(logical_shard(i)) == home]


def mysql_connect(database: str | None = MYSQL_DATABASE, shard: str | None = None, owner: bool = False):
    """A connection to ``shard``'s server (default: the home), in the bench's database, as the
    service's user (``owner``: as the migration user, for what the service may not do)."""
    import pymysql

    c = shards()[shard or next(iter(shards()))]
    login = {k: c[k] for k in ("host", "port", "user", "password")}
    if owner:
        login |= {"user": c["migrate_user"], "password": c["migrate_password"]}
    # The service writes UTC_TIMESTAMP(): in UTC, UNIX_TIMESTAMP() reads it back as written.
    return pymysql.connect(**login, database=database, autocommit=True, init_command="SET time_zone = '+00:00'")


BIG_USER_PAYMENTS = 100_000  # one minute apart from 2030-01-01: the filter's window holds 28 days of them
BIG_USER_WINDOW = "&created_gte=2030-02-01T00:00:00Z&created_lt=2030-03-01T00:00:00Z"


def big_user(user_id: str, n: int = BIG_USER_PAYMENTS) -> str:
    """``n`` payments for ``user_id``, written straight to its shard (a page reads rows, however
    they came), a quarter of each status of four; ids carrying the user's logical shard."""
    _, _, shard_map = shard_configs(config())
    shard = logical_shard(user_id)
    start, statuses = datetime.datetime(2030, 1, 1), ("pending", "processing", "completed", "failed")
    rows = [
        (new_id(shard), user_id, 1000 + i % 9000, "USD", "bench", statuses[i % 4], 2 if i % 4 else 1)
        + (start + datetime.timedelta(minutes=i),) * 2
        for i in range(n)
    ]
    with contextlib.closing(mysql_connect(shard=shard_map.physical(shard))) as conn, conn.cursor() as cur:
        for k in range(0, n, 5000):  # plain values: pymysql sends each batch as one multi-row INSERT
            cur.executemany(
                "INSERT INTO payments (id, user_id, amount_minor, currency, description, status, version,"
                " created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                rows[k : k + 5000],
            )
    log(f"seeded {n:,} payments for one user")
    return user_id


def mysql_query(sql: str, args: tuple = ()) -> list[tuple]:
    """``sql`` on every physical shard, the rows of all of them."""
    rows: list[tuple] = []
    for shard in shards():
        with contextlib.closing(mysql_connect(shard=shard)) as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            rows += cur.fetchall()
    return rows


def table_sizes() -> dict[str, dict[str, dict[str, int]]]:
    """Each physical shard's tables of the bench's database: rows (exact) and bytes of data and
    indexes (InnoDB's estimate), for how a layout splits the storage."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for shard in shards():
        with contextlib.closing(mysql_connect(shard=shard)) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT table_name, data_length, index_length FROM information_schema.tables WHERE table_schema = %s",
                (MYSQL_DATABASE,),
            )
            out[shard] = {}
            for name, data, index in cur.fetchall():
                cur.execute(f"SELECT COUNT(*) FROM `{name}`")
                out[shard][name] = {"rows": cur.fetchone()[0], "data_bytes": data, "index_bytes": index}
    return out


def redis_spread() -> dict[str, int]:
    """Keys on each Redis Cluster master (``{}`` on one server): how the keys hash over them."""
    import redis

    if not (nodes := config()["redis"].get("cluster_nodes")):
        return {}
    from redis.cluster import ClusterNode, RedisCluster

    startup = [ClusterNode(host, int(port)) for host, port in (node.rsplit(":", 1) for node in nodes)]
    with contextlib.closing(RedisCluster(startup_nodes=startup, socket_timeout=10)) as cluster:
        masters = [(node.host, node.port) for node in cluster.get_primaries()]
    out = {}
    for host, port in sorted(masters):
        with contextlib.closing(redis.Redis(host=host, port=port, socket_timeout=10)) as node:
            out[f"{host}:{port}"] = int(node.dbsize())
    return out


def reset_stores() -> None:
    """A clean slate: the bench's MySQL database, Redis db, Mongo dbs and Kafka topic."""
    import pymongo
    import redis

    for shard in shards():
        with contextlib.closing(mysql_connect(None, shard, owner=True)) as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {MYSQL_DATABASE}")
            cur.execute(f"CREATE DATABASE {MYSQL_DATABASE} CHARACTER SET utf8mb4")
    if nodes := config()["redis"].get("cluster_nodes"):  # Redis Cluster has db 0 only: the stack is the bench's
        from redis.cluster import ClusterNode, RedisCluster

        startup = [ClusterNode(host, int(port)) for host, port in (node.rsplit(":", 1) for node in nodes)]
        with contextlib.closing(RedisCluster(startup_nodes=startup, socket_timeout=10)) as cluster:
            cluster.flushdb(target_nodes=RedisCluster.PRIMARIES)
    else:
        redis.Redis.from_url(redis_url()).flushdb()
    with contextlib.closing(pymongo.MongoClient(config()["mongodb"]["uri"])) as mongo:
        for name in (MONGO_DATABASE, f"{MONGO_DATABASE}_analytics"):
            mongo.drop_database(name)
    asyncio.run(_recreate_topic())


async def _recreate_topic() -> None:
    """The bench topic deleted and created anew, so no event of an earlier run is left, in the
    shape of the service's own topic (``kafka.topic``): its partitions, replication factor and
    ``min.insync.replicas`` (3, 1 and the broker's default on the everyday stack; 12, 3 and 2
    on the cluster stack)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError

    admin = AIOKafkaAdminClient(bootstrap_servers=config()["kafka"]["bootstrap_servers"])
    await admin.start()
    try:
        shape = await _topic_shape(admin, config()["kafka"]["topic"])
        with contextlib.suppress(UnknownTopicOrPartitionError):
            await admin.delete_topics([KAFKA_TOPIC])
        for _ in range(120):  # deletion completes in the background: retry until the name is free
            with contextlib.suppress(TopicAlreadyExistsError):
                return await admin.create_topics([NewTopic(KAFKA_TOPIC, *shape[:2], topic_configs=shape[2])])
            await asyncio.sleep(0.5)
        raise RuntimeError(f"topic {KAFKA_TOPIC} could not be created again")
    finally:
        await admin.close()


async def _topic_shape(admin, topic: str) -> tuple[int, int, dict[str, str]]:
    """``topic``'s partition count, replication factor and ``min.insync.replicas`` if set on it."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    [described] = await admin.describe_topics([topic])
    if described["error_code"] or not described["partitions"]:
        raise RuntimeError(f"topic {topic} (the service's) cannot be described: error {described['error_code']}")
    partitions = described["partitions"]
    [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    entries = response.resources[0][4]  # (name, value, read_only, source, sensitive, synonyms)
    min_isr = {name: value for name, value, _, source, *_ in entries if name == "min.insync.replicas" and source == 1}
    return len(partitions), len(partitions[0]["replicas"]), min_isr


# -- processes ---------------------------------------------------------------------------------
def service_env(overrides: dict[str, str]) -> dict[str, str]:
    """The shipped configuration in the bench's stores, with limits no bench load reaches (the
    limiter still runs; every fan-out socket comes from one address); ``overrides`` are
    SINGLETON_* variables on top."""
    settings = {
        "mysql": {"database": MYSQL_DATABASE},
        "redis": {"url": redis_url()},
        "mongodb": {"database": MONGO_DATABASE},
        "kafka": {"topic": KAFKA_TOPIC, "analytics_group": ANALYTICS_GROUP},
        "logging": {"file": str(WORK / "service-app.log")},
        "auth": {"bootstrap_admin_key_file": ""},
        "metrics": {"port": 0},  # a free port for each process
        # The address's bucket too: a key this process has no verdict for takes one of its tokens.
        "rate_limit": {
            f"{kind}_{n}": 1_000_000_000 for kind in ("read", "write", "anonymous") for n in ("per_s", "burst")
        },
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

    def wait_http(self, url: str, in_a_row: int = 1, timeout_s: float = 90) -> None:
        """Until ``url`` answers 200 ``in_a_row`` times (each a new connection: any worker's)."""
        deadline, ok = time.monotonic() + timeout_s, 0
        while time.monotonic() < deadline and self.popen.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    ok = ok + 1 if resp.status == 200 else 0
            except OSError:  # refused, or an HTTP error (503 until ready)
                ok = 0
            if ok >= in_a_row:
                return
            time.sleep(0.3 if ok == 0 else 0.05)
        raise RuntimeError(f"{self.name} not ready at {url}; see {self.log_path}")


def start_service(name: str, port: int, overrides: dict[str, str], role: str = "all", check_keys: bool = True) -> Proc:
    """``python -m service --port N --role R`` in the shipped configuration plus ``overrides``
    (without ``check_keys``, ``python -m bench.unauthenticated``: the same with no API keys
    checked); back once ready (with workers, once 20 readiness probes in a row found a ready one)."""
    module = "service" if check_keys else "bench.unauthenticated"
    argv = [PY, "-m", module, "--config", str(CONFIG), "--port", str(port), "--role", role]
    tag = "".join(filter(str.isalnum, name))
    proc = Proc(f"service-{tag}", argv, service_env(overrides))
    proc.wait_http(f"http://{HOST}:{port}/health/ready", 20 if "SINGLETON_SERVER__PROCESSES" in overrides else 1)
    return proc


def start_baseline(port: int) -> Proc:
    proc = Proc("baseline", [PY, "-m", "bench.baseline", "--port", str(port)])
    proc.wait_http(f"http://{HOST}:{port}/")
    return proc


def create_admin_key() -> str:
    """``python -m service keys create --role admin`` against the bench's database."""
    argv, environ = [PY, "-m", "service", "--config", str(CONFIG), "keys", "create", "--role", "admin"], service_env({})
    return subprocess.run(argv, cwd=REPO, env=environ, check=True, capture_output=True, text=True).stdout.strip()


# -- /proc ---------------------------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(int(x.split()[1]) for x in status if x.startswith("VmRSS:"))


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


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
    work on the machine (other stacks' ``java``, ``mariadbd``...) stands apart; a cluster stack's
    servers each by name (``MariaDB a``, ``Kafka 2``)."""
    run, out = Path(os.environ.get("DEVSTACK_DIR") or REPO / ".devstack") / "run", {}
    with contextlib.suppress(OSError):
        for entry in os.scandir(run):
            if match := PID_FILE.match(entry.name):
                label = " ".join(filter(None, (SERVICES[match[1]], match[2])))
                with contextlib.suppress(OSError, ValueError):
                    out[int(Path(entry.path).read_text())] = label
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
    mine = set(names.values())
    strangers = [k for k, _ in ranked if k not in mine]
    shown = {k: round(v, 2) for k, v in ranked if k in mine or k in strangers[:top]}
    rest = sum(v for k, v in ranked if k not in shown)
    return shown | ({"other": round(rest, 2)} if rest >= 0.01 else {})


def background_load(seconds: float = 2.0) -> dict[str, float]:
    """What else uses the CPU now (processes above 0.1 cores), and the load average."""
    before, t = processes(), time.monotonic()
    time.sleep(seconds)
    split = cpu_split(before, processes(), time.monotonic() - t, {os.getpid(): "bench"})
    return {k: v for k, v in split.items() if v >= 0.1} | {"load average": os.getloadavg()[0]}


def machine() -> dict:
    def first(path: str, prefix: str) -> str:
        return next(x.split(":", 1)[1].strip() for x in Path(path).read_text().splitlines() if x.startswith(prefix))

    def run(*argv: str) -> str:
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {
        "nproc": os.cpu_count(),
        "cpu_model": first("/proc/cpuinfo", "model name"),
        "mem_total_gib": round(int(first("/proc/meminfo", "MemTotal").split()[0]) / 1024**2, 1),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "wrk": run("wrk", "-v").split()[1],
        "nofile_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "commit": run("git", "rev-parse", "--short", "HEAD")
        + ("+dirty" if run("git", "status", "--porcelain", *CODE) else ""),
    }


def percentile(ordered: list[float], q: float) -> float | None:
    """The ``q``-th percentile of sorted values (nearest rank); None for none."""
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else None
