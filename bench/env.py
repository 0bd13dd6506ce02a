"""The bench's surroundings: settings, backing services, its own database, topic,
Redis db and Mongo db, and the processes it starts (the service, the baseline)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
WORK = REPO / "reports" / "bench"  # git-ignored scratch: id files, logs, raw wrk output
DOCS = REPO / "docs"
DOCS_BENCH = DOCS / "bench"
PY = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable

MYSQL_DATABASE = "singleton_test_bench"  # the devstack user may only create singleton_test%
REDIS_URL = "redis://127.0.0.1:6379/14"
MONGO_DATABASE = "singleton_bench"
KAFKA_TOPIC = "singleton-bench"
KAFKA_BOOTSTRAP = "127.0.0.1:9092"
HOST = "127.0.0.1"


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, "") or default)


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, "") or default)


@dataclass
class Settings:
    """Every knob, from BENCH_* environment variables (see bench/README.md)."""

    duration_s: int = field(default_factory=lambda: _env_int("BENCH_DURATION", 10))
    connections: int = field(default_factory=lambda: _env_int("BENCH_CONNECTIONS", 50))
    threads: int = field(default_factory=lambda: _env_int("BENCH_THREADS", 2))
    warmup_s: int = field(default_factory=lambda: _env_int("BENCH_WARMUP", 3))
    users: int = field(default_factory=lambda: _env_int("BENCH_USERS", 1000))
    list_users: int = field(default_factory=lambda: _env_int("BENCH_LIST_USERS", 100))
    payments_per_list_user: int = field(default_factory=lambda: _env_int("BENCH_PAYMENTS_PER_USER", 25))
    ws_connections: int = field(default_factory=lambda: _env_int("BENCH_WS_CONNECTIONS", 10000))
    ws_users: int = field(default_factory=lambda: _env_int("BENCH_WS_USERS", 100))
    ws_rate: float = field(default_factory=lambda: _env_float("BENCH_WS_RATE", 200))
    ws_seconds: float = field(default_factory=lambda: _env_float("BENCH_WS_SECONDS", 10))
    ws_client_procs: int = field(default_factory=lambda: _env_int("BENCH_WS_PROCS", 1))
    drain_timeout_s: float = field(default_factory=lambda: _env_float("BENCH_DRAIN_TIMEOUT", 60))
    skip_ws: bool = field(default_factory=lambda: os.environ.get("BENCH_SKIP_WS", "") not in ("", "0"))


def raise_nofile(wanted: int = 65536) -> int:
    """Raise this process's open-file limit as far as the hard limit allows; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- backing services -------------------------------------------------------------------------
def services_up() -> None:
    log("backing services: bash devstack/services.sh up")
    subprocess.run(["bash", str(REPO / "devstack" / "services.sh"), "up"], check=True, cwd=REPO)
    if not shutil.which("wrk"):
        log("wrk missing: bash devstack/services.sh tools")
        subprocess.run(["bash", str(REPO / "devstack" / "services.sh"), "tools"], check=True, cwd=REPO)


def reset_stores() -> None:
    """A clean slate each run: the bench's own MySQL database, Redis db, Mongo db and
    Kafka topic (deleted and created again, empty)."""
    import pymongo
    import pymysql
    import redis

    conn = pymysql.connect(host=HOST, port=3306, user="singleton", password="singleton", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {MYSQL_DATABASE}")
            cur.execute(f"CREATE DATABASE {MYSQL_DATABASE} CHARACTER SET utf8mb4")
    finally:
        conn.close()
    redis.Redis.from_url(REDIS_URL).flushdb()
    client = pymongo.MongoClient("mongodb://127.0.0.1:27017/", serverSelectionTimeoutMS=5000)
    try:
        client.drop_database(MONGO_DATABASE)
    finally:
        client.close()
    asyncio.run(_ensure_topic())


async def _ensure_topic(partitions: int = 3, timeout_s: float = 60) -> None:
    """Delete the bench topic and create it anew, empty: events left by an earlier run
    would otherwise still be waiting for the analytics consumer group (and keep
    FerretDB busy through this run)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError

    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP, request_timeout_ms=10000)
    await asyncio.wait_for(admin.start(), 15)
    try:
        try:
            await asyncio.wait_for(admin.delete_topics([KAFKA_TOPIC]), 15)
        except UnknownTopicOrPartitionError:
            pass
        deadline = time.monotonic() + timeout_s
        while True:  # deletion completes in the background: retry until the name is free
            try:
                await asyncio.wait_for(admin.create_topics([NewTopic(KAFKA_TOPIC, partitions, 1)]), 15)
                break
            except TopicAlreadyExistsError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await asyncio.wait_for(admin.close(), 15)


def mysql_query(sql: str, args: tuple = ()) -> list[tuple]:
    import pymysql

    conn = pymysql.connect(host=HOST, user="singleton", password="singleton", database=MYSQL_DATABASE)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())
    finally:
        conn.close()


# -- processes ---------------------------------------------------------------------------------
def service_env(extra: dict | None = None, ws_connections: int = 10000) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "SINGLETON_MYSQL__DATABASE": MYSQL_DATABASE,
            "SINGLETON_REDIS__URL": REDIS_URL,
            "SINGLETON_MONGODB__DATABASE": MONGO_DATABASE,
            "SINGLETON_KAFKA__TOPIC": KAFKA_TOPIC,
            "SINGLETON_LOGGING__LEVEL": "WARNING",
            "SINGLETON_LOGGING__FILE": '""',
            "SINGLETON_WEBSOCKET__MAX_CONNECTIONS": str(max(10000, ws_connections + 100)),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


class Proc:
    """A child process in its own process group, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict | None = None, nofile: int | None = None):
        WORK.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = WORK / f"{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        cmd = shlex.join(argv)
        if nofile:
            # `exec` keeps the pid: it is the Python process itself (for /proc and py-spy).
            cmd = f"ulimit -n {nofile} && exec {cmd}"
        else:
            cmd = f"exec {cmd}"
        self.popen = subprocess.Popen(
            ["bash", "-c", cmd],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._log.close()

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-n:])
        except OSError:
            return ""


