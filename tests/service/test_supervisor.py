"""server.processes: a supervisor and two workers sharing the port, restarted one at a
time under steady load without failing a request."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import uuid

import pytest
from tornado.httpclient import HTTPClientError

from managers.mysql import MySQLManager
from service import supervisor
from tests.conftest import ensure_topic
from tests.helpers import ROOT, bug_lines, bugs, free_port, wait_until
from tests.service.test_main import service_env

CLIENTS = 8
# Its own topic, consumer group and analytics database: the load below is a burst of
# events no other test should have to wait for the analytics of.
OWN_STREAM = {
    "SINGLETON_KAFKA__TOPIC": "singleton-events-test-supervisor",
    "SINGLETON_KAFKA__ANALYTICS_GROUP": "singleton-analytics-test-supervisor",
    "SINGLETON_MONGODB__DATABASE": "singleton_test_supervisor",
}


@pytest.mark.gen_test(timeout=240)
async def test_a_rolling_restart_under_steady_load_fails_no_request(api, config, tmp_path):
    await ensure_topic({**config["kafka"], "topic": OWN_STREAM["SINGLETON_KAFKA__TOPIC"]})
    port = free_port()
    log_file = tmp_path / "supervisor.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--port", str(port)],
        cwd=ROOT,
        env=service_env(
            SINGLETON_SERVER__PROCESSES="2", SINGLETON_METRICS__PORT="0", SINGLETON_LOGGING__LEVEL="INFO", **OWN_STREAM
        ),
        stdout=log_file.open("w"),
        stderr=subprocess.STDOUT,
    )
    service = api.at(f"http://127.0.0.1:{port}")

    def logged(message: str) -> list[dict]:
        text = log_file.read_text()
        whole = text[: text.rfind("\n") + 1]  # a line the workers are still writing is not read yet
        lines = [json.loads(line) for line in whole.splitlines() if line.startswith("{")]
        return [line for line in lines if line["msg"] == message]

    try:
        await wait_until(lambda: len(logged("instance ready")) == 2, timeout=60, what="both workers ready")
        user = await service.new_user(name="Steady")
        outcomes: list[str] = []
        keys: set[str] = set()
        stop = asyncio.Event()

        async def call(method: str, path: str, body=None, headers=None) -> str:
            """As a careful client: a connection that fails is retried (reads always,
            writes with their Idempotency-Key); a refused or failed answer is a failure."""
            for _ in range(5):
                try:
                    code, _, _ = await service.request(method, path, body, headers=headers)
                except (OSError, HTTPClientError):
                    await asyncio.sleep(0.05)
                    continue
                return "ok" if code < 400 else f"status {code}"
            return "connection failed 5 times"

        async def client(n: int) -> None:
            while not stop.is_set():
                if n % 2:
                    outcomes.append(await call("GET", f"/api/v1/users/{user['id']}"))
                else:
                    key = uuid.uuid4().hex
                    keys.add(key)
                    body = {"user_id": user["id"], "amount": "1.00", "currency": "USD"}
                    outcomes.append(await call("POST", "/api/v1/payments", body, {"Idempotency-Key": key}))

        clients = [asyncio.ensure_future(client(n)) for n in range(CLIENTS)]
        await wait_until(lambda: len(outcomes) > 50, timeout=30, what="steady load")
        pids_before = {line["pid"] for line in logged("worker replaced")}
        proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: logged("rolling restart done"), timeout=120, what="the rolling restart to finish")
        assert len(logged("instance ready")) == 4, "each replacement took connections once ready"
        during = len(outcomes)
        await wait_until(lambda: len(outcomes) > during + 50, timeout=30, what="load after the restart")
        stop.set()
        await asyncio.gather(*clients)

        replaced = logged("worker replaced")
        assert len(replaced) == 2 and not pids_before
        failures = [o for o in outcomes if o != "ok"]
        assert failures == [], f"{len(failures)} of {len(outcomes)} requests failed: {set(failures)}"
        # Retried writes created each payment once.
        row = await MySQLManager.instance().home.fetchone(
            "SELECT COUNT(*) AS n FROM payments WHERE user_id = %s", (user["id"],)
        )
        assert row["n"] == len(keys)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.get_running_loop().run_in_executor(None, lambda: proc.wait(timeout=60))
    assert proc.returncode == 0, log_file.read_text()[-3000:]
    text = log_file.read_text()
    assert "Traceback" not in text, text[max(0, text.find("Traceback") - 1500) : text.find("Traceback") + 3000]


@pytest.mark.gen_test(timeout=30)
async def test_a_worker_that_cannot_be_started_again_is_a_bug_retried_with_backoff(config, monkeypatch, caplog):
    """The supervisor's own loop, in this process: a worker (a real process) dies, and
    starting its replacement fails once, as it would out of file descriptors. That is
    logged as a bug, not an outage, and tried again; it once ended the watch for good,
    leaving the worker's place empty."""
    caplog.set_level(logging.INFO, logger="singleton.supervisor")
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF_S", (0.01, 0.05))
    boss = supervisor.Supervisor(config, [])
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "raise SystemExit(3)")
    dead = supervisor.Worker(0, 0, proc)
    boss.workers[0] = dead
    replacement = supervisor.Worker(0, 0, proc)
    attempts = []

    async def spawn(index: int, ops_port: int | None = None, join_when_ready: bool = True) -> supervisor.Worker:
        attempts.append(index)
        if len(attempts) == 1:
            raise OSError(24, "Too many open files")
        return replacement

    monkeypatch.setattr(boss, "_spawn", spawn)
    before = bugs("supervisor_respawn")
    await asyncio.wait_for(boss._watch(dead), 10)
    assert boss.workers[0] is replacement and attempts == [0, 0]
    assert bugs("supervisor_respawn") == before + 1
    [line] = bug_lines(caplog, "supervisor_respawn")
    assert "Too many open files" in line.error and line.worker == 0
