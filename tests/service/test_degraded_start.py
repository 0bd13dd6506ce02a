"""The service starts whatever is down, serves what it can meanwhile, and connects
when the dependency comes: a real process, each dependency behind a TCP proxy
that the test opens only once the service is up."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.parse

import pytest

from managers.mysql import MySQLManager
from tests.helpers import ROOT, TcpProxy, free_port, wait_until
from tests.service.test_main import service_env


def target_port(config: dict, dependency: str) -> int:
    return {
        "mysql": config["mysql"]["port"],
        "redis": urllib.parse.urlsplit(config["redis"]["url"]).port,
        "mongodb": urllib.parse.urlsplit(config["mongodb"]["uri"]).port,
        "kafka": int(config["kafka"]["bootstrap_servers"].split(",")[0].rsplit(":", 1)[1]),
    }[dependency]


def through(proxy: TcpProxy, config: dict, dependency: str) -> dict[str, str]:
    """The environment that points the service's ``dependency`` at the proxy."""
    at = f"127.0.0.1:{proxy.port}"
    return {
        "mysql": {"SINGLETON_MYSQL__PORT": str(proxy.port)},
        "redis": {"SINGLETON_REDIS__URL": f"redis://{at}/15"},
        "mongodb": {"SINGLETON_MONGODB__URI": f"mongodb://{at}/"},
        "kafka": {"SINGLETON_KAFKA__BOOTSTRAP_SERVERS": at},
    }[dependency]


@pytest.mark.gen_test(timeout=150)
@pytest.mark.parametrize("dependency", ["mysql", "redis", "mongodb", "kafka"])
async def test_starts_with_a_dependency_down_and_connects_when_it_comes(dependency, api, config, tmp_path):
    proxy = TcpProxy(target_port(config, dependency))
    port, ops_port = free_port(), free_port()
    log_file = tmp_path / "service.log"  # a file, not a pipe: nobody reads a pipe while the test polls
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--port", str(port)],
        cwd=ROOT,
        env=service_env(
            SINGLETON_LOGGING__LEVEL="INFO", SINGLETON_METRICS__PORT=str(ops_port), **through(proxy, config, dependency)
        ),
        stdout=log_file.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    service = api.at(f"http://127.0.0.1:{port}")
    # The whole report, whoever asks: the metrics listener's. (Without MariaDB no key can be
    # checked, and the API port tells a caller it cannot check only the status.)
    operator = api.at(f"http://127.0.0.1:{ops_port}").with_key(None)

    async def answers(path: str) -> int | None:
        assert proc.poll() is None, log_file.read_text()[-5000:]
        try:
            return (await service.get(path))[0]
        except OSError:
            return None

    try:
        await wait_until(lambda: answers("/health/live"), timeout=30, what="the port to open without " + dependency)

        async def reported_down():
            code, report, _ = await operator.get("/health")
            statuses = {name: dep["status"] for name, dep in report.get("dependencies", {}).items()}
            others_up = all(status == "ok" for name, status in statuses.items() if name != dependency)
            return statuses.get(dependency) == "down" and others_up and (code, report)

        code, report = await wait_until(reported_down, timeout=20, what=f"/health to report {dependency} down")
        if dependency == "mysql":
            # Nothing of the API can be served: not ready, down, and calls are 503 (never 500).
            assert code == 503 and report["status"] == "down"
            assert await answers("/health/ready") == 503
            status, error, headers = await service.post("/api/v1/users", {"email": "x@example.com", "name": "X"})
            assert status == 503 and error["error"]["code"] == "dependency_unavailable" and headers["Retry-After"]
        else:
            # Writes go on (to the outbox), reads skip what is missing: degraded, still ready.
            assert code == 200 and report["status"] == "degraded" and dependency in report["down"]
            assert await answers("/health/ready") == 200
            user = await service.new_user(name=f"While {dependency} was down")
            status, fetched, _ = await service.get(f"/api/v1/users/{user['id']}")
            assert status == 200 and fetched == user
            if dependency == "mongodb":
                status, error, _ = await service.get(f"/api/v1/analytics/users/{user['id']}")
                assert status == 503 and error["error"]["code"] == "dependency_unavailable"

        await proxy.open()  # the dependency comes; the service connects without a restart

        async def healthy():
            return (await service.get("/health"))[1]["status"] == "ok"

        await wait_until(healthy, timeout=60, interval=0.3, what=f"the service to connect to {dependency}")
        assert await answers("/health/ready") == 200
        later = await service.new_user(name=f"After {dependency} came")
        if dependency == "kafka":

            async def published():
                row = await MySQLManager.instance().home.fetchone(
                    "SELECT COUNT(*) AS n FROM outbox WHERE partition_key IN (%s, %s) AND published_at IS NULL",
                    (user["id"], later["id"]),
                )
                return row["n"] == 0

            await wait_until(published, timeout=30, what="the events written while kafka was down to be published")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:  # in a thread: the proxy, on this loop, must keep forwarding while the service stops
            await asyncio.get_running_loop().run_in_executor(None, lambda: proc.wait(timeout=30))
        finally:
            if proc.poll() is None:
                proc.kill()
            await proxy.close()
    out = log_file.read_text()
    assert proc.returncode == 0, out[-5000:]
    assert "Traceback" not in out
    assert "Task was destroyed but it is pending" not in out  # e.g. a Kafka producer's stop cut short
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    unreachable = [line for line in lines if line["msg"].startswith("dependency unreachable")]
    assert len(unreachable) <= 2, (
        f"one line for the outage (two consumers of one broker may each say so): {unreachable}"
    )
    warnings = [
        line for line in lines if line["level"] in ("warning", "error") and line["logger"] != "singleton.access"
    ]
    assert len(warnings) <= 12, f"an outage is a few lines, not thousands: {warnings}"
    relay = [line["msg"] for line in warnings if line["msg"].startswith("outbox relay")]
    assert not relay or dependency == "kafka", f"the {dependency} outage is not the relay's to report: {relay}"
