"""The servers of ``python -m bench.spider``: two InnoDB backends and a Spider front, each a
``mariadbd --no-defaults`` of its own (as devstack starts MariaDB) on 127.0.0.1, with its data,
sockets and logs under ``.devstack-spider/`` (git-ignored, removed at the end).

The shard map is the one the service will use: a user's logical shard is the first 10 bits of
its id (0-1023); logical shards 0-511 live on backend ``b1``, 512-1023 on ``b2``. On the front,
every table is a Spider table partitioned by RANGE COLUMNS on a column that starts with the
user's id or carries its shard, so a user's rows map to the same backend both ways:

- users: ``id``; payments: ``id`` (a payment's id carries its user's logical shard in its first
  10 bits, so a read by id has one home); outbox: ``partition_key`` (the user id);
  idempotency_keys: ``idem_key``, which the bench starts with the user id.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pymysql

from bench.env import REPO, log
from managers.mysql import split_sql

DIR = Path(os.environ.get("BENCH_SPIDER_DIR") or REPO / ".devstack-spider")
HOST = "127.0.0.1"  # never 127.0.0.2/.3: the cluster stack's MariaDB shards listen there
DATABASE = "singleton"
USER = "bench"
LOGICAL_SHARDS = 1024
# physical shard -> (first logical shard, last logical shard)
SHARDS = {"b1": (0, 511), "b2": (512, 1023)}
# The front's tables: the column each is partitioned by.
TABLES = {"users": "id", "payments": "id", "outbox": "partition_key", "idempotency_keys": "idem_key"}
APT_LOG = DIR / "logs" / "apt.log"


def ports() -> dict[str, int]:
    raw = os.environ.get("BENCH_SPIDER_PORTS", "23306,23307,23308")
    b1, b2, front = (int(p) for p in raw.split(","))
    return {"b1": b1, "b2": b2, "front": front}


def logical_shard(an_id: str) -> int:
    """The first 10 bits of a uuid: the user's logical shard."""
    return int(an_id[:3], 16) >> 2


def backend_of(an_id: str) -> str:
    shard = logical_shard(an_id)
    return next(name for name, (lo, hi) in SHARDS.items() if lo <= shard <= hi)


def id_on_shard(shard: int) -> str:
    """A random uuid4 whose first 10 bits are ``shard`` (a payment's id carries its user's)."""
    value = uuid.uuid4().int & ~(0x3FF << 118) | (shard << 118)
    return str(uuid.UUID(int=value))


# -- the plugin ----------------------------------------------------------------------------------
def plugin_dir() -> Path:
    out = subprocess.run(["mariadbd", "--no-defaults", "--verbose", "--help"], capture_output=True, text=True).stdout
    return Path(next(line.split()[1] for line in out.splitlines() if line.startswith("plugin-dir")))


def ensure_spider_plugin() -> dict:
    """Install Debian's mariadb-plugin-spider if ha_spider.so is missing, with devstack's apt
    helper (it denies service starts while installing, and needs no stdin), at exactly the
    installed server's version, so apt never upgrades the mariadbd other stacks run.

    The package adds /etc/mysql/mariadb.conf.d/spider.cnf (``plugin-load-add=ha_spider.so``):
    every mariadbd that reads the system config loads Spider from then on. devstack's servers,
    and these, run ``--no-defaults``; what each would load is recorded to show it."""
    plugin = plugin_dir() / "ha_spider.so"
    installed_now = False
    if not plugin.exists():
        version = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "mariadb-server"], capture_output=True, text=True
        ).stdout.strip()
        package = f"mariadb-plugin-spider={version}" if version else "mariadb-plugin-spider"
        log(f"spider: installing {package} (devstack/lib/apt.sh, log in {APT_LOG})")
        script = 'set -euo pipefail; source devstack/lib/common.sh; source devstack/lib/apt.sh; apt_install "$1"'
        environ = os.environ | {"DEVSTACK_DIR": str(DIR)}
        subprocess.run(
            ["bash", "-c", script, "_", package], cwd=REPO, env=environ, stdin=subprocess.DEVNULL, check=True
        )
        installed_now = True

    def defaults(*flags: str) -> str:
        out = subprocess.run(["mariadbd", *flags, "--print-defaults"], capture_output=True, text=True).stdout
        return out.strip().splitlines()[-1] if out.strip() else ""

    return {
        "plugin": str(plugin),
        "installed_by_this_run": installed_now,
        "mariadbd_version": subprocess.run(["mariadbd", "--version"], capture_output=True, text=True).stdout.strip(),
        "system_config_loads_spider": "ha_spider" in defaults(),
        "no_defaults_loads_spider": "ha_spider" in defaults("--no-defaults"),
    }


