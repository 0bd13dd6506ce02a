"""Small helpers shared by the tests: waiting on conditions, never sleeping and hoping."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pymysql
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import REGISTRY
from tornado.httpclient import AsyncHTTPClient

from managers import config as config_module
from managers.base import Manager
from service.supervisor import free_port

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent

# Where `make services` keeps its state (pid files included): devstack/services.sh's default.
DEVSTACK_DIR = Path(os.environ.get("DEVSTACK_DIR") or ROOT / ".devstack")

# The devstack ports can be moved (MYSQL_PORT, REDIS_PORT, ... and the matching
# SINGLETON_* variables), e.g. for a second stack beside the first.
REDIS_PORT = int(os.environ.get("REDIS_PORT", "6379"))

# The everyday stack's TLS endpoints and files (devstack/lib/tls.sh; config.tls.yaml): Redis's
# TLS port and Kafka's SSL listener, each its plaintext port + 1000 unless set.
TLS_DIR = DEVSTACK_DIR / "tls"
REDIS_TLS_PORT = int(os.environ.get("REDIS_TLS_PORT") or REDIS_PORT + 1000)
KAFKA_SSL_PORT = int(os.environ.get("KAFKA_SSL_PORT") or int(os.environ.get("KAFKA_PORT", "9092")) + 1000)


def tls_section(**values: Any) -> dict[str, Any]:
    """A ``tls`` config section with devstack's CA and client certificate; ``values`` on top."""
    files = {"ca_file": "ca.pem", "cert_file": "client.pem", "key_file": "client.key"}
    return {**{key: str(TLS_DIR / name) for key, name in files.items()}, "verify_hostname": True, **values}


def make_ca(directory: Path) -> Path:
    """A CA of its own (openssl), which signed none of devstack's certificates: its ca.pem."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=another CA"]
        + ["-keyout", str(directory / "ca.key"), "-out", str(directory / "ca.pem")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return directory / "ca.pem"


# Everything the tests touch lives apart from what `make run` uses.
TEST_OVERRIDES: dict[str, dict[str, Any]] = {
    "mysql": {"database": "singleton_test"},
    "mongodb": {"database": "singleton_test"},
    "redis": {"url": f"redis://127.0.0.1:{REDIS_PORT}/15"},
    "kafka": {"topic": "singleton-events-test", "analytics_group": "singleton-analytics-test"},
    "logging": {"file": "", "level": "WARNING"},
    # The suite makes its own keys (tests/conftest.py), so the dev admin key file is left alone.
    "auth": {"bootstrap_admin_key_file": ""},
    # Limits far above what the suite sends, so only the tests about limits meet them;
    # the limiter still runs (a Redis round trip) on every call.
    "rate_limit": {
        **{f"{kind}_per_s": 100000 for kind in ("read", "write", "anonymous")},
        **{f"{kind}_burst": 100000 for kind in ("read", "write", "anonymous")},
    },
    "metrics": {"port": 0},
    # Shorter waits than production's, so tests wait less for what they watch: the
    # monitor's report (readiness, a dependency found down or back) and reconnects.
    "server": {"health_probe_interval_s": 0.25},
    "reconnect": {"initial_delay_s": 0.1, "max_delay_s": 1},
}


# For tests that load the config but connect to nothing (the ``unit_config`` fixture):
# no `make services` has written the dev secrets there.
UNIT_SECRETS: dict[str, dict[str, str]] = {
    "mysql": {"password": "unit-tier-stand-in", "migrate_password": "unit-tier-stand-in-too"},
    "auth": {"token_secret": "unit-tier-stand-in-token-secret-0123456789"},
}


def service_env(**extra: str) -> dict[str, str]:
    """The environment for a ``python -m service`` subprocess: the suite's overrides
    on top of the caller's, so it finds the same backing services (a second devstack
    on other ports included) and uses the same test databases as the suite."""
    return config_module.as_env(TEST_OVERRIDES) | extra


# Waiting on a subprocess never blocks the event loop: the session's managers run on it,
# and a Kafka consumer whose loop stalls past its session timeout (10 s) is dropped from
# its group, which the next member to join (a service subprocess) then waits for.


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Blocking work (a subprocess to its end), with the event loop free meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))


async def run_service(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """``python -m service ARGS`` to its end (e.g. ``keys create``), output captured."""
    command = [sys.executable, "-m", "service", *args]
    return await in_thread(subprocess.run, command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


async def wait_healthy(proc: subprocess.Popen, port: int, timeout: float = 60) -> None:
    """Until a service subprocess's /health answers 200; fail if it exits first."""
    client = AsyncHTTPClient()

    async def healthy() -> bool:
        assert proc.poll() is None, f"the service exited with {proc.returncode}"
        try:
            response = await client.fetch(f"http://127.0.0.1:{port}/health", raise_error=False, request_timeout=5)
        except OSError:
            return False
        return response.code == 200

    await wait_until(healthy, timeout=timeout, interval=0.1, what=f"the service on port {port} to be healthy")


