"""Safe defaults, as real processes: the shipped configuration mints no admin key, no
configuration or environment turns key checks off, and the bench's own entry point,
which does, says so in its log, /health and /metrics."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from tornado.httpclient import AsyncHTTPClient

from managers import config as config_module
from tests.conftest import Api
from tests.helpers import (
    ROOT,
    UNIT_SECRETS,
    free_port,
    fresh_database,
    in_thread,
    metric,
    run_service,
    service_env,
    terminate,
    wait_healthy,
    wait_until,
)


@pytest.mark.gen_test(timeout=90)
async def test_the_shipped_auth_section_mints_no_admin_key(tmp_path, config):
    """config.yaml as shipped, copied beside nothing (a key file it named would land in
    tmp_path), on an empty database: the service starts and serves, and no key exists."""
    shutil.copy(config_module.DEFAULT_PATH, tmp_path / "config.yaml")
    database = "singleton_test_no_bootstrap"
    fresh_database(config["mysql"], database)
    env = service_env(
        SINGLETON_MYSQL__DATABASE=database,
        SINGLETON_MYSQL__PASSWORD=config["mysql"]["password"],
        SINGLETON_MYSQL__MIGRATE_PASSWORD=config["mysql"]["migrate_password"],
        SINGLETON_AUTH__TOKEN_SECRET=config["auth"]["token_secret"],
        SINGLETON_LOGGING__LEVEL="INFO",
    )
    del env["SINGLETON_AUTH__BOOTSTRAP_ADMIN_KEY_FILE"]  # the suite's own override: the shipped value here
    port = free_port()
    command = [sys.executable, "-m", "service", "--config", str(tmp_path / "config.yaml"), "--port", str(port)]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        await wait_healthy(proc, port)
        ready = Api(AsyncHTTPClient(), f"http://127.0.0.1:{port}", None)
        await wait_until(lambda: ready_now(ready), timeout=30, what="the service to be ready (migrated)")
        listed = await run_service("--config", str(tmp_path / "config.yaml"), "keys", "list", env=env)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout == "", "the shipped configuration made a key"
        out, _ = await terminate(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "no admin key existed" not in out
    assert not list(tmp_path.rglob("*.key")), "a key file was written"


async def ready_now(api: Api) -> bool:
    return (await api.get("/health/ready"))[0] == 200


@pytest.mark.parametrize("value", ["false", "true"])
@pytest.mark.gen_test(timeout=30)
async def test_the_environment_cannot_turn_key_checks_off(value):
    result = await run_service(env=service_env(SINGLETON_AUTH__ENABLED=value), timeout=20)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("invalid configuration: auth.enabled (or SINGLETON_AUTH__ENABLED) is not a setting")


@pytest.mark.gen_test(timeout=90)
async def test_the_bench_switch_serves_without_keys_and_says_so_everywhere(api):
    assert metric("singleton_auth_disabled") == 0, "a normal start checks keys"
    assert (await api.get("/health"))[1]["auth"] == {"status": "ok"}

    port, metrics_port = free_port(), free_port()
    env = service_env(SINGLETON_METRICS__PORT=str(metrics_port), SINGLETON_LOGGING__LEVEL="INFO")
    command = [sys.executable, "-m", "bench.without", "auth", "--port", str(port), "--role", "api"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        await wait_healthy(proc, port)
        anyone = Api(AsyncHTTPClient(), f"http://127.0.0.1:{port}", None)
        code, keys, _ = await anyone.get("/api/v1/api-keys")
        assert code == 200 and "items" in keys, "no key, and served as an admin"
        code, health, _ = await anyone.get("/health")
        assert code == 200 and health["auth"] == {"status": "disabled"}
        response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{metrics_port}/metrics")
        assert "singleton_auth_disabled 1.0" in response.body.decode()
        out, _ = await terminate(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    warnings = [json.loads(line) for line in out.splitlines() if "API keys are not checked" in line]
    assert warnings and warnings[0]["level"] == "warning"


@pytest.mark.gen_test(timeout=30)
async def test_the_bench_switch_refuses_several_processes():
    """Its workers would be plain ``python -m service``: checking keys after all. (Fast tier:
    refused before anything connects, so stand-in secrets do on a machine without devstack's.)"""
    command = [sys.executable, "-m", "bench.without", "auth", "--port", str(free_port())]
    env = config_module.as_env(UNIT_SECRETS, base=service_env(SINGLETON_SERVER__PROCESSES="2"))
    result = await run_service_module(command, env)
    assert result.returncode == 2 and "server.processes must be 1" in result.stderr


async def run_service_module(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return await in_thread(subprocess.run, command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=20)