# -- the servers ---------------------------------------------------------------------------------
def port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((HOST, port)) == 0


@dataclass
class Server:
    name: str
    port: int
    spider: bool = False
    popen: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def datadir(self) -> Path:
        return DIR / "data" / self.name

    @property
    def sock(self) -> Path:
        return DIR / "run" / f"{self.name}.sock"

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> None:
        if port_taken(self.port):
            raise RuntimeError(f"{HOST}:{self.port} is taken: set BENCH_SPIDER_PORTS to three free ports")
        for sub in ("logs", "run"):
            (DIR / sub).mkdir(parents=True, exist_ok=True)
        logfile = DIR / "logs" / f"{self.name}.log"
        if not (self.datadir / "mysql").is_dir():
            self.datadir.mkdir(parents=True, exist_ok=True)
            argv = ["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}", f"--user={_me()}"]
            argv += ["--auth-root-authentication-method=socket", "--skip-test-db", "--skip-name-resolve"]
            with open(logfile, "a") as out:
                subprocess.run(argv, stdout=out, stderr=out, check=True)
        argv = ["mariadbd", "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.sock}"]
        argv += [f"--pid-file={DIR / 'run' / self.name}.pid", f"--port={self.port}", f"--bind-address={HOST}"]
        argv += [f"--user={_me()}", "--skip-name-resolve", "--character-set-server=utf8mb4"]
        argv += ["--collation-server=utf8mb4_general_ci", "--max-connections=500"]
        if self.spider:
            argv.append("--plugin-load-add=ha_spider")
        with open(logfile, "a") as out:
            self.popen = subprocess.Popen(
                argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while self.root("SELECT 1", check=False).returncode != 0:
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start; see {logfile}")
            time.sleep(0.3)

    def root(self, sql: str, check: bool = True) -> subprocess.CompletedProcess:
        """SQL as root over the server's socket (root has socket access only); SQL on stdin."""
        argv = ["mariadb", "--no-defaults", "--protocol=SOCKET", f"--socket={self.sock}", "-u", "root", "-N", "-B"]
        return subprocess.run(argv, input=sql, capture_output=True, text=True, check=check, timeout=60)

    def restart(self) -> None:
        self.stop()
        self.start()

    def signal(self, sig: signal.Signals) -> None:
        assert self.popen is not None
        os.kill(self.pid, sig)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)  # a paused server cannot shut down
            os.kill(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(60)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(10)


def _me() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


class Stack:
    """The three servers, the bench's login on each, the schema, and the front's Spider tables."""

    def __init__(self) -> None:
        p = ports()
        self.servers = {
            "b1": Server("b1", p["b1"]),
            "b2": Server("b2", p["b2"]),
            "front": Server("front", p["front"], True),
        }
        self.password = secrets.token_urlsafe(24)  # this run's only: never written to a log or a result
        self.front_ddl_errors: dict[str, str] = {}

    def __getitem__(self, name: str) -> Server:
        return self.servers[name]

    def login(self, name: str) -> dict:
        return {"host": HOST, "port": self.servers[name].port, "user": USER, "password": self.password, "db": DATABASE}

    def connect(self, name: str, **kw: object) -> pymysql.Connection:
        login = self.login(name)
        login["database"] = login.pop("db")
        return pymysql.connect(**login, autocommit=True, charset="utf8mb4", **kw)

    def up(self) -> None:
        if DIR.exists():
            shutil.rmtree(DIR / "data", ignore_errors=True)  # a fresh start; apt's log may stay
        for server in self.servers.values():
            log(f"spider: starting {server.name} on {HOST}:{server.port}")
            server.start()
            server.root(
                f"CREATE DATABASE IF NOT EXISTS {DATABASE};"
                f"CREATE USER '{USER}'@'{HOST}' IDENTIFIED BY '{self.password}';"
                f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'{HOST}' WITH GRANT OPTION;"
                "CREATE ROLE IF NOT EXISTS singleton_app;"  # migrations/0004 grants it the service's privileges
            )
        for name in SHARDS:
            self._migrate(name)
        self._front_tables()

    def down(self, keep_logs: bool = False) -> None:
        """Stop the three servers and remove their data (and the logs, unless ``keep_logs``)."""
        for server in self.servers.values():
            server.stop()
        for sub in ("data", "run") if keep_logs else ("",):
            shutil.rmtree(DIR / sub, ignore_errors=True)

    def _migrate(self, name: str) -> None:
        """migrations/*.sql, as the service applies them, on a backend."""
        with contextlib.closing(self.connect(name)) as conn, conn.cursor() as cur:
            for path in sorted((REPO / "migrations").glob("*.sql")):
                for statement in split_sql(path.read_text()):
                    cur.execute(statement)

    def _front_tables(self) -> None:
        """Each table of TABLES as Spider sees it: the backend's definition, ENGINE=SPIDER,
        partitioned by the shard map, one partition per backend. MariaDB refuses a unique key
        that lacks the partitioning column (error 1503), so such keys are kept as plain keys,
        after recording the refusal (users.email: no unique email across shards)."""
        servers = " ".join(
            f"CREATE SERVER {name} FOREIGN DATA WRAPPER mysql OPTIONS (HOST '{HOST}', PORT {self[name].port},"
            f" DATABASE '{DATABASE}', USER '{USER}', PASSWORD '{self.password}');"
            for name in SHARDS
        )
        self["front"].root(servers)
        with contextlib.closing(self.connect("b1")) as b1, b1.cursor() as cur:
            shapes = {}
            for table in TABLES:
                cur.execute(f"SHOW CREATE TABLE {table}")
                shapes[table] = cur.fetchone()[1]
        with contextlib.closing(self.connect("front")) as front, front.cursor() as cur:
            for table, column in TABLES.items():
                as_is = spider_ddl(table, shapes[table], column, keep_unique=True)
                try:
                    cur.execute(as_is)
                    continue
                except pymysql.err.MySQLError as exc:
                    self.front_ddl_errors[table] = f"{exc.args[0]}: {exc.args[1]}"
                cur.execute(spider_ddl(table, shapes[table], column, keep_unique=False))


def partitions(column: str) -> str:
    """RANGE COLUMNS partitions of the shard map: a user's shard is its id's first 10 bits, so
    logical shard s starts at the 3 hex digits of s << 2 (shard 512 at '800')."""
    parts, names = [], list(SHARDS)
    for name in names[:-1]:
        parts.append(
            f"PARTITION {name} VALUES LESS THAN ('{(SHARDS[name][1] + 1) << 2:03x}') COMMENT = 'srv \"{name}\"'"
        )
    parts.append(f"PARTITION {names[-1]} VALUES LESS THAN (MAXVALUE) COMMENT = 'srv \"{names[-1]}\"'")
    return f"PARTITION BY RANGE COLUMNS ({column}) ({', '.join(parts)})"


def spider_ddl(table: str, backend_ddl: str, column: str, keep_unique: bool) -> str:
    """The front's table from the backend's SHOW CREATE TABLE, without foreign keys (Spider has
    none); unless ``keep_unique``, a primary or unique key that lacks the partitioning column
    is made a plain key (outbox: its primary key (id) becomes KEY `pk` (id), so that Spider's
    auto-increment reads the backends' last id by their primary key)."""
    lines = []
    for line in backend_ddl.splitlines():
        stripped = line.strip().rstrip(",")
        if "FOREIGN KEY" in stripped:
            continue
        if stripped.startswith("PRIMARY KEY") and f"`{column}`" not in stripped and not keep_unique:
            stripped = stripped.replace("PRIMARY KEY", "KEY `pk`", 1)
        elif stripped.startswith("UNIQUE KEY") and f"`{column}`" not in stripped and not keep_unique:
            stripped = stripped.replace("UNIQUE KEY", "KEY", 1)
        if stripped.startswith(") ENGINE="):
            lines.append(") ENGINE=SPIDER DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin")
            break
        lines.append(stripped)
    head, body, tail = lines[0], lines[1:-1], lines[-1]
    comment = f'COMMENT=\'wrapper "mysql", table "{table}"\''
    return "\n".join([head, ",\n".join(body), f"{tail} {comment}", partitions(column)])


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
