"""What the Redis Cluster and Kafka fault tests share: the service's configuration for the
cluster stack, the service run on it as a child process (``python -m service``) on
databases of its own, a SIGKILL of the server listening on an address, and devstack
bringing that server back.

The service uses MariaDB as one database here, on the global shard: these tests are about
Redis Cluster and the Kafka brokers, not sharding (conftest's ``cluster_service`` runs the
sharded configuration as it is).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pymysql
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from managers import config as config_module
from service.supervisor import free_port
from tests.cluster.conftest import devstack
from tests.helpers import ROOT, ensure_database, in_thread, run_service, wait_until

# The cluster file's keys that name a file, relative to that file's directory.
FILES = (("mysql", "password_file"), ("mysql", "migrate_password_file"), ("auth", "token_secret_file"))
NOT_SECTIONS = ("extends", "shards")  # the file's own keys that managers/config.py does not read (yet)
REQUEST_TIMEOUT_S = 10


def service_overrides(cluster_config, name: str) -> dict[str, dict[str, Any]]:
    """The service on the cluster stack, as overrides of config.yaml: the cluster file's
    settings, MariaDB as one database on the global shard, and a database, analytics store
    and consumer group of the test's own (``name``), so runs never see each other's rows."""
    overrides: dict[str, dict[str, Any]] = {
        section: dict(values) for section, values in cluster_config.items() if section not in NOT_SECTIONS
    }
    for section, key in FILES:
        overrides[section][key] = str(cluster_config.file(section, key))
    host, port = cluster_config.shards()[cluster_config["shards"]["global"]]
    database = f"singleton_test_{name}_{uuid.uuid4().hex[:8]}"  # dropped after the run (running_service)
    overrides["mysql"].update(host=host, port=port, database=database)
    overrides["mongodb"] = {**overrides.get("mongodb", {}), "database": database}
    overrides["kafka"] = {**overrides.get("kafka", {}), "analytics_group": database}
    overrides.setdefault("auth", {})["bootstrap_admin_key_file"] = ""  # the test makes its own key
    overrides["server"] = {"port": 0, "health_probe_interval_s": 0.25}
    overrides["metrics"] = {"port": free_port()}
    overrides["logging"] = {"file": "", "level": "WARNING"}  # no access line per request: 200/s of them cost CPU
    overrides["reconnect"] = {"initial_delay_s": 0.1, "max_delay_s": 1}
    # Limits far above what a test sends (the limiter still asks Redis on every share).
    overrides["rate_limit"] = {f"{kind}_{what}": 100000 for kind in ("read", "write") for what in ("per_s", "burst")}
    return overrides


def service_config(overrides: dict[str, dict[str, Any]]) -> config_module.Config:
    return config_module.load(overrides=overrides)


def sql(
    overrides: dict[str, dict[str, Any]], statement: str, args: tuple[Any, ...] = (), owner: bool = False
) -> list[tuple[Any, ...]]:
    """One statement on the service's database (blocking: call it with ``in_thread``), as the
    service's user (``owner``: as the migration user, for what the service's may not do)."""
    cfg = service_config(overrides)["mysql"]
    conn = pymysql.connect(
        host=cfg["host"],
        port=cfg["port"],
        user=cfg["migrate_user"] if owner else cfg["user"],
        password=cfg["migrate_password"] if owner else cfg["password"],
        database=cfg["database"],
        connect_timeout=5,
        read_timeout=30,
        write_timeout=30,
    )
    try:
        with conn.cursor() as cur:
            cur.execute(statement, args)
            return list(cur.fetchall())
    finally:
        conn.close()


class Service:
    """``python -m service`` on the cluster stack, its JSON log lines in ``log_path``."""

    def __init__(self, overrides: dict[str, dict[str, Any]], log_path: Path):
        self.port = free_port()
        self.metrics_port = overrides["metrics"]["port"]
        self.log_path = log_path
        self.env = config_module.as_env(overrides)
        with open(log_path, "w") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "service", "--port", str(self.port)],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = AsyncHTTPClient(force_instance=True, max_clients=64)

    async def ready(self, timeout: float = 90) -> None:
        async def ready() -> bool:
            assert self.popen.poll() is None, f"the service exited {self.popen.returncode}; see {self.log_path}"
            try:
                response = await self.http.fetch(f"{self.url}/health/ready", raise_error=False, request_timeout=5)
            except OSError:
                return False
            return response.code == 200

        await wait_until(ready, timeout=timeout, interval=0.2, what="the service ready")

    async def request(
        self, method: str, path: str, key: str, body: Any = None
    ) -> tuple[int | str, dict[str, Any] | None]:
        """One call with an API key: (status, JSON body); the status is "no answer" when none came."""
        try:
            response = await self.http.fetch(
                self.url + path,
                method=method,
                body=None if body is None else json.dumps(body),
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                raise_error=False,
                request_timeout=REQUEST_TIMEOUT_S,
            )
        except (HTTPClientError, OSError) as exc:
            return f"no answer: {exc!r}", None
        if response.code == 599:
            return f"no answer: {response.error!r}", None
        return response.code, json.loads(response.body) if response.body else None

    async def metrics(self) -> str:
        response = await self.http.fetch(f"http://127.0.0.1:{self.metrics_port}/metrics", request_timeout=5)
        return response.body.decode()

    async def stop(self) -> int:
        """SIGTERM, and its exit code once it has exited (a SIGKILL after 60 s)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            await in_thread(self.popen.wait, 60)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            await in_thread(self.popen.wait, 10)
        self.http.close()
        return self.popen.returncode


