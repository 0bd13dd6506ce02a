"""The service's MariaDB user, on the real server: no DDL, and the audit trail and the status
history are append-only to it. The server itself refuses (error 1142, or 1044 for a database),
whatever the code above it does; the migrations ran as the other user (the suite migrated)."""

from __future__ import annotations

import uuid

import pymysql
import pytest

from managers.mysql import MySQLManager

TABLE_ACCESS_DENIED = 1142  # ER_TABLEACCESS_DENIED_ERROR: "UPDATE command denied to user ..."
DATABASE_ACCESS_DENIED = 1044  # ER_DBACCESS_DENIED_ERROR


async def refused(sql: str, args=None) -> int:
    """The server's error code for ``sql`` run as the service's user (the pool's)."""
    with pytest.raises(pymysql.err.MySQLError) as caught:
        async with MySQLManager.instance().home.cursor() as cur:
            await cur.execute(sql, args)
    return caught.value.args[0]


@pytest.mark.gen_test(timeout=30)
async def test_the_service_runs_as_a_user_other_than_the_one_that_migrates(services, config):
    row = await MySQLManager.instance().home.fetchone("SELECT CURRENT_USER() AS user, CURRENT_ROLE() AS role")
    assert row is not None
    assert row["user"].split("@")[0] == config["mysql"]["user"] != config["mysql"]["migrate_user"]
    assert row["role"] == "singleton_app"
    applied = await MySQLManager.instance().home.fetchone("SELECT COUNT(*) AS n FROM schema_migrations")
    assert applied is not None and applied["n"] >= 4


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("table", ["audit_events", "payment_status_history", "refunds"])
async def test_audit_history_and_refund_rows_cannot_be_updated_or_deleted(api, table):
    user = await api.new_user()
    payment = await api.new_payment(user["id"])
    assert (await api.put(f"/api/v1/payments/{payment['id']}/status", {"status": "completed"}))[0] == 200
    assert (await api.post(f"/api/v1/payments/{payment['id']}/refunds", {"amount": "1.00"}))[0] == 201
    key = "resource_id" if table == "audit_events" else "payment_id"
    column = "reason" if table == "refunds" else "request_id"
    rows = await MySQLManager.instance().home.fetchall(f"SELECT * FROM {table} WHERE {key} = %s", (payment["id"],))
    assert rows  # there is something to tamper with: the service may read it, and add to it
    assert await refused(f"UPDATE {table} SET {column} = 'fraudulent' WHERE {key} = %s", (payment["id"],)) == (
        TABLE_ACCESS_DENIED
    )
    assert await refused(f"DELETE FROM {table} WHERE {key} = %s", (payment["id"],)) == TABLE_ACCESS_DENIED
    assert await refused(f"TRUNCATE TABLE {table}") == TABLE_ACCESS_DENIED
    after = await MySQLManager.instance().home.fetchall(f"SELECT * FROM {table} WHERE {key} = %s", (payment["id"],))
    assert after == rows


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE ddl_probe (id INT PRIMARY KEY)",
        "ALTER TABLE payments ADD COLUMN ddl_probe INT NULL",
        "ALTER TABLE audit_events DROP COLUMN changes",
        "DROP TABLE audit_events",
        "CREATE INDEX ix_probe ON payments (currency)",
        "CREATE TRIGGER probe BEFORE INSERT ON audit_events FOR EACH ROW SET NEW.request_id = 'x'",
    ],
)
async def test_no_ddl(services, sql):
    assert await refused(sql) == TABLE_ACCESS_DENIED


@pytest.mark.gen_test(timeout=30)
async def test_no_database_of_its_own(services):
    assert await refused(f"CREATE DATABASE singleton_test_probe_{uuid.uuid4().hex[:8]}") == DATABASE_ACCESS_DENIED
    assert await refused("DROP DATABASE singleton_test") == DATABASE_ACCESS_DENIED
