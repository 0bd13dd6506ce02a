"""Moving a logical shard to another physical shard, while the service runs.

``python -m service shards move <logical> --to <physical>`` calls ``move``:

1. **Copy, live.** The logical shard's rows (users, their payments, refunds, status history,
   audit rows, idempotency keys and published outbox rows) are copied to the target by primary-key
   range (managers/shards.py: a logical shard is an id range), while writes go on.
2. **Freeze.** The source marks the logical shard ``frozen``. Every write of a user's
   inserts an outbox row, and the source's trigger on ``outbox`` (``GUARD``, installed by
   the first move from that server, so a database that never moved pays nothing for it)
   share-locks the logical shard's state: the freeze waits for the writes in flight, and
   every write after it is refused (503 with Retry-After) until the switch is done.
3. **Drain.** The source's relay publishes what is left of the shard's outbox.
4. **Copy what changed** since step 1 began.
5. **Switch.** The home records the move (``shard_moves``), which every instance reads
   within ``shards.map_refresh_s``; the source marks the logical shard ``moved``, so an
   instance that has not read the move yet is refused, never served stale.
6. **Clean up.** After a grace period (instances still reading from the source), the
   source's copies are deleted: history and audit rows too, which the service's own
   MariaDB user may not delete, so a move runs as the migration user (service/__main__.py).

Writes are refused only from 2 to 5: ``Moved.switch_s`` says how long that took.
Copies are upserts by primary key (outbox rows by ``event_id``), so a move that failed
half-way can simply be run again. Outbox rows keep their order (the target numbers
them anew, in the source's order), arrive marked published (the source's relay
published them: nothing is sent twice), and keep serving WebSocket replay.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from domain import codec
from domain.errors import APIError
from managers.mysql import Database, MySQLManager, Row
from managers.shards import LOGICAL_SHARDS, id_range

log = logging.getLogger("singleton.moves")

BATCH = 1000  # rows per copy statement
DRAIN_TIMEOUT_S = 30.0  # the frozen shard's outbox must be published within this
CLOCK_SLACK = dt.timedelta(seconds=5)  # step 4 also copies what changed this long before step 1


class Table(NamedTuple):
    """A table of a user's, and how a logical shard's rows are found in it."""

    name: str
    key: str  # the column whose value range is the logical shard's id range
    columns: str
    changed: str  # the column that says a row changed (for the copy of step 4)
    upsert: str  # what a copy does to a row the target already has


TABLES = (
    Table(
        "users",
        "id",
        "id, email, name, version, created_at, updated_at, metadata",
        "updated_at",
        "email = VALUES(email), name = VALUES(name), version = VALUES(version), updated_at = VALUES(updated_at),"
        " metadata = VALUES(metadata)",
    ),
    Table(
        "payments",
        "id",
        "id, user_id, amount_minor, currency, description, status, created_by_key_id, version, created_at,"
        " updated_at, amount_refunded_minor, metadata",
        "updated_at",
        "status = VALUES(status), version = VALUES(version), updated_at = VALUES(updated_at),"
        " amount_refunded_minor = VALUES(amount_refunded_minor), metadata = VALUES(metadata)",
    ),
    Table(
        "refunds",
        "id",  # a refund's id carries its payment's logical shard
        "id, payment_id, user_id, amount_minor, currency, reason, status, created_at",
        "created_at",
        "id = id",  # a refund never changes: already there, nothing to do
    ),
    Table(
        "payment_status_history",
        "payment_id",
        "payment_id, from_status, to_status, version, actor_key_id, request_id, remote_ip, created_at,"
        " refund_id, refund_amount_minor",
        "created_at",
        "payment_id = payment_id",  # (payment_id, version) is unique: already there, nothing to do
    ),
    Table(
        "audit_events",
        "owner_id",  # a payment's user; NULL (never moved) for what lives in the home
        "id, created_at, actor_key_id, request_id, remote_ip, action, resource_type, resource_id, owner_id, changes",
        "created_at",
        "id = id",  # append-only: already there, nothing to do
    ),
    Table(
        "idempotency_keys",
        "idem_key",
        "idem_key, request_hash, status_code, response_body, created_at",
        "created_at",
        "status_code = VALUES(status_code), response_body = VALUES(response_body)",
    ),
    Table(
        "outbox",
        "partition_key",
        "event_id, event_type, partition_key, payload, created_at, published_at",
        "published_at",  # a row published since step 1 began is copied in step 4
        "published_at = VALUES(published_at)",
    ),
)


# The write guard: it share-locks the logical shard's state row (a freeze waits for the
# writes in flight, and the writes after it see the freeze) and refuses a write to a logical
# shard not at home here with error 1644 (managers/mysql.py's is_shard_moving).
GUARD = (
    "CREATE TRIGGER IF NOT EXISTS outbox_shard_guard BEFORE INSERT ON outbox FOR EACH ROW"
    " IF (SELECT state FROM logical_shards WHERE id = CONV(LEFT(NEW.partition_key, 3), 16, 10) DIV 4"
    " LOCK IN SHARE MODE) <> 'home'"
    " THEN SIGNAL SQLSTATE '45000'"
    " SET MESSAGE_TEXT = 'logical shard not writable here: moving or moved', MYSQL_ERRNO = 1644; END IF"
)


class Moved(NamedTuple):
    logical: int
    source: str
    target: str
    rows: dict[str, int]  # rows of each table on the target after the move
    copy_s: float  # step 1, writes going on
    switch_s: float  # steps 2-5, the logical shard's writes refused


def _rows_of(table: Table, logical: int, since: dt.datetime | None) -> tuple[str, tuple[object, ...]]:
    low, high = id_range(logical)
    where = f"{table.key} >= %s AND {table.key} < %s"
    args: list[object] = [low, high]
    if table.name == "outbox":
        where += " AND published_at IS NOT NULL"  # an unpublished row is the source relay's to send
    if since is not None:
        where += f" AND {table.changed} >= %s"
        args.append(since)
    return where, tuple(args)


async def copy(source: Database, target: Database, logical: int, since: dt.datetime | None = None) -> int:
    """Upsert the logical shard's rows (changed since ``since``) from ``source`` into ``target``."""
    copied = 0
    for table in TABLES:
        where, args = _rows_of(table, logical, since)
        order = "id" if table.name in ("outbox", "payment_status_history", "audit_events") else table.key
        last: object = None
        while True:
            page_where = where if last is None else f"{where} AND {order} > %s"
            page_args = args if last is None else (*args, last)
            rows = await source.fetchall(
                f"SELECT {order} AS _order, {table.columns} FROM {table.name} WHERE {page_where}"
                f" ORDER BY {order} LIMIT {BATCH}",
                page_args,
            )
            if not rows:
                break
            last = rows[-1]["_order"]
            await _upsert(target, table, rows)
            copied += len(rows)
    return copied


