"""``python -m service`` as a real process: bad config, clean shutdown, the keys commands, the first admin key."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import stat
import subprocess
import sys
import urllib.request
import uuid

import pytest

from service.__main__ import drain
from tests.conftest import GateHandler
from tests.helpers import ROOT, free_port, fresh_database, run_service, service_env, wait_for_health, wait_until


def test_invalid_config_exits_non_zero_naming_the_key_before_connecting():
    # MySQL points at a closed port: had the service tried to connect, it would log so.
    env = service_env(SINGLETON_KAFKA__REQUEST_TIMEOUT_S="soon", SINGLETON_MYSQL__PORT=str(free_port()))
    result = run_service(env=env, timeout=20)
    assert result.returncode == 2
    assert "kafka.request_timeout_s" in result.stderr
    assert "connect failed" not in result.stdout + result.stderr


@pytest.mark.integration  # a real start: /health answers 200 once MariaDB is reached
def test_sigterm_stops_cleanly_with_exit_0():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--port", str(port)],
        cwd=ROOT,
        env=service_env(SINGLETON_LOGGING__LEVEL="INFO"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_health(proc, port)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in out + err
    messages = [json.loads(line)["msg"] for line in out.splitlines() if line.startswith("{")]
    assert messages[-1] == "stopped"


KEY = re.compile(r"^sk_(admin|user)_[0-9A-Za-z]{32}$")


def test_keys_cli_creates_lists_and_revokes(services):
    env = service_env()
    created = run_service("keys", "create", "--role", "admin", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert KEY.match(key) and created.stdout == key + "\n", "stdout holds the key and nothing else"

    listed = run_service("keys", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    keys = [json.loads(line) for line in listed.stdout.splitlines()]
    [mine] = [k for k in keys if key.startswith(k["prefix"])]
    assert mine["role"] == "admin" and mine["revoked_at"] is None
    assert key not in listed.stdout

    revoked = run_service("keys", "revoke", mine["id"], env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["revoked_at"] is not None

    missing = run_service("keys", "create", "--role", "user", "--user-id", str(uuid.uuid4()), env=env)
    assert missing.returncode == 1 and "user_not_found" in missing.stderr and missing.stdout == ""


def test_first_start_with_no_admin_key_writes_one_to_a_private_file(tmp_path, config):
    database = "singleton_test_bootstrap"
    fresh_database(config["mysql"], database)
    key_file = tmp_path / "secrets" / "admin.key"
    env = service_env(SINGLETON_MYSQL__DATABASE=database, SINGLETON_AUTH__BOOTSTRAP_ADMIN_KEY_FILE=str(key_file))

    out = run_until_healthy_then_stop(env)
    key = key_file.read_text().strip()
    assert KEY.match(key) and key.startswith("sk_admin_")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert str(key_file) in out and key not in out, "the log says where the key is, never what it is"

    out = run_until_healthy_then_stop(env, check_key=key)
    assert key_file.read_text().strip() == key, "a second start creates no other key"
    listed = run_service("keys", "list", env=env)
    assert [k["role"] for k in map(json.loads, listed.stdout.splitlines())] == ["admin"]


def run_until_healthy_then_stop(env: dict[str, str], check_key: str | None = None) -> str:
    """Start the service, wait for /health (and try ``check_key``), SIGTERM it; its stdout."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--port", str(port)],
        cwd=ROOT,
        env={**env, "SINGLETON_LOGGING__LEVEL": "INFO"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_health(proc, port)
        if check_key is not None:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/v1/api-keys", headers={"Authorization": f"Bearer {check_key}"}
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                assert response.status == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    return out


@pytest.mark.gen_test
async def test_drain_waits_for_in_flight_requests(http_client, base_url, app):
    GateHandler.gate = asyncio.Event()
    request = asyncio.ensure_future(http_client.fetch(f"{base_url}/_test/gate"))
    traffic = app.settings["traffic"]
    await wait_until(lambda: traffic.in_flight > 0, what="the gated request to start")
    draining = asyncio.ensure_future(drain(traffic, timeout_s=10))
    await asyncio.sleep(0.2)
    assert not draining.done(), "drain returned while a request was still in flight"
    GateHandler.gate.set()
    response = await request
    await asyncio.wait_for(draining, 5)
    assert response.code == 200
    assert traffic.in_flight == 0
