"""The domain's background loops, on the real servers: the outbox relay's three concerns,
the admin key bootstrap and the analytics consumer. An error that is not an outage of a
dependency is a bug (ERROR, counted in singleton_background_errors_total), never a
publishing failure or "unreachable", and the loop goes on."""

from __future__ import annotations

import asyncio
import logging

import pytest

from domain import auth
from domain.analytics_consumer import AnalyticsConsumer
from domain.auth import Authenticator
from domain.outbox import OutboxRelay
from managers.mysql import MySQLManager
from tests.domain.test_analytics import stats_when
from tests.helpers import bug_lines, bugs, metric, wait_until


async def missing_table() -> None:
    """A real statement MariaDB refuses: not an outage, a bug in our SQL."""
    async with MySQLManager.instance().home.cursor() as cur:
        await cur.execute("DELETE FROM outbox_that_does_not_exist WHERE id = 0")


async def all_published(user_id: str) -> None:
    """Until the relay has published every event of ``user_id``."""

    async def none_pending() -> bool:
        row = await MySQLManager.instance().home.fetchone(
            "SELECT COUNT(*) AS n FROM outbox WHERE partition_key = %s AND published_at IS NULL", (user_id,)
        )
        return row is not None and row["n"] == 0

    await wait_until(none_pending, timeout=20, what=f"every event of {user_id} published")


@pytest.mark.gen_test(timeout=60)
async def test_a_housekeeping_bug_is_not_a_publishing_failure_and_waits_its_turn(api, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="singleton.outbox")
    [relay] = OutboxRelay.instance()._shards.values()
    calls = 0

    async def broken_housekeeping() -> None:
        nonlocal calls
        calls += 1
        await missing_table()

    monkeypatch.setattr(relay, "_housekeeping", broken_housekeeping)
    monkeypatch.setattr(relay, "_next_housekeeping", 0.0)  # due now
    publish_failures = metric("singleton_outbox_publish_failures_total")
    before = bugs("outbox_housekeeping")

    user = await api.new_user()
    await wait_until(lambda: calls, timeout=20, what="the housekeeping to run")
    for _ in range(3):  # the relay goes on publishing, and the housekeeping waits its turn
        await api.new_payment(user["id"])
    await all_published(user["id"])

    assert calls == 1
    assert bugs("outbox_housekeeping") == before + 1
    assert metric("singleton_outbox_publish_failures_total") == publish_failures
    [line] = bug_lines(caplog, "outbox_housekeeping")
    assert "outbox_that_does_not_exist" in line.error
    assert "cannot publish" not in caplog.text


@pytest.mark.gen_test(timeout=60)
async def test_a_bug_reading_the_backlog_is_not_a_publishing_failure(api, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="singleton.outbox")
    [relay] = OutboxRelay.instance()._shards.values()
    monkeypatch.setattr(relay, "_read_backlog", missing_table)
    publish_failures = metric("singleton_outbox_publish_failures_total")
    before = bugs("outbox_gauges")

    user = await api.new_user()
    await api.new_payment(user["id"])
    await all_published(user["id"])
    await wait_until(lambda: bugs("outbox_gauges") > before, timeout=20, what="the gauges' failure counted")

    assert metric("singleton_outbox_publish_failures_total") == publish_failures
    assert len(bug_lines(caplog, "outbox_gauges")) == 1
    assert "cannot publish" not in caplog.text


@pytest.mark.gen_test(timeout=60)
async def test_losing_mariadb_during_the_admin_key_bootstrap_postpones_it(config, admin_key, tmp_path, caplog):
    """Its connection is cut while it waits for the bootstrap lock, as in a MariaDB
    restart. It once raised AttributeError here (a local name hid the mysql module)
    and the bootstrap was never tried again."""
    caplog.set_level(logging.INFO, logger="singleton.auth")
    db = MySQLManager.instance().home
    verifier = Authenticator(config["auth"])  # not installed: the suite's own is running
    async with db.cursor() as holder:
        assert (await holder.fetchone("SELECT GET_LOCK(%s, 0) AS ok", (auth._BOOTSTRAP_LOCK,)) or {}).get("ok") == 1
        task = asyncio.create_task(verifier._bootstrap_when_ready(str(tmp_path / "admin.key")))

        async def waiting_for_the_lock() -> int | None:
            row = await db.fetchone(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE STATE = 'User lock' AND INFO LIKE %s",
                (f"%{auth._BOOTSTRAP_LOCK}%",),
            )
            return None if row is None else int(row["ID"])

        waiter = await wait_until(waiting_for_the_lock, timeout=20, what="the bootstrap waiting for its lock")
        async with db.cursor() as killer:
            await killer.execute("KILL %s", (waiter,))
        await wait_until(lambda: "admin key bootstrap postponed" in caplog.text, timeout=20, what="postponed")
        await holder.execute("SELECT RELEASE_LOCK(%s)", (auth._BOOTSTRAP_LOCK,))

    await asyncio.wait_for(task, 30)  # retried and done: the suite's admin key already exists
    assert not (tmp_path / "admin.key").exists()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "singleton.auth"]
    assert lines == [
        ("WARNING", "admin key bootstrap postponed: MariaDB unavailable"),
        ("INFO", "admin key bootstrap went through"),
    ]


@pytest.mark.gen_test(timeout=90)
async def test_a_bug_storing_analytics_is_an_error_and_the_batch_is_read_again(api, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    consumer = AnalyticsConsumer.instance()
    apply = consumer.store.apply
    before = bugs("kafka_analytics_consumer")

    async def broken_apply(deliveries, read=False) -> None:
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(consumer.store, "apply", broken_apply)
    user = await api.new_user()
    await api.new_payment(user["id"], amount="3.00")
    await wait_until(lambda: consumer.status()["status"] == "error", timeout=30, what="the consumer to say error")

    async def health_says_error() -> bool:
        _, health, _ = await api.get("/health")
        return health["consumers"]["analytics"]["status"] == "error"

    await wait_until(health_says_error, timeout=20, interval=0.2, what="/health to say error")
    assert bugs("kafka_analytics_consumer") > before
    assert bug_lines(caplog, "kafka_analytics_consumer")
    assert not [r for r in caplog.records if r.getMessage() == consumer.failing_message]

    monkeypatch.setattr(consumer.store, "apply", apply)
    stats = await stats_when(api, user["id"], lambda s: s["payment_count"] == 1)
    assert stats["by_currency"] == {"USD": {"count": 1, "total": "3.00"}}
    await wait_until(lambda: consumer.status()["status"] == "ok", timeout=20, what="the consumer back to ok")
