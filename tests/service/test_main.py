"""``python -m service`` as a real process: bad config, unreachable dependency, clean shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from handlers.base import BaseHandler
from service.__main__ import drain
from tests.conftest import GateHandler
from tests.helpers import ROOT, env_overrides, free_port, wait_until


def service_env(**extra: str) -> dict[str, str]:
    """The environment of a service subprocess: the same config the tests' own managers
    load (the caller's SINGLETON_* variables, e.g. a second devstack's ports, then the
    test overrides), plus ``extra``."""
    env = dict(os.environ)
    env.update(env_overrides())
    env.update(extra)
    return env


def run_service(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_invalid_config_exits_non_zero_naming_the_key_before_connecting():
    # MySQL points at a closed port: had the service tried to connect, it would log so.
    env = service_env(SINGLETON_KAFKA__REQUEST_TIMEOUT_S="soon", SINGLETON_MYSQL__PORT=str(free_port()))
    result = run_service(env=env, timeout=20)
    assert result.returncode == 2
    assert "kafka.request_timeout_s" in result.stderr
    assert "connect failed" not in result.stdout + result.stderr


def test_unreachable_dependency_exits_1_naming_it():
    env = service_env(
        SINGLETON_MYSQL__PORT=str(free_port()), SINGLETON_STARTUP__ATTEMPTS="2", SINGLETON_STARTUP__RETRY_DELAY_S="0.1"
    )
    result = run_service("--port", str(free_port()), env=env, timeout=60)
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    failed = [line for line in lines if line["msg"] == "startup failed"]
    assert failed and failed[0]["dependency"] == "mysql"
    assert "Traceback" not in result.stderr


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
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "service did not become healthy within 60 s"
                time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in out + err
    messages = [json.loads(line)["msg"] for line in out.splitlines() if line.startswith("{")]
    assert messages[-1] == "stopped"


@pytest.mark.gen_test
async def test_drain_waits_for_in_flight_requests(http_client, base_url):
    GateHandler.gate = asyncio.Event()
    request = asyncio.ensure_future(http_client.fetch(f"{base_url}/_test/gate"))
    await wait_until(lambda: BaseHandler.in_flight > 0, what="the gated request to start")
    draining = asyncio.ensure_future(drain(timeout_s=10))
    await asyncio.sleep(0.2)
    assert not draining.done(), "drain returned while a request was still in flight"
    GateHandler.gate.set()
    response = await request
    await asyncio.wait_for(draining, 5)
    assert response.code == 200
    assert BaseHandler.in_flight == 0
