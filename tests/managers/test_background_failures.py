"""Each background loop of the managers, on the real servers, meets an error that is not
an outage of its dependency: it must say "bug" (an ERROR with its traceback, counted in
singleton_background_errors_total), never "unreachable" or "down", and keep going."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from managers.health import HealthMonitor
from managers.kafka_consumer import BroadcastConsumer
from managers.mysql import Database
from managers.redis import RedisManager
from tests.helpers import bug_lines, bugs, fresh_database, metric, wait_until


@pytest.mark.gen_test(timeout=60)
async def test_a_broken_migration_is_a_bug_not_an_unreachable_database(config, tmp_path: Path, caplog):
    caplog.set_level(logging.INFO)
    (tmp_path / "0001_broken.sql").write_text("CREATE TABLE broken (id INT PRIMARY KEY, oops NOT_A_TYPE);\n")
    database = "singleton_test_broken_migration"
    fresh_database(config["mysql"], database)

    class BrokenMigrations(Database):
        async def migrate(self, directory: Path = tmp_path) -> list[str]:
            return await super().migrate(directory)

    manager = BrokenMigrations(
        "main", {**config["mysql"], "database": database}, {"initial_delay_s": 0.05, "max_delay_s": 0.1}
    )
    before = bugs("mysql_connect")
    task = asyncio.create_task(manager._connect_until_ready())
    try:
        await wait_until(lambda: bugs("mysql_connect") >= before + 3, timeout=30, what="three failed attempts")
        assert not manager.ready.is_set()
        [line] = bug_lines(caplog, "mysql_connect")  # logged once, however many retries
        assert line.levelname == "ERROR" and line.exc_info is not None
        assert "NOT_A_TYPE" in line.error
        assert not [r for r in caplog.records if "unreachable" in r.getMessage()]
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        await manager.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_bug_in_a_dependency_check_says_error_not_down(services, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monitor = HealthMonitor.instance()
    assert (await monitor.refresh())["dependencies"]["redis"]["status"] == "ok"
    up = metric("singleton_dependency_up", {"dependency": "redis"})
    before = bugs("health_check_redis")

    async def broken_ping() -> None:
        raise AttributeError("'Redis' object has no attribute 'pingg'")

    monkeypatch.setattr(RedisManager.instance(), "ping", broken_ping)
    report = await monitor.refresh()
    assert report["dependencies"]["redis"]["status"] == "error"
    assert "pingg" in report["dependencies"]["redis"]["error"]
    assert report["status"] == "degraded" and "redis" in report["down"]
    assert metric("singleton_dependency_up", {"dependency": "redis"}) == up == 1
    # The monitor's own probe may check too meanwhile: every failed check counts, one is logged.
    assert bugs("health_check_redis") > before
    assert len(bug_lines(caplog, "health_check_redis")) == 1
    assert not [r for r in caplog.records if r.getMessage() == "dependency down"]

    monkeypatch.undo()
    assert (await monitor.refresh())["dependencies"]["redis"]["status"] == "ok"


@pytest.mark.gen_test(timeout=60)
async def test_a_bug_in_the_broadcast_reader_is_an_error_and_the_reader_goes_on(services, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    reader = BroadcastConsumer.instance()
    assert reader.status()["status"] == "ok"
    before = bugs("kafka_broadcast_consumer")
    calls = 0

    async def broken_read() -> int:
        nonlocal calls
        calls += 1
        raise KeyError("partition")

    monkeypatch.setattr(reader, "read_batch", broken_read)
    await wait_until(lambda: calls >= 2, timeout=20, what="the reader to retry after the bug")
    assert reader.status()["status"] == "error"
    assert (await HealthMonitor.instance().refresh())["consumers"]["broadcast"]["status"] == "error"
    assert bugs("kafka_broadcast_consumer") >= before + 2
    assert len(bug_lines(caplog, "kafka_broadcast_consumer")) == 1
    assert not [r for r in caplog.records if r.getMessage() == reader.failing_message]

    monkeypatch.undo()
    await wait_until(lambda: reader.status()["status"] == "ok", timeout=20, what="the reader back to ok")
