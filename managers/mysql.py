"""MySQLManager: the aiomysql pool, with a deadline on every query.

MariaDB is the one dependency the API cannot serve without, and still the
service does not wait for it: ``start()`` returns at once and a background task
connects (retrying with backoff for as long as it takes) and applies the
migrations. Until then the manager is not ``ready`` and every query raises
``NotReady``, which the API answers with 503 and ``/health/ready`` reports.

aiomysql has no query timeout of its own, so every statement runs under
``asyncio.timeout`` (which, unlike ``wait_for``, costs no new task per statement
on the hot path). A connection interrupted mid-statement is closed rather than
returned to the pool, since its protocol state is unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
import warnings
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import aiomysql
import orjson
import pymysql
from pymysql.constants import CLIENT

from managers import tls
from managers.background import Failures, reconnect
from managers.base import BackingService
from managers.config import Config, MySQLConfig, ReconnectConfig
from managers.shards import SINGLE, ShardMap, logical_shard

log = logging.getLogger("singleton.mysql")
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
MIGRATION_LOCK_TIMEOUT_S = 30
DEFAULT_MAP_REFRESH_S = 1.0  # how often an instance reads the shard moves (shards.map_refresh_s)

IntegrityError = pymysql.err.IntegrityError  # a constraint refused a statement
DUPLICATE_KEY = 1062  # ER_DUP_ENTRY
MISSING_PARENT = 1452  # ER_NO_REFERENCED_ROW_2: a foreign key names no row


def is_duplicate_key(exc: pymysql.err.IntegrityError) -> bool:
    return bool(exc.args) and exc.args[0] == DUPLICATE_KEY


def is_missing_parent(exc: pymysql.err.IntegrityError) -> bool:
    return bool(exc.args) and exc.args[0] == MISSING_PARENT


SHARD_NOT_WRITABLE = 1644  # ER_SIGNAL_EXCEPTION: only the move's write guard signals (domain/moves.py)


class ShardMoved(ConnectionError):
    """What was looked for is not here because its logical shard is moving or has moved away
    from this server, and this instance has not read the move yet: not a 404, a retry."""


def is_shard_moving(exc: BaseException) -> bool:
    """A call refused because its logical shard is being moved, or has moved away and this
    instance has not read the move yet: retried in a moment, it goes through."""
    if isinstance(exc, ShardMoved):
        return True
    return isinstance(exc, pymysql.err.OperationalError) and bool(exc.args) and exc.args[0] == SHARD_NOT_WRITABLE


ISOLATION_LEVELS = frozenset({"READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"})


class NotReady(ConnectionError):
    """MariaDB has not been reached and migrated yet since this instance started."""


class NotEncrypted(ConnectionError):
    """``mysql.tls`` is on and the server did not offer TLS: aiomysql would go on in
    plaintext, so the connection is closed instead (the server's, or a man in the middle's,
    greeting said it has no TLS)."""


# Errors the API answers with 503: the database is not there right now, or cut a query off.
UNAVAILABLE = (pymysql.err.OperationalError, pymysql.err.InterfaceError, asyncio.TimeoutError, ConnectionError)
# PyMySQL raises OperationalError for every server error it has no class for, a bad column
# or a table that exists included. Of those, a background loop counts as an outage only the
# client's own (CR_*, 2000-2999: no connection, connection lost) and these, which say
# "not now": too many connections, shutdown in progress, lock wait timeout, deadlock,
# connection killed.
_CLIENT_ERRORS = range(2000, 3000)
_NOT_NOW = frozenset({1040, 1053, 1205, 1213, 1927})


Args = Sequence[Any] | Mapping[str, Any] | None  # positional (%s) or named (%(name)s) arguments
Statement = tuple[str, Args]  # SQL with %s placeholders, and its arguments
Row = dict[str, Any]  # a row as DictCursor returns it: column name -> value


class Columns:
    """A table's columns, for writing them (``names``, ``list``) and for reading them as one.

    PyMySQL parses every column's descriptor, and converts every value, in Python: read
    as its 11 columns, a payment costs about 115 µs of CPU, against 50 as one column, and
    a page of 20 payments 460 against 240 (docs/PROFILING.md). ``select`` reads them as
    one, ``JSON_OBJECT('id', id, ...)``, which orjson reads in C; ``row`` gives back the row
    a DictCursor would have given. A BIGINT arrives as a JSON integer and stays exact; a
    DATETIME arrives as MariaDB writes it (``2026-01-02 03:04:05.000000``) and is made a
    datetime again; NULL is None, and text is text, whatever characters it holds.
    """

    def __init__(self, columns: str, datetimes: Sequence[str] = ("created_at", "updated_at"), table: str = ""):
        self.names = tuple(name.strip() for name in columns.split(","))
        self.list = ", ".join(self.names)
        qualified = f"{table}." if table else ""
        pairs = ", ".join(f"'{name}', {qualified}{name}" for name in self.names)
        self.select = f"JSON_OBJECT({pairs}) AS _row"
        self._datetimes = tuple(name for name in datetimes if name in self.names)

    def row(self, raw: Row) -> Row:
        """``raw`` (a DictCursor's row: ``_row``, and any column selected beside it) as the
        columns themselves would have come."""
        row: Row = orjson.loads(raw["_row"])
        for name in self._datetimes:
            if row[name] is not None:
                row[name] = dt.datetime.fromisoformat(row[name])
        if len(raw) > 1:
            row |= {name: value for name, value in raw.items() if name != "_row"}
        return row

    def maybe(self, raw: Row | None) -> Row | None:
        return None if raw is None else self.row(raw)


class Tx:
    """A cursor bound to one connection, with the manager's deadline on each call.

    Statements go in as few round trips as the caller allows: in a transaction the
    first call also carries its BEGIN, ``script`` sends several statements at once,
    and ``script(..., commit=True)`` ends the transaction in the same trip.
    Arguments are escaped by the driver (``mogrify``), as for a single statement.
    """

    def __init__(self, cursor: aiomysql.DictCursor, timeout_s: float, prelude: Sequence[str] = ()):
        self._cur = cursor
        self._timeout = timeout_s
        self._prelude = list(prelude)  # what the first call sends first (BEGIN)
        self.began = False
        self.committed = False

    async def execute(self, sql: str, args: Args = None) -> int:
        return (await self.script([(sql, args)]))[0]

    async def script(self, statements: Sequence[Statement], commit: bool = False) -> list[int]:
        """Run ``statements`` in one round trip; the row count of each. The first one
        that fails raises, and the server runs none after it."""
        prelude, self._prelude = self._prelude, []
        texts = [*prelude, *(self._cur.mogrify(sql, args) for sql, args in statements)]
        if commit:
            texts.append("COMMIT")
        async with asyncio.timeout(self._timeout):
            await self._cur.execute(";\n".join(texts))
            counts = [self._cur.rowcount]
            while len(counts) < len(texts) - commit and await self._cur.nextset():
                counts.append(self._cur.rowcount)
            if commit:
                await self._cur.nextset()
        self.began = self.began or bool(prelude)
        self.committed = commit
        return counts[len(prelude) :]

    async def fetchone(self, sql: str, args: Args = None, first: Sequence[Statement] = ()) -> Row | None:
        """The first row of ``sql``, run after the statements ``first`` in the same round trip."""
        await self.script([*first, (sql, args)])
        row: Row | None = await self._cur.fetchone()
        return row

    async def fetchall(self, sql: str, args: Args = None) -> list[Row]:
        await self.execute(sql, args)
        return list(await self._cur.fetchall())


@contextlib.asynccontextmanager
async def tls_reason() -> AsyncIterator[None]:
    """aiomysql's "Can't connect to MySQL server" hides its cause: a certificate that does
    not verify is a reason to show, in /health and the outage's log line."""
    try:
        yield
    except pymysql.err.OperationalError as exc:
        if isinstance(exc.__cause__, ssl.SSLError) and len(exc.args) == 2:
            raise pymysql.err.OperationalError(exc.args[0], f"{exc.args[1]}: TLS: {exc.__cause__}") from exc
        raise


class Database:
    """One MariaDB server (a physical shard): its pool, the gate to it, its migrations."""

    def __init__(self, name: str, cfg: MySQLConfig, reconnect_cfg: ReconnectConfig):
        self.name = name
        self.cfg = cfg
        self.reconnect_cfg = reconnect_cfg
        self.query_timeout_s: float = cfg["query_timeout_s"]
        self.pool: aiomysql.Pool | None = None
        self.ready = asyncio.Event()  # connected and migrated
        # First come, first served for the pool's connections. aiomysql's own wait is not:
        # a released connection wakes a waiter through a task scheduled for later, and a
        # request arriving meanwhile takes it first, so under load a few requests lose again
        # and again (a list's p99 was 14x its p50, docs/PROFILING.md). Past this gate a
        # connection is always free or can be opened.
        self._turns = asyncio.Semaphore(cfg["pool_max"])
        self._task: asyncio.Task[None] | None = None
        self.ssl = tls.client_context(cfg["tls"])  # None: plaintext

    def __repr__(self) -> str:
        return f"<Database {self.name} {self.cfg['host']}:{self.cfg['port']}>"

    def connect_in_background(self) -> None:
        self._task = asyncio.create_task(self._connect_until_ready(), name=f"mysql-connect-{self.name}")

    async def _connect_until_ready(self) -> None:
        """Connect and migrate, retrying: an unreachable server is an outage, a migration
        that fails is a bug (managers/background.py), and both are tried again."""
        await reconnect(
            "mysql_connect",
            self._connect_and_migrate,
            MySQLManager.is_unavailable,
            **self.reconnect_cfg,
            dependency="mysql",
            fields={"shard": self.name},
        )
        self.ready.set()

    @tls_reason()
    async def _connect_and_migrate(self) -> None:
        """Migrate as the migration user (``mysql.migrate_user``) on a connection of its own,
        then open the pool as the service's user, which can reach the database only once the
        migrations granted it its privileges. Without a migration user, the schema must be
        up to date already (``python -m service migrate``)."""
        if self.cfg["migrate_user"]:
            await self.migrate()
        if self.pool is None:
            cfg = self.cfg
            self.pool = await asyncio.wait_for(
                aiomysql.create_pool(
                    **_connect_args(cfg, cfg["user"], cfg["password"], self.ssl),
                    minsize=cfg["pool_min"],
                    maxsize=cfg["pool_max"],
                    pool_recycle=cfg["pool_recycle_s"],
                ),
                cfg["connect_timeout_s"] * 2,
            )
        if not self.cfg["migrate_user"]:
            await self.check_migrated()

    async def wait_ready(self, timeout_s: float) -> None:
        """For commands that need the database before they can do anything (``keys``)."""
        await asyncio.wait_for(self.ready.wait(), timeout_s)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[aiomysql.Connection]:
        if self.pool is None or not self.ready.is_set():
            raise NotReady(f"mysql shard {self.name} is not reachable yet")
        async with asyncio.timeout(self.query_timeout_s):
            await self._turns.acquire()
            try:
                async with tls_reason():
                    conn = await self.pool.acquire()
            except BaseException:
                self._turns.release()
                raise
        if self.ssl is not None and not conn.server_capabilities & CLIENT.SSL:
            conn.close()  # aiomysql went on in plaintext: never use it (the pool drops it)
            self.pool.release(conn)
            self._turns.release()
            raise NotEncrypted(f"mysql shard {self.name}: mysql.tls is on and the server offered no TLS")
        try:
            yield conn
        except BaseException as exc:
            if isinstance(exc, Exception) and not isinstance(exc, UNAVAILABLE):
                # A query or business error: the connection is sound, undo and reuse it.
                await self._rollback_or_close(conn)
            else:
                # Timed out, cancelled or cut off mid-statement: its protocol state
                # is unknown, so close it (the pool drops closed connections).
                conn.close()
            raise
        finally:
            self.pool.release(conn)
            self._turns.release()

    async def _rollback_or_close(self, conn: aiomysql.Connection) -> None:
        try:
            async with asyncio.timeout(self.query_timeout_s):
                await conn.rollback()
        except Exception:
            conn.close()

    @contextlib.asynccontextmanager
    async def transaction(self, isolation: str | None = None) -> AsyncIterator[Tx]:
        """BEGIN ... COMMIT on one connection; any exception rolls back.

        The BEGIN travels with the first statement, and ``tx.script(..., commit=True)``
        commits with the last, so a transaction of one batch is one round trip.
        ``isolation`` (e.g. ``"READ COMMITTED"``) applies to this transaction only.
        """
        prelude = ["BEGIN"]
        if isolation is not None:
            if isolation not in ISOLATION_LEVELS:
                raise ValueError(f"unknown isolation level {isolation!r}")
            prelude.insert(0, f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        async with self._connection() as conn, conn.cursor(aiomysql.DictCursor) as cur:
            tx = Tx(cur, self.query_timeout_s, prelude)
            yield tx
            if tx.began and not tx.committed:
                async with asyncio.timeout(self.query_timeout_s):
                    await conn.commit()

    @contextlib.asynccontextmanager
    async def cursor(self) -> AsyncIterator[Tx]:
        """Autocommit statements on one connection (reads, single writes)."""
        async with self._connection() as conn, conn.cursor(aiomysql.DictCursor) as cur:
            yield Tx(cur, self.query_timeout_s)

    async def fetchone(self, sql: str, args: Args = None) -> Row | None:
        async with self.cursor() as cur:
            return await cur.fetchone(sql, args)

    async def fetchall(self, sql: str, args: Args = None) -> list[Row]:
        async with self.cursor() as cur:
            return await cur.fetchall(sql, args)

    async def migrate(self, directory: Path = MIGRATIONS_DIR) -> list[str]:
        """Apply ``NNNN_name.sql`` files not yet in ``schema_migrations``, in name order,
        as the migration user (``mysql.migrate_user``), on a connection of its own.

        Idempotent, and safe with several instances starting at once: a named
        lock lets one of them migrate while the others wait. Every shard has the
        same schema; the global tables are used in the home only.
        """
        applied_now: list[str] = []
        files = migration_files(directory)
        cfg = self.cfg
        if not cfg["migrate_user"]:
            raise RuntimeError("mysql.migrate_user is not set: this process cannot migrate")
        timeout_s = MIGRATION_LOCK_TIMEOUT_S + self.query_timeout_s
        async with asyncio.timeout(cfg["connect_timeout_s"] * 2):
            conn = await aiomysql.connect(**_connect_args(cfg, cfg["migrate_user"], cfg["migrate_password"], self.ssl))
        if self.ssl is not None and not conn.server_capabilities & CLIENT.SSL:
            conn.close()  # aiomysql went on in plaintext: the migration user's session is not sent
            raise NotEncrypted(f"mysql shard {self.name}: mysql.tls is on and the server offered no TLS")
        try:
            async with conn.cursor(aiomysql.DictCursor) as cur:
                tx = Tx(cur, timeout_s)
                locked = await tx.fetchone(
                    "SELECT GET_LOCK('singleton_migrations', %s) AS ok", (MIGRATION_LOCK_TIMEOUT_S,)
                )
                if not locked or locked["ok"] != 1:
                    raise RuntimeError("could not take the migration lock")
                try:
                    with warnings.catch_warnings():  # "already exists" is the normal case
                        warnings.simplefilter("ignore", pymysql.Warning)
                        await tx.execute(
                            "CREATE TABLE IF NOT EXISTS schema_migrations ("
                            " version VARCHAR(255) NOT NULL PRIMARY KEY, applied_at DATETIME(6) NOT NULL)"
                        )
                    done = {row["version"] for row in await tx.fetchall("SELECT version FROM schema_migrations")}
                    for version, text in files:
                        if version in done:
                            continue
                        for statement in split_sql(text):
                            await tx.execute(statement)
                        await tx.execute(
                            "INSERT INTO schema_migrations (version, applied_at) VALUES (%s, UTC_TIMESTAMP(6))",
                            (version,),
                        )
                        applied_now.append(version)
                        log.info("migration applied", extra={"version": version, "shard": self.name})
                finally:
                    await tx.execute("SELECT RELEASE_LOCK('singleton_migrations')")
        except BaseException:
            conn.close()  # mid-statement its state is unknown; the lock goes with the session
            raise
        else:
            async with asyncio.timeout(self.query_timeout_s):
                await conn.ensure_closed()
        return applied_now

    async def check_migrated(self, directory: Path = MIGRATIONS_DIR) -> None:
        """For a process that does not migrate: the schema must hold every migration it knows."""
        assert self.pool is not None
        async with self.pool.acquire() as conn, conn.cursor(aiomysql.DictCursor) as cur:
            tx = Tx(cur, self.query_timeout_s)
            done = {row["version"] for row in await tx.fetchall("SELECT version FROM schema_migrations")}
        missing = [version for version, _ in migration_files(directory) if version not in done]
        if missing:
            raise RuntimeError(f"the schema lacks migrations {missing}: run `python -m service migrate`")

    async def ping(self) -> None:
        await self.fetchone("SELECT 1")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=self.query_timeout_s)
        if self.pool is not None:
            self.pool.close()
            await asyncio.wait_for(self.pool.wait_closed(), 5)


def _connect_args(cfg: MySQLConfig, user: str, password: str, context: ssl.SSLContext | None) -> dict[str, Any]:
    """What every connection to a shard is opened with, as ``user`` (over TLS with ``context``)."""
    return {
        "ssl": context,
        "host": cfg["host"],
        "port": cfg["port"],
        "user": user,
        "password": password,
        "db": cfg["database"],
        "connect_timeout": cfg["connect_timeout_s"],
        "autocommit": True,
        "charset": "utf8mb4",
        # Tx.script sends a transaction's statements together (our own SQL only; every
        # argument is escaped by the driver).
        "client_flag": CLIENT.MULTI_STATEMENTS,
    }


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[tuple[str, str]]:
    """Each migration's version (its file name's stem) and text, in order."""
    return [(path.stem, path.read_text()) for path in sorted(directory.glob("*.sql"))]


def as_owner(config: Config) -> Config:
    """``config`` with the migration user in place of the service's: for what only the
    schema's owner may do (``shards move`` deletes a moved shard's history and audit rows)."""
    mysql_cfg = config["mysql"]
    if not mysql_cfg["migrate_user"]:
        raise RuntimeError("mysql.migrate_user is not set: this needs the migration user")
    owner = {**mysql_cfg, "user": mysql_cfg["migrate_user"], "password": mysql_cfg["migrate_password"]}
    return cast(Config, {**config, "mysql": owner})


def shard_configs(config: Config) -> tuple[dict[str, MySQLConfig], str, ShardMap]:
    """Each physical shard's connection settings, the home's name, and config's shard map."""
    mysql_cfg = config["mysql"]
    shards = config.get("shards")
    if shards is None:
        return {SINGLE: mysql_cfg}, SINGLE, ShardMap.single()
    databases: dict[str, MySQLConfig] = {}
    for name, physical in shards["physical"].items():
        databases[name] = {
            **mysql_cfg,
            "host": physical["host"],
            "port": physical["port"],
            "database": physical.get("database", mysql_cfg["database"]),
        }
    ranges = {name: physical["logical"] for name, physical in shards["physical"].items()}
    return databases, shards["global"], ShardMap(ranges)


class MySQLManager(BackingService):
    """The physical shards, and which one holds a given user's rows."""

    dependency = "mysql"
    unavailable = UNAVAILABLE
    log_sources = ("aiomysql",)

    def __init__(
        self,
        databases: dict[str, Database],
        home: str,
        shard_map: ShardMap,
        map_refresh_s: float,
        check_timeout_s: float = 1.0,
    ):
        self.databases = databases
        self.home = databases[home]
        self.shard_map = shard_map
        self.map_refresh_s = map_refresh_s
        # Each shard's own deadline in check(), inside the monitor's: a hung shard is that
        # shard down, not the whole check timed out (which would be MariaDB down).
        self.check_timeout_s = check_timeout_s
        self._map_failures = Failures("shard_map_refresh", self.is_unavailable, logger=log)

    @classmethod
    def start(cls, config: Config) -> MySQLManager:
        """Install the manager and connect to every shard in the background (see ``Database.ready``)."""
        configs, home, shard_map = shard_configs(config)
        databases = {name: Database(name, cfg, config["reconnect"]) for name, cfg in configs.items()}
        refresh_s = config.get("shards", {}).get("map_refresh_s", DEFAULT_MAP_REFRESH_S)
        check_timeout_s = config["server"]["health_check_timeout_s"] * 0.8
        inst = cls._install(cls(databases, home, shard_map, refresh_s, check_timeout_s))
        for database in databases.values():
            database.connect_in_background()
        if len(databases) > 1:  # moves are recorded in the home; one shard has nowhere to move to
            inst._run_in_background(inst._follow_moves(), "shard-map")
        return inst

    @classmethod
    def is_unavailable(cls, exc: BaseException) -> bool:
        if isinstance(exc, pymysql.err.OperationalError):
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
            return code in _CLIENT_ERRORS or code in _NOT_NOW
        return isinstance(exc, UNAVAILABLE)

    # -- routing -------------------------------------------------------------------------------
    def for_id(self, entity_id: str) -> Database:
        """The shard of a user id, or of a payment id (which carries its user's logical shard)."""
        return self.databases[self.shard_map.physical(logical_shard(entity_id))]

    async def missing(self, reader: Database | Tx, entity_id: str) -> None:
        """Call before a 404 for ``entity_id``, looked for through ``reader`` (its shard, or a
        transaction there). On a sharded deployment, a miss on a server its logical shard is
        moving from, or has left (a request routed by a map older than the move, after the
        old copies were deleted), raises ``ShardMoved``: a retry, not a 404."""
        if not self.sharded:
            return
        shard = logical_shard(entity_id)
        row = await reader.fetchone("SELECT state FROM logical_shards WHERE id = %s", (shard,))
        if row is not None and row["state"] != "home":
            raise ShardMoved(f"logical shard {shard} is {row['state']} on this server")

    def for_logical(self, shard: int) -> Database:
        return self.databases[self.shard_map.physical(shard)]

    def all(self) -> list[Database]:
        return list(self.databases.values())

    async def wait_ready(self, timeout_s: float) -> None:
        """Until every shard is reached and migrated (commands that need them all: ``keys``)."""
        async with asyncio.timeout(timeout_s):
            for database in self.all():
                await database.ready.wait()

    @property
    def sharded(self) -> bool:
        return len(self.databases) > 1

    async def _follow_moves(self) -> None:
        """Keep the shard map in step with the moves recorded in the home. A stale map is
        safe, only slower: a moved logical shard's old home refuses its writes (503,
        retried) until this instance routes them to the new one."""
        await self.home.ready.wait()
        while True:
            try:
                await self.refresh_map()
            except Exception as exc:
                self._map_failures.failed(exc)
            else:
                self._map_failures.succeeded()
            await asyncio.sleep(self.map_refresh_s)

    async def refresh_map(self) -> None:
        rows = await self.home.fetchall("SELECT logical, physical FROM shard_moves")
        moves = [(row["logical"], row["physical"]) for row in rows]
        unknown = {physical for _, physical in moves} - set(self.databases)
        if unknown:
            raise RuntimeError(f"shard_moves names physical shards not in config: {sorted(unknown)}")
        self.shard_map.apply(moves)

    # -- health --------------------------------------------------------------------------------
    async def ping(self) -> None:
        await self.home.ping()

    async def check(self) -> dict[str, Any]:
        """Every shard's state; ``down`` (raised) without the home, ``degraded`` without another."""
        if not self.sharded:
            return await super().check()
        results = await asyncio.gather(
            *(asyncio.wait_for(db.ping(), self.check_timeout_s) for db in self.all()), return_exceptions=True
        )
        shards: dict[str, dict[str, Any]] = {}
        for database, result in zip(self.all(), results, strict=True):
            if isinstance(result, BaseException):
                if database is self.home:
                    raise result
                if not (isinstance(result, NotReady) or self.is_unavailable(result)):
                    raise result  # a bug in the check, which health reports as one
                shards[database.name] = {"status": "down", "error": str(result)[:300] or type(result).__name__}
            else:
                shards[database.name] = {"status": "ok"}
        degraded = any(shard["status"] != "ok" for shard in shards.values())
        return {"status": "degraded" if degraded else "ok", "shards": shards}

    async def release(self) -> None:
        await self._stop_background(self.home.query_timeout_s)
        for database in self.all():
            await database.close()


def split_sql(text: str) -> list[str]:
    """Statements of a migration file: ``--`` comment lines dropped, split at a ``;`` ending a line."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    statements, current = [], []
    for line in lines:
        current.append(line)
        if line.rstrip().endswith(";"):
            statements.append("\n".join(current).strip().rstrip(";"))
            current = []
    tail = "\n".join(current).strip()
    if tail:
        statements.append(tail)
    return [s for s in statements if s]