async def _upsert(target: Database, table: Table, rows: list[Row]) -> None:
    columns = [c.strip() for c in table.columns.split(",")]
    placeholders = "(" + ", ".join(["%s"] * len(columns)) + ")"
    values = [value for row in rows for value in (row[c] for c in columns)]
    async with target.transaction() as tx:
        await tx.script(
            [
                (
                    f"INSERT INTO {table.name} ({table.columns}) VALUES {', '.join([placeholders] * len(rows))}"
                    f" ON DUPLICATE KEY UPDATE {table.upsert}",
                    values,
                )
            ],
            commit=True,
        )


async def count(database: Database, logical: int) -> dict[str, int]:
    """The logical shard's rows in each table of ``database`` (outbox: published or not)."""
    counts = {}
    for table in TABLES:
        low, high = id_range(logical)
        row = await database.fetchone(
            f"SELECT COUNT(*) AS n FROM {table.name} WHERE {table.key} >= %s AND {table.key} < %s", (low, high)
        )
        counts[table.name] = row["n"] if row else 0
    return counts


async def _set_state(database: Database, logical: int, state: str) -> None:
    async with database.cursor() as cur:
        await cur.execute("UPDATE logical_shards SET state = %s WHERE id = %s", (state, logical))


async def _server_now(database: Database) -> dt.datetime:
    row = await database.fetchone("SELECT UTC_TIMESTAMP(6) AS now")
    assert row is not None
    now: dt.datetime = row["now"]
    return now


