"""The service with config.tls.yaml: every connection to MariaDB, Redis and Kafka over TLS to
the everyday stack's TLS endpoints (devstack/lib/tls.sh), a real process serving REST and
WebSocket; and the same with a CA that signed none of the servers' certificates."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from managers import config as config_module
from tests.handlers.test_ws import Client
from tests.helpers import (
    KAFKA_SSL_PORT,
    REDIS_PORT,
    REDIS_TLS_PORT,
    ROOT,
    free_port,
    make_ca,
    run_service,
    service_env,
    tls_section,
    wait_until,
)

REDIS_DB = 14  # the TLS service's alone, so what is in it came over TLS
VERIFY_FAILED = "CERTIFICATE_VERIFY_FAILED"


def tls_env(**tls_values: str) -> dict[str, str]:
    """The suite's environment for a service on config.tls.yaml: devstack's files wherever
    DEVSTACK_DIR is, the TLS endpoints of this stack's ports."""
    section = tls_section(**tls_values)
    return service_env(
        **config_module.as_env(
            {
                "mysql": {"tls": section},
                "redis": {"url": f"rediss://127.0.0.1:{REDIS_TLS_PORT}/{REDIS_DB}", "tls": section},
                "kafka": {"bootstrap_servers": f"127.0.0.1:{KAFKA_SSL_PORT}", "tls": section},
                "logging": {"level": "INFO"},
            },
            base={},
        )
    )


class TLSService:
    """``python -m service --config config.tls.yaml`` on a free port, its output in a file."""

    def __init__(self, api, log_file: Path, env: dict[str, str]):
        self.port, ops_port = free_port(), free_port()
        self.log_file = log_file
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "--config", "config.tls.yaml", "--port", str(self.port)],
            cwd=ROOT,
            env={**env, "SINGLETON_METRICS__PORT": str(ops_port)},
            stdout=log_file.open("w"),
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.api = api.at(self.base_url)
        # The whole /health report for anyone: the metrics listener's (without MariaDB no key
        # can be checked, and the API port then tells only the status).
        self.operator = api.at(f"http://127.0.0.1:{ops_port}").with_key(None)

    async def get(self, path: str):
        assert self.proc.poll() is None, self.log_file.read_text()[-5000:]
        try:
            return await (self.operator if path == "/health" else self.api).get(path)
        except OSError:
            return None, None, None

    async def stop(self) -> list[dict]:
        """SIGTERM; it must exit 0 with no traceback. Its log lines."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.get_running_loop().run_in_executor(None, lambda: self.proc.wait(timeout=40))
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        out = self.log_file.read_text()
        assert self.proc.returncode == 0, out[-5000:]
        assert "Traceback" not in out
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@contextlib.asynccontextmanager
async def plain_redis() -> AsyncIterator[aioredis.Redis]:
    """One plaintext connection to the TLS service's Redis database."""
    client = aioredis.Redis(port=REDIS_PORT, db=REDIS_DB, socket_timeout=5, single_connection_client=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.mark.gen_test(timeout=120)
async def test_rest_and_websocket_with_every_connection_over_tls(api, tmp_path):
    async with plain_redis() as plain:
        await plain.flushdb()  # what is there at the end, this run's service wrote
    service = TLSService(api, tmp_path / "service.log", tls_env())
    try:

        async def all_ok():
            code, report, _ = await service.get("/health")
            return code == 200 and report["status"] == "ok" and report

        report = await wait_until(all_ok, timeout=60, interval=0.2, what="the TLS service to reach everything")
        assert {name for name, dep in report["dependencies"].items() if dep["status"] == "ok"} >= {
            "mysql",  # as singleton_tls, whom MariaDB lets in over TLS with a client certificate only
            "redis",
            "kafka",
        }
        user = await service.api.new_user(name="Over TLS")
        code, fetched, _ = await service.api.get(f"/api/v1/users/{user['id']}")  # a read: cached in Redis
        assert code == 200 and fetched == user
        socket = await Client.connect(service.api, user["id"], base_url=service.base_url)
        payment = await service.api.new_payment(user["id"], amount="12.34")
        # Through the outbox, the producer and this process's broadcast reader: Kafka's SSL listener.
        event = await socket.next_frame("payment_created", timeout=30, id=payment["id"])
        assert event["user_id"] == user["id"] and event["data"]["amount"] == "12.34"
        socket.conn.close()

        # Redis: what the service cached is in its database, and every connection to that
        # database but this test's own is on the TLS port (the plaintext one is REDIS_PORT).
        async with plain_redis() as plain:
            assert await plain.dbsize() > 0
            me = await plain.client_id()
            clients = [c for c in await plain.client_list() if c["db"] == str(REDIS_DB) and c["id"] != str(me)]
        assert clients and {c["laddr"] for c in clients} == {f"127.0.0.1:{REDIS_TLS_PORT}"}

        # The commands that need MariaDB only connect the same way.
        listed = await run_service("--config", "config.tls.yaml", "keys", "list", env=tls_env())
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.strip()  # the suite's admin key at least
    finally:
        await service.stop()


@pytest.mark.gen_test(timeout=120)
async def test_another_ca_is_each_dependency_down_with_the_reason_not_a_crash(api, tmp_path):
    other_ca = str(make_ca(tmp_path / "other-ca"))
    service = TLSService(api, tmp_path / "service.log", tls_env(ca_file=other_ca))
    try:
        await wait_until(lambda: service.get("/health/live"), timeout=30, what="the port to open")

        async def all_down():
            code, report, _ = await service.get("/health")
            statuses = {name: dep["status"] for name, dep in (report or {}).get("dependencies", {}).items()}
            return all(statuses.get(name) == "down" for name in ("mysql", "redis", "kafka")) and (code, report)

        code, report = await wait_until(all_down, timeout=30, interval=0.2, what="/health to report all three down")
        assert code == 503 and report["status"] == "down"
        assert report["dependencies"]["mongodb"]["status"] == "ok"  # plaintext, untouched
        assert (await service.get("/health/ready"))[0] == 503
        status, error, _ = await service.api.post("/api/v1/users", {"email": "tls@example.com", "name": "No"})
        assert status == 503 and error["error"]["code"] == "dependency_unavailable"
    finally:
        lines = await service.stop()

    def says_why(predicate) -> bool:
        return any(predicate(line) and VERIFY_FAILED in json.dumps(line) for line in lines)

    assert says_why(lambda line: line.get("dependency") == "mysql"), "no MariaDB line names the certificate"
    assert says_why(lambda line: line["logger"] == "singleton.redis"), "no Redis line names the certificate"
    assert says_why(lambda line: line["logger"].startswith("aiokafka")), "no Kafka line names the certificate"
