"""What the cluster suite's fault tests share: the service's configuration for the cluster
stack, the service run on it as a child process (``python -m service``), a SIGKILL of one
server of the stack, and devstack bringing that server back.

The service uses MariaDB as one database here, on the global shard: these tests are about
Redis Cluster and the Kafka brokers, not about sharding.
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

from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from managers import config as config_module
from service.supervisor import free_port
from tests.helpers import ROOT, ensure_database, in_thread, run_make, run_service, wait_until

# The cluster file's keys that name a file, relative to that file's directory.
FILES = (("mysql", "password_file"), ("auth", "token_secret_file"))
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
    database = f"singleton_test_{name}"
    overrides["mysql"].update(host=host, port=port, database=database)
    overrides["mongodb"] = {**overrides.get("mongodb", {}), "database": database}
    overrides["kafka"] = {**overrides.get("kafka", {}), "analytics_group": f"{database}_{uuid.uuid4().hex[:8]}"}
    overrides.setdefault("auth", {})["bootstrap_admin_key_file"] = ""  # the test makes its own key
    overrides["server"] = {"port": 0, "health_probe_interval_s": 0.25}
    overrides["metrics"] = {"port": free_port()}
    overrides["logging"] = {"file": "", "level": "INFO"}
    overrides["reconnect"] = {"initial_delay_s": 0.1, "max_delay_s": 1}
    return overrides


def service_config(overrides: dict[str, dict[str, Any]]) -> config_module.Config:
    return config_module.load(overrides=overrides)


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

    def logged(self, message: str) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    lines.append(json.loads(line))
        return [line for line in lines if line.get("msg") == message]


@contextlib.asynccontextmanager
async def running_service(overrides: dict[str, dict[str, Any]], log_path: Path) -> AsyncIterator[Service]:
    """The service on its own database (created first), ready to serve; stopped after,
    where it must exit 0."""
    ensure_database(service_config(overrides)["mysql"])
    service = Service(overrides, log_path)
    try:
        await service.ready()
        yield service
    finally:
        code = await service.stop()
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
    """``make services-cluster SERVICES=name``: devstack starts what is missing of ``name``
    (e.g. redis-cluster: its nodes, then the cluster whole again) and waits until it is
    ready. The seconds it took. The environment (CLUSTER_NET, DEVSTACK_DIR) is the suite's."""
    started = time.monotonic()
    result = await in_thread(run_make, "services-cluster", f"SERVICES={name}", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return time.monotonic() - started
