"""MySQLManager: how a migration file is split (pure logic), and against the real MariaDB,
who gets a connection when the pool is short and what a row read as one JSON column gives."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt

import pymysql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain import moves
from managers.mysql import MIGRATIONS_DIR, Columns, Database, split_sql
from tests.helpers import service_connection, wait_until


def test_a_migration_is_split_at_each_semicolon_that_ends_a_line_and_its_comments_dropped():
    text = """-- a comment; with a semicolon
CREATE TABLE a (
    x INT -- the x; not the end
);
  -- an indented comment
INSERT INTO a VALUES (1); INSERT INTO a VALUES (2);

UPDATE a SET x = 3
"""
    assert split_sql(text) == [
        "CREATE TABLE a (\n    x INT -- the x; not the end\n)",
        "INSERT INTO a VALUES (1); INSERT INTO a VALUES (2)",  # one line, one statement to the server
        "UPDATE a SET x = 3",  # the last may go without its semicolon
    ]
    assert split_sql("-- only a comment\n\n;\n") == []


def test_every_migration_splits_into_statements_without_a_comment_line_or_a_trailing_semicolon():
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        statements = split_sql(path.read_text())
        assert statements, path.name
        for statement in statements:
            first = statement.split(None, 1)[0].upper()
            assert first in {"CREATE", "ALTER", "INSERT", "DROP", "UPDATE", "GRANT", "BEGIN"}, statement
            assert not statement.endswith(";") and not statement.lstrip().startswith("--"), statement


@pytest.mark.gen_test(timeout=30)
async def test_connections_go_to_waiters_in_the_order_they_came(services, config):
    """aiomysql hands a released connection to whoever asks next, not to the one who
    waited longest: ``late`` arrives as ``first`` lets go, and must wait behind ``second``."""
    mysql = Database("main", {**config["mysql"], "pool_min": 1, "pool_max": 1}, config["reconnect"])
    await mysql._connect_and_migrate()
    mysql.ready.set()
    asked: list[str] = []
    served: list[str] = []
    first_holds, second_waits = asyncio.Event(), asyncio.Event()
    tasks: list[asyncio.Task] = []

    async def use(name: str) -> None:
        asked.append(name)  # nothing between this and the request for a connection yields
        async with mysql._connection() as conn:
            served.append(name)
            await asyncio.wait_for(conn.ping(), 5)
            if name == "first":
                first_holds.set()
                await second_waits.wait()
                # Asks as this one lets go (nothing between here and the release awaits),
                # before the wake-up the release schedules for ``second`` has run.
                tasks.append(asyncio.ensure_future(use("late")))

    try:
        tasks.append(asyncio.ensure_future(use("first")))
        await first_holds.wait()
        tasks.append(asyncio.ensure_future(use("second")))
        # Once this task runs again, ``second`` has asked and is suspended in its request:
        # with the one connection held, it can only be waiting for it.
        await wait_until(lambda: "second" in asked, timeout=5, interval=0.001, what="second to ask for the connection")
        assert served == ["first"]
        second_waits.set()
        await asyncio.wait_for(asyncio.gather(*tasks[:2]), 10)
        await asyncio.wait_for(tasks[2], 10)
        assert asked == ["first", "second", "late"]
        assert served == ["first", "second", "late"]
    finally:
        await mysql.close()


def test_the_migration_that_remakes_the_move_guard_makes_it_exactly_as_moves_does():
    """0004 re-creates an old ``outbox_shard_guard`` with the migration user as its definer:
    the trigger it makes must be domain/moves.py's ``GUARD``, word for word."""
    [remake] = [s for s in split_sql((MIGRATIONS_DIR / "0004_audit.sql").read_text()) if s.startswith("BEGIN")]
    guard = moves.GUARD.replace("CREATE TRIGGER IF NOT EXISTS", "CREATE TRIGGER").replace("'", "''")
    assert f"EXECUTE IMMEDIATE '{guard}'" in remake


# A row of every type the service reads: text (any character MariaDB's utf8mb4 holds, NUL and
# quotes included), BIGINT at its edges, DATETIME(6) at its range's edges, and NULLs.
ROW = Columns("id, amount_minor, version, description, created_at, updated_at")
LITERALS = (
    "SELECT %s AS id, CAST(%s AS SIGNED) AS amount_minor, CAST(%s AS UNSIGNED) AS version,"
    " %s AS description, CAST(%s AS DATETIME(6)) AS created_at, CAST(%s AS DATETIME(6)) AS updated_at"
)
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
TIMES = st.datetimes(dt.datetime(1000, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999))


@pytest.fixture
def dict_cursor(services, config):
    conn = service_connection(config["mysql"])
    with contextlib.closing(conn), conn.cursor(pymysql.cursors.DictCursor) as cur:
        yield cur


@settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    text=TEXT,
    amount=st.integers(-(2**63), 2**63 - 1),
    version=st.integers(0, 2**32 - 1),
    description=st.none() | TEXT,
    created=TIMES,
    updated=st.none() | TIMES,
)
def test_a_row_read_as_one_json_column_is_the_row_its_columns_give(
    dict_cursor, text, amount, version, description, created, updated
):
    """PyMySQL reads each column in Python; ``Columns.select`` has MariaDB send them as one
    JSON object, and ``Columns.row`` must give back exactly what the columns would have."""
    args = (text, amount, version, description, created, updated)
    dict_cursor.execute(LITERALS, args)
    plain = dict_cursor.fetchone()
    dict_cursor.execute(f"SELECT {ROW.select}, 'beside' AS other FROM ({LITERALS}) AS t", args)
    assert ROW.row(dict_cursor.fetchone()) == {**plain, "other": "beside"}