@contextlib.asynccontextmanager
async def running_service(overrides: dict[str, dict[str, Any]], log_path: Path) -> AsyncIterator[Service]:
    """The service on its own databases (created first), ready to serve; stopped after,
    where it must exit 0, and its databases dropped."""
    cfg = service_config(overrides)
    ensure_database(cfg["mysql"])
    service = Service(overrides, log_path)
    try:
        await service.ready()
        yield service
    finally:
        code = await service.stop()
        await in_thread(sql, overrides, f"DROP DATABASE `{cfg['mysql']['database']}`", owner=True)
        mongo = AsyncMongoClient(cfg["mongodb"]["uri"], serverSelectionTimeoutMS=5000)
        try:
            await mongo.drop_database(cfg["mongodb"]["database"])
        finally:
            await mongo.close()
    assert code == 0, f"the service exited {code}; see {log_path}"


async def admin_key(overrides: dict[str, dict[str, Any]]) -> str:
    """A new admin key, made with ``python -m service keys create`` (which migrates first)."""
    ensure_database(service_config(overrides)["mysql"])
    result = await run_service("keys", "create", "--role", "admin", env=config_module.as_env(overrides))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def sample(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``, in /metrics ``text``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                total += s.value
    return total


def listener_pid(host: str, port: int) -> int:
    """The process listening on ``host:port``."""
    out = subprocess.run(["ss", "-Hltnp", "src", f"{host}:{port}"], capture_output=True, text=True, timeout=10)
    match = re.search(r"pid=(\d+)", out.stdout)
    assert match, f"nothing listens on {host}:{port}: {out.stdout!r} {out.stderr!r}"
    return int(match.group(1))


def sigkill(host: str, port: int) -> int:
    """SIGKILL the server on ``host:port`` (one devstack started); its pid."""
    pid = listener_pid(host, port)
    os.kill(pid, signal.SIGKILL)
    return pid


async def restore(name: str) -> float:
    """devstack starts what is missing of ``name`` (e.g. redis-cluster: its nodes, then the
    cluster whole again) and waits until it is ready, on the suite's stack (CLUSTER_NET,
    DEVSTACK_DIR); the seconds it took."""
    started = time.monotonic()
    await in_thread(devstack, "up", name)
    return time.monotonic() - started
