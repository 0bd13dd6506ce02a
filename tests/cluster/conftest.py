"""The cluster suite (``make test-cluster``, ``pytest --cluster tests/cluster``): tests against
the cluster stack that ``make services-cluster`` starts (devstack/README.md): two MariaDB
shards, Redis Cluster, three Kafka brokers, FerretDB. ``make test`` never collects it
(tests/conftest.py).

``cluster_config`` is the cluster configuration: the file ``$SINGLETON_CLUSTER_CONFIG`` names
(default: config.cluster.yaml at the repository's root), so that a copy of the stack on other
addresses (CLUSTER_NET) is tested with a copy of the file. Until managers/config.py reads
``extends`` and ``shards``, it is the file's YAML as it stands, with the servers' addresses
read from it; a setting the file leaves to the one it extends is read there. Before the
first test, every one of those servers must accept a connection, or the run ends saying
which do not.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG_VARIABLE = "SINGLETON_CLUSTER_CONFIG"
CONNECT_TIMEOUT_S = 3

Address = tuple[str, int]


def host_port(text: str, default_port: int | None = None) -> Address:
    """``host:port`` (or ``host`` alone, with a default port) as a pair."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        if default_port is None:
            raise ValueError(f"{text!r}: no port")
        return text.strip(), default_port
    return host, int(port)


class ClusterConfig(dict[str, Any]):
    """The cluster configuration's YAML, and where its servers are."""

    def __init__(self, path: Path):
        self.path = path.resolve()
        data = yaml.safe_load(self.path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}: top level must be a mapping")
        super().__init__(data)
        extends = data.get("extends")
        base = yaml.safe_load((self.path.parent / extends).read_text()) if extends else None
        self.base: dict[str, Any] = base or {}

    def setting(self, section: str, key: str) -> Any:
        """``section.key`` from this file, else from the file it extends."""
        for source in (self, self.base):
            if key in (source.get(section) or {}):
                return source[section][key]
        raise KeyError(f"{section}.{key} is set neither in {self.path} nor in the file it extends")

    def file(self, section: str, key: str) -> Path:
        """A ``*_file`` setting, relative to this file's directory (as the loader reads it)."""
        return self.path.parent / self.setting(section, key)

    def shards(self) -> dict[str, Address]:
        """The physical MariaDB shards by name."""
        physical = (self.get("shards") or {}).get("physical") or {}
        return {name: (shard["host"], int(shard["port"])) for name, shard in physical.items()}

    def redis_nodes(self) -> list[Address]:
        return [host_port(node) for node in (self.get("redis") or {}).get("cluster_nodes") or []]

    def kafka_brokers(self) -> list[Address]:
        return [host_port(broker) for broker in str(self.setting("kafka", "bootstrap_servers")).split(",")]

    def mongodb(self) -> Address:
        uri = urlsplit(self.setting("mongodb", "uri"))
        return uri.hostname or "127.0.0.1", uri.port or 27017

    def nodes(self) -> list[tuple[str, Address]]:
        """Every server of the stack: what it is, and its address."""
        return [
            *((f"MariaDB shard {name}", address) for name, address in self.shards().items()),
            *(("Redis node", address) for address in self.redis_nodes()),
            *(("Kafka broker", address) for address in self.kafka_brokers()),
            ("FerretDB", self.mongodb()),
        ]


@pytest.fixture(scope="session")
def cluster_config() -> ClusterConfig:
    """The cluster configuration (``$SINGLETON_CLUSTER_CONFIG``, default config.cluster.yaml)."""
    return ClusterConfig(Path(os.environ.get(CONFIG_VARIABLE) or ROOT / "config.cluster.yaml"))


def _refuses(address: Address) -> str | None:
    try:
        socket.create_connection(address, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


@pytest.fixture(scope="session", autouse=True)
def cluster_stack_up(cluster_config: ClusterConfig) -> None:
    """Before the first test: every server of the configuration accepts a connection."""
    nodes = cluster_config.nodes()
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        errors = pool.map(_refuses, [address for _, address in nodes])
        down = [f"{what} at {h}:{p} ({error})" for (what, (h, p)), error in zip(nodes, errors, strict=True) if error]
    if down:
        pytest.exit(
            f"the cluster stack is not up, or not where {cluster_config.path} says: "
            + "; ".join(down)
            + ". Start it with `make services-cluster` (CLUSTER_NET moves it; "
            + f"{CONFIG_VARIABLE} names a configuration for its addresses).",
            returncode=pytest.ExitCode.TESTS_FAILED,
        )


# -- the service on the cluster stack -----------------------------------------------------------
def service_env(**extra: str) -> dict[str, str]:
    """A ``python -m service --config <cluster config>`` child's environment: none of the
    caller's SINGLETON_* settings (those point at the everyday stack), the suite's short
    waits, no dev admin key (the suite makes its own), logs on stderr only."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SINGLETON_")}
    return env | {
        "SINGLETON_SERVER__HEALTH_PROBE_INTERVAL_S": "0.25",
        "SINGLETON_RECONNECT__INITIAL_DELAY_S": "0.1",
        "SINGLETON_RECONNECT__MAX_DELAY_S": "1",
        "SINGLETON_AUTH__BOOTSTRAP_ADMIN_KEY_FILE": "",
        "SINGLETON_LOGGING__FILE": "",
        "SINGLETON_METRICS__PORT": "0",
        **extra,
    }


class ClusterService:
    """One ``python -m service`` on the cluster stack, and an admin's client for it."""

    def __init__(self, proc: subprocess.Popen, port: int, api: Any, log: Path):
        self.proc, self.port, self.api, self.log = proc, port, api, log
        self.base_url = f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def cluster_service(cluster_config: ClusterConfig, io_loop, tmp_path_factory) -> Iterator[ClusterService]:
    """The service on the cluster stack for a module's tests, with an admin key of its own."""
    from tornado.httpclient import AsyncHTTPClient

    from tests.conftest import Api
    from tests.helpers import free_port, run_service, terminate, wait_healthy

    env = service_env()
    config_arg = ["--config", str(cluster_config.path)]
    made = io_loop.run_sync(
        lambda: run_service(*config_arg, "keys", "create", "--role", "admin", env=env, timeout=90), timeout=100
    )
    assert made.returncode == 0, made.stderr
    port, log = free_port(), tmp_path_factory.mktemp("cluster-service") / "service.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", *config_arg, "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        io_loop.run_sync(lambda: wait_healthy(proc, port, timeout=90), timeout=100)
        api = Api(AsyncHTTPClient(), f"http://127.0.0.1:{port}", made.stdout.strip())
        yield ClusterService(proc, port, api, log)
    finally:
        if proc.poll() is None:
            io_loop.run_sync(lambda: terminate(proc), timeout=40)


def devstack(action: str, *names: str) -> None:
    """``devstack/services.sh --cluster ACTION NAMES`` for the stack this suite runs on."""
    result = subprocess.run(
        ["bash", str(ROOT / "devstack" / "services.sh"), "--cluster", action, *names],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def server_pid(name: str) -> int:
    """The pid of the cluster stack's server ``name`` (devstack's pid file)."""
    state = Path(os.environ.get("DEVSTACK_DIR") or ROOT / ".devstack-cluster")
    return int((state / "run" / f"{name}.pid").read_text().split()[0])
