"""``python -m service`` as a real process: bad config, clean shutdown, the keys commands, the first admin key."""

from __future__ import annotations

import asyncio
import json
import re
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable

import pytest
from tornado.httpclient import AsyncHTTPClient

from domain import auth
from managers.mysql import MIGRATIONS_DIR, MySQLManager
from service.__main__ import drain
from tests.conftest import Api, GateHandler
from tests.helpers import (
    ROOT,
    free_port,
    fresh_database,
    run_service,
    service_env,
    terminate,
    wait_healthy,
    wait_until,
)


@pytest.mark.gen_test
async def test_invalid_config_exits_non_zero_naming_the_key_before_connecting():
    result = await run_service(env=service_env(SINGLETON_KAFKA__REQUEST_TIMEOUT_S="soon"), timeout=20)
    assert result.returncode == 2
    assert result.stderr.startswith("invalid configuration: kafka.request_timeout_s: 'soon' is not of type")
    # Nothing started: a manager, or the logger, would have written a line to stdout.
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.integration  # a real start: /health answers 200 once MariaDB is reached
@pytest.mark.gen_test(timeout=60)
async def test_sigterm_stops_cleanly_with_exit_0():
    out, err = await run_until_healthy_then_stop(service_env())
    assert "Traceback" not in out + err
    messages = [json.loads(line)["msg"] for line in out.splitlines() if line.startswith("{")]
    assert messages[-1] == "stopped"


KEY = re.compile(r"^sgl_(admin|user)_[0-9A-Za-z]{38}$")


@pytest.mark.gen_test(timeout=60)
async def test_keys_cli_creates_lists_and_revokes(services):
    env = service_env()
    created = await run_service("keys", "create", "--role", "admin", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert KEY.match(key) and auth.well_formed(key)
    assert created.stdout == key + "\n", "stdout holds the key and nothing else"

    listed = await run_service("keys", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    keys = [json.loads(line) for line in listed.stdout.splitlines()]
    [mine] = [k for k in keys if key.startswith(k["prefix"])]
    assert mine["role"] == "admin" and mine["revoked_at"] is None
    assert key not in listed.stdout

    revoked = await run_service("keys", "revoke", mine["id"], env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["revoked_at"] is not None

    missing = await run_service("keys", "create", "--role", "user", "--user-id", str(uuid.uuid4()), env=env)
    assert missing.returncode == 1 and "user_not_found" in missing.stderr and missing.stdout == ""


@pytest.mark.gen_test(timeout=90)
async def test_first_start_with_no_admin_key_writes_one_to_a_private_file(tmp_path, config):
    database = "singleton_test_bootstrap"
    fresh_database(config["mysql"], database)
    key_file = tmp_path / "secrets" / "admin.key"
    env = service_env(SINGLETON_MYSQL__DATABASE=database, SINGLETON_AUTH__BOOTSTRAP_ADMIN_KEY_FILE=str(key_file))

    out, _ = await run_until_healthy_then_stop(env, until=key_file.exists)
    key = key_file.read_text().strip()
    assert KEY.match(key) and key.startswith("sgl_admin_")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert str(key_file) in out and key not in out, "the log says where the key is, never what it is"

    await run_until_healthy_then_stop(env, check_key=key)
    assert key_file.read_text().strip() == key, "a second start creates no other key"
    listed = await run_service("keys", "list", env=env)
    assert [k["role"] for k in map(json.loads, listed.stdout.splitlines())] == ["admin"]


async def run_until_healthy_then_stop(
    env: dict[str, str], check_key: str | None = None, until: Callable[[], bool] | None = None
) -> tuple[str, str]:
    """Start the service, wait for /health (and ``until()``; and try ``check_key``),
    SIGTERM it: its stdout and stderr, once it has exited 0."""
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
        await wait_healthy(proc, port)
        if until is not None:
            await wait_until(until, timeout=30, what=str(until))
        if check_key is not None:
            code, _, _ = await Api(AsyncHTTPClient(), f"http://127.0.0.1:{port}", check_key).get("/api/v1/api-keys")
            assert code == 200
        out, err = await terminate(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    return out, err


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


@pytest.mark.gen_test(timeout=120)
async def test_migrate_command_then_a_service_that_holds_no_migration_credentials(config):
    """``python -m service migrate`` brings an empty database up to date, as the migration
    user; a service with ``mysql.migrate_user`` empty then serves from it, holding only its
    own user's credentials."""
    database = "singleton_test_migrate_command"
    fresh_database(config["mysql"], database)
    env = service_env(SINGLETON_MYSQL__DATABASE=database)
    migrated = await run_service("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    versions = sorted(path.stem for path in MIGRATIONS_DIR.glob("*.sql"))
    assert [json.loads(line) for line in migrated.stdout.splitlines()] == [{"shard": "main", "applied": versions}]
    again = await run_service("migrate", env=env)
    assert [json.loads(line) for line in again.stdout.splitlines()] == [{"shard": "main", "applied": []}]

    without = {**env, "SINGLETON_MYSQL__MIGRATE_USER": '""', "SINGLETON_MYSQL__MIGRATE_PASSWORD_FILE": '""'}
    await run_until_healthy_then_stop(without)
    refused = await run_service("shards", "move", "1", "--to", "main", env=without)
    assert refused.returncode == 2 and "migrate_user" in refused.stderr


@pytest.mark.gen_test(timeout=60)
async def test_a_key_made_or_revoked_from_the_shell_is_audited_as_an_operators_command(services):
    env = service_env()
    created = await run_service("keys", "create", "--role", "admin", env=env)
    assert created.returncode == 0, created.stderr
    [key] = [k for k in await auth.list_keys() if created.stdout.startswith(k["prefix"])]
    revoked = await run_service("keys", "revoke", key["id"], env=env)
    assert revoked.returncode == 0, revoked.stderr
    rows = await MySQLManager.instance().home.fetchall(
        "SELECT action, actor_key_id, request_id, remote_ip FROM audit_events"
        " WHERE resource_id = %s ORDER BY created_at",
        (key["id"],),
    )
    assert [r["action"] for r in rows] == ["api_key.created", "api_key.revoked"]
    assert all(r["actor_key_id"] is None and r["remote_ip"] is None for r in rows)
    assert rows[0]["request_id"].startswith("keys-create-") and rows[1]["request_id"].startswith("keys-revoke-")