async def _drained(source: Database, logical: int, timeout_s: float) -> None:
    low, high = id_range(logical)
    deadline = time.monotonic() + timeout_s
    while True:
        row = await source.fetchone(
            "SELECT COUNT(*) AS n FROM outbox WHERE partition_key >= %s AND partition_key < %s"
            " AND published_at IS NULL",
            (low, high),
        )
        if row is not None and row["n"] == 0:
            return
        if time.monotonic() > deadline:
            raise APIError(503, "move_aborted", f"logical shard {logical}'s outbox was not published in {timeout_s} s")
        await asyncio.sleep(0.05)


async def _delete(database: Database, logical: int) -> None:
    """The logical shard's rows in ``database``, children first (foreign keys)."""
    low, high = id_range(logical)
    for table in (
        "payment_status_history",
        "audit_events",
        "idempotency_keys",
        "outbox",
        "refunds",
        "payments",
        "users",
    ):
        key = next(t.key for t in TABLES if t.name == table)
        while True:
            async with database.cursor() as cur:
                deleted = await cur.execute(
                    f"DELETE FROM {table} WHERE {key} >= %s AND {key} < %s LIMIT {BATCH}", (low, high)
                )
            if deleted < BATCH:
                break


async def _legacy_payment_ids(source: Database, logical: int) -> int:
    """Payments of the logical shard's users whose id does not carry it (made before sharding)."""
    low, high = id_range(logical)
    row = await source.fetchone(
        "SELECT COUNT(*) AS n FROM payments WHERE user_id >= %s AND user_id < %s AND NOT (id >= %s AND id < %s)",
        (low, high, low, high),
    )
    return row["n"] if row else 0


async def move(
    logical: int,
    target_name: str,
    grace_s: float,
    say: Callable[[str], None] = lambda line: None,
) -> Moved:
    """Move logical shard ``logical`` to the physical shard ``target_name`` (see the module)."""
    mysql = MySQLManager.instance()
    if not 0 <= logical < LOGICAL_SHARDS:
        raise APIError(422, "validation_failed", f"logical shards run from 0 to {LOGICAL_SHARDS - 1}")
    if target_name not in mysql.databases:
        raise APIError(422, "validation_failed", f"no physical shard {target_name!r}: {sorted(mysql.databases)}")
    await mysql.refresh_map()
    source, target = mysql.for_logical(logical), mysql.databases[target_name]
    if source is target:
        raise APIError(409, "already_there", f"logical shard {logical} is on {target_name} already")
    if legacy := await _legacy_payment_ids(source, logical):
        raise APIError(409, "legacy_ids", f"{legacy} payments of logical shard {logical} have ids without it")

    say(f"logical shard {logical}: {source.name} -> {target.name}")
    async with source.cursor() as cur:
        await cur.execute(GUARD)
    await _delete(target, logical)  # leftovers of an earlier move away, or of a failed attempt
    await _set_state(target, logical, "home")
    started, since = time.monotonic(), await _server_now(source) - CLOCK_SLACK
    copied = await copy(source, target, logical)
    copy_s = time.monotonic() - started
    say(f"copied {copied} rows while serving, in {copy_s:.2f} s; freezing writes")

    switch_started = time.monotonic()
    await _set_state(source, logical, "frozen")
    try:
        await _drained(source, logical, DRAIN_TIMEOUT_S)
        changed = await copy(source, target, logical, since)
        async with mysql.home.cursor() as cur:
            await cur.execute(
                "INSERT INTO shard_moves (logical, physical, moved_at) VALUES (%s, %s, %s)"
                " ON DUPLICATE KEY UPDATE physical = VALUES(physical), moved_at = VALUES(moved_at)",
                (logical, target.name, codec.utc_now()),
            )
    except BaseException:
        await _set_state(source, logical, "home")  # not switched: the source serves on
        raise
    await _set_state(source, logical, "moved")
    switch_s = time.monotonic() - switch_started
    await mysql.refresh_map()
    say(f"switched in {switch_s:.3f} s ({changed} rows changed meanwhile); {target.name} serves it now")

    await asyncio.sleep(grace_s)  # instances that have not read the move yet still read the source
    await _delete(source, logical)
    rows = await count(target, logical)
    say(f"deleted the copies on {source.name}; {target.name} holds {rows}")
    return Moved(logical, source.name, target.name, rows, copy_s, switch_s)