def wait_http(proc: Proc, url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{proc.name} not ready at {url} after {timeout}s:\n{proc.tail()}")


def start_service(
    port: int, ws_connections: int, nofile: int, runner: list[str] | None = None, extra_env: dict | None = None
) -> Proc:
    """``python -m service --port N`` with the bench overrides (or ``runner``, e.g. the
    uvloop wrapper), its open-file limit raised by ``ulimit -n`` in the start command."""
    argv = [PY, *(runner or ["-m", "service"]), "--port", str(port)]
    name = f"service-{port}"
    proc = Proc(name, argv, service_env(extra_env, ws_connections), nofile=nofile)
    wait_http(proc, f"http://{HOST}:{port}/health")
    return proc


def start_baseline(port: int, extra_env: dict | None = None) -> Proc:
    env = dict(os.environ)
    env.update(extra_env or {})
    proc = Proc(f"baseline-{port}", [PY, str(BENCH_DIR / "baseline.py"), "--port", str(port)], env)
    wait_http(proc, f"http://{HOST}:{port}/")
    return proc


def rss_kib(pid: int) -> dict:
    """VmRSS and VmHWM (peak) of ``pid`` in KiB, from /proc/<pid>/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """Every process's command name and CPU seconds so far."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                text = f.read()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        out[int(entry.name)] = (comm, (int(fields[11]) + int(fields[12])) / tick)
    return out


def cpu_split(before: dict, after: dict, seconds: float, names: dict[int, str], top: int = 6) -> dict[str, float]:
    """CPU use between two ``cpu_by_process`` snapshots, in cores, by process name
    (``names`` labels known pids, e.g. the service), largest first; the rest summed."""
    use: dict[str, float] = {}
    for pid, (comm, cpu) in after.items():
        used = cpu - before.get(pid, (comm, 0.0))[1]
        if used > 0:
            label = names.get(pid, comm)
            use[label] = use.get(label, 0.0) + used / seconds
    ranked = sorted(use.items(), key=lambda kv: -kv[1])
    out = {k: round(v, 2) for k, v in ranked[:top]}
    rest = sum(v for _, v in ranked[top:])
    if rest >= 0.01:
        out["other"] = round(rest, 2)
    return out


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def metric_value(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def metric_labels(text: str, name: str) -> dict[str, float]:
    """A labelled metric's samples by their first label's value, e.g. consumer lag by consumer."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1 :].rsplit(" ", 1)
            out[labels.split('"')[1] if '"' in labels else labels] = float(value)
    return out


def machine() -> dict:
    info = {"nproc": os.cpu_count(), "cpu_model": "unknown", "mem_total_gib": None}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["mem_total_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    info["nproc"] = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip() or 0)
    info["kernel"] = os.uname().release
    info["python"] = sys.version.split()[0]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        first = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()
        info["wrk"] = first[0].split()[1] if first else "?"
    info["commit"] = code_version()
    return info


def code_version() -> str:
    """The service code measured: HEAD's short hash, "+dirty" if its folders have local changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "service", "handlers", "managers", "domain", "migrations"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