async def terminate(proc: subprocess.Popen, timeout: float = 30) -> tuple[str, str]:
    """SIGTERM, then its output once it has exited (killed if it takes over ``timeout``)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return await in_thread(proc.communicate, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


@contextlib.contextmanager
def service_process(io_loop, *args: str, env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """``python -m service --port N ARGS`` on a free port, and its base URL; at the end a
    SIGTERM, after which it must exit 0 within 30 s (the session's loop runs meanwhile).
    ``env``: more variables (``SINGLETON_...`` overrides) on top of ``service_env()``'s."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--port", str(port), *args],
        cwd=ROOT,
        env=service_env(**(env or {})),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield proc, f"http://127.0.0.1:{port}"
    _, err = io_loop.run_sync(lambda: terminate(proc), timeout=40)
    assert proc.returncode == 0, err


async def wait_until(
    predicate: Callable[[], Any | Awaitable[Any]], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s: {what or predicate}; last={last!r}")
        await asyncio.sleep(interval)


# Managers a test started in place of the session's own (``restart``); the ``services``
# fixture closes them, last first, before the session's Lifecycle closes the rest.
REPLACEMENTS: list[Manager] = []


async def restart(cls: type[Manager], config: dict) -> Manager:
    """``cls``'s instance closed (unless a test already closed it) and a fresh one started
    in its place, as the next process would start it."""
    if cls.started():
        await cls.instance().close()
    REPLACEMENTS.append(cls.start(config))
    return REPLACEMENTS[-1]


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    """The current value of one of the service's Prometheus samples (0 before the first)."""
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


# Times that are not RFC 3339 (domain/codec.py refuses each; the API answers 400 invalid_time).
NOT_RFC_3339 = [
    "",
    "2026-01-01",
    "2026-01-01T00:00:00",  # no zone
    "2026-01-01 00:00:00Z",  # ISO 8601 forms that datetime.fromisoformat takes
    "20260101T000000Z",
    "2026-01-01T00:00Z",
    "2026-01-01T00:00:00+0000",
    "2026-W01-1T00:00:00Z",
    "2026-01-01T00:00:00,5Z",
    "2026-01-01T00:00:00.Z",
    "2026-01-01T00:00:00Z\n",
    " 2026-01-01T00:00:00Z",
    "２０２６-01-01T00:00:00Z",  # digits of another script
    "2026-02-30T00:00:00Z",
    "2026-01-01T24:00:00Z",
    "2026-01-01T00:00:60Z",  # a leap second only ends a UTC day
    "2026-01-01T00:00:00+24:00",
    "2026-01-01T00:00:00+01:60",
    "0000-01-01T00:00:00Z",
    "0001-01-01T00:30:00+01:00",  # before year 1 in UTC
    "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
    "9999-12-31T23:59:60Z",
]


BUG_LINE = "background task failed: a bug, not an outage; retrying with backoff"  # managers/background.py


def bugs(task: str) -> float:
    """How many failures of background task ``task`` were counted as bugs."""
    return metric("singleton_background_errors_total", {"task": task})


def bug_lines(caplog: Any, task: str) -> list[logging.LogRecord]:
    """The log lines that reported a bug in background task ``task``."""
    return [r for r in caplog.records if r.getMessage() == BUG_LINE and getattr(r, "task", None) == task]


def owner_sql(cfg: dict, *statements: str, database: str | None = None) -> None:
    """As the migration user: the service's own may not create or drop databases, nor
    create triggers."""
    conn = pymysql.connect(
        host=cfg["host"],
        port=cfg["port"],
        user=cfg["migrate_user"],
        password=cfg["migrate_password"],
        database=database,
        connect_timeout=5,
    )
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def service_connection(cfg: dict) -> pymysql.Connection:
    """A connection to the real MariaDB as the service's own user, no database chosen."""
    return pymysql.connect(
        host=cfg["host"], port=cfg["port"], user=cfg["user"], password=cfg["password"], connect_timeout=5
    )


def com_select(cfg: dict) -> int:
    """The real MariaDB server's ``Com_select``: SELECTs run since it started, on every
    connection (this one's ``SHOW`` is not one)."""
    conn = service_connection(cfg)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Com_select'")
            return int(cur.fetchone()[1])
    finally:
        conn.close()


class Selects:
    """SELECTs the real MariaDB server runs while a test's calls are made, less those of the
    suite's own background loops (health checks every 0.25 s, the outbox relay's polls):
    their rate is measured over ``idle_s`` first, when the test sends nothing, and twice
    what it predicts for the calls' duration is allowed for them (plus 3 for jitter)."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.background_per_s = 0.0
        self._start = self._started_at = 0.0

    async def __aenter__(self) -> Selects:
        before, started = com_select(self.cfg), time.monotonic()
        await asyncio.sleep(1.0)  # the idle window: nothing of the test's runs here
        idle = com_select(self.cfg) - before
        self.background_per_s = idle / (time.monotonic() - started)
        self._start, self._started_at = com_select(self.cfg), time.monotonic()
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def since(self) -> tuple[int, float]:
        """SELECTs since the calls began, and how many of them the background may have run."""
        selects = com_select(self.cfg) - self._start
        return selects, 2 * self.background_per_s * (time.monotonic() - self._started_at) + 3

    def by_the_calls(self) -> int:
        """SELECTs the calls may have caused: all of them, less the background's allowance."""
        selects, background = self.since()
        return max(0, round(selects - background))


def ensure_database(cfg: dict) -> None:
    owner_sql(cfg, f"CREATE DATABASE IF NOT EXISTS `{cfg['database']}` CHARACTER SET utf8mb4")


def fresh_database(cfg: dict, name: str) -> None:
    """An empty database ``name`` beside the suite's, for a service process to start on."""
    owner_sql(cfg, f"DROP DATABASE IF EXISTS `{name}`", f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")


def stop_redis() -> None:
    """Shut the real Redis down (``start_redis()`` brings it back)."""
    subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "shutdown", "nosave"], capture_output=True, timeout=10)


async def start_redis() -> None:
    """``make services`` for Redis alone (the others are up: checking them costs seconds)."""
    result = await in_thread(run_make, "services", "SERVICES=redis")
    assert result.returncode == 0, result.stdout + result.stderr


def run_make(target: str, *variables: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", target, *variables],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "MAKEFLAGS": ""},
    )


async def topic_consumer(kafka_cfg: dict, positions: dict[TopicPartition, int] | None = None) -> AIOKafkaConsumer:
    """A real consumer of every partition of the topic, at ``positions`` or else at the end."""
    consumer = AIOKafkaConsumer(
        kafka_cfg["topic"], bootstrap_servers=kafka_cfg["bootstrap_servers"], group_id=None, auto_offset_reset="latest"
    )
    await asyncio.wait_for(consumer.start(), 15)
    await wait_until(consumer.assignment, timeout=15, what="partitions assigned")
    partitions = sorted(consumer.assignment())
    if positions is None:
        await consumer.seek_to_end(*partitions)
    else:
        for tp, offset in positions.items():
            consumer.seek(tp, offset)
    for tp in partitions:
        await asyncio.wait_for(consumer.position(tp), 15)
    return consumer


async def end_positions(kafka_cfg: dict) -> dict[TopicPartition, int]:
    """Where the topic ends now, to read from there later."""
    consumer = await topic_consumer(kafka_cfg)
    try:
        return {tp: await consumer.position(tp) for tp in consumer.assignment()}
    finally:
        await asyncio.wait_for(consumer.stop(), 15)


async def read_events(
    consumer: AIOKafkaConsumer, until: Callable[[list[dict]], Any], timeout: float = 15.0
) -> list[dict]:
    """Read events until ``until(seen)`` is truthy, with a deadline."""
    seen: list[dict] = []

    async def poll():
        batches = await consumer.getmany(timeout_ms=200)
        for records in batches.values():
            seen.extend(json.loads(r.value) for r in records)
        return until(seen)

    await wait_until(poll, timeout=timeout, interval=0, what="events on the topic")
    return seen


async def consumer_drain(consumer: AIOKafkaConsumer, window_ms: int = 1000) -> list[dict]:
    """Whatever else arrives within a short window (to show nothing extra was sent)."""
    batches = await consumer.getmany(timeout_ms=window_ms)
    return [json.loads(r.value) for records in batches.values() for r in records]


class TcpProxy:
    """A TCP forwarder to a real server, on a port of its own, that a test can open
    and close: the dependency is unreachable until ``open()``, like a server that is
    not up yet. Runs on the test's own event loop."""

    def __init__(self, target_port: int, host: str = "127.0.0.1"):
        self.target_port = target_port
        self.host = host  # where it listens (another loopback address: a host the certificate does not name)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.target_port), 5)
        except OSError:
            writer.close()
            return
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except OSError:
            pass
        finally:
            dst.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
