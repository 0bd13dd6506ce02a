"""Users: create, read (cache-aside), update under a row lock with optional If-Match."""

from __future__ import annotations

import contextlib
import unicodedata
import uuid
from collections.abc import Iterator
from typing import Any

from domain import codec, events, outbox
from domain.errors import APIError, not_found
from domain.schemas import UserUpdate
from managers import mysql
from managers.mysql import MySQLManager, Row, Statement, Tx, is_duplicate_key
from managers.redis import Cached, RedisManager

_COLUMNS = "id, email, name, version, created_at, updated_at"


def cache_key(user_id: str) -> str:
    return f"user:{user_id}"


def etag(version: int) -> str:
    return f'"{version}"'


def normalize_email(email: str) -> str:
    """NFKC, then lower case: what is stored and compared. Lower-casing can lengthen
    a string ('İ' becomes two code points), so lengths are checked after this."""
    return unicodedata.normalize("NFKC", email.strip()).lower()


def normalized(body: Any) -> Any:
    """A create or update body with its email normalised, ready to be validated."""
    if isinstance(body, dict) and isinstance(body.get("email"), str):
        return {**body, "email": normalize_email(body["email"])}
    return body


def to_api(row: Row) -> dict[str, Any]:
    """The user as the API shows it (and as its events carry it)."""
    return codec.api_view(row, ("id", "email", "name", "version"), ("created_at", "updated_at"))


@contextlib.contextmanager
def email_must_be_free() -> Iterator[None]:
    """Another user's email (the unique key refusing it) is 409 ``email_taken``."""
    try:
        yield
    except mysql.IntegrityError as exc:
        if is_duplicate_key(exc):
            raise APIError(409, "email_taken", "another user already has this email") from None
        raise


async def create(email: str, name: str) -> dict[str, Any]:
    now = codec.utc_now()
    row: Row = {
        "id": str(uuid.uuid4()),
        "email": email,
        "name": name,
        "version": 1,
        "created_at": now,
        "updated_at": now,
    }
    user = to_api(row)
    insert_user = (
        f"INSERT INTO users ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
        (row["id"], row["email"], row["name"], 1, now, now),
    )
    event = outbox.insert(events.envelope(events.USER_CREATED, row["id"], user, now))
    # One round trip: BEGIN, the user, its event, COMMIT.
    with email_must_be_free():
        async with MySQLManager.instance().transaction() as tx:
            await tx.script([insert_user, event], commit=True)
    outbox.notify_committed()
    return user


def cached(user: dict[str, Any]) -> Cached:
    return Cached(codec.dumps(user), user["version"], user["id"])


async def get(user_id: str) -> Cached:
    """The user as response bytes with its version, from Redis when cached, else from MariaDB."""
    return await RedisManager.instance().read_through(cache_key(user_id), lambda: load(user_id))


async def load(user_id: str) -> Cached:
    """The user from MariaDB, as the cache keeps it."""
    row = await MySQLManager.instance().fetchone(f"SELECT {_COLUMNS} FROM users WHERE id = %s", (user_id,))
    if row is None:
        raise not_found("user", user_id)
    return cached(to_api(row))


def lock_statement(user_id: str) -> Statement:
    """The lock of ``lock`` as a statement, to send with others in one round trip."""
    return ("SELECT id FROM users WHERE id = %s FOR UPDATE", (user_id,))


async def lock(tx: Tx, user_id: str) -> Row | None:
    """Lock the user's row for the rest of ``tx``: every event-writing change of a
    user locks it first (this, or a statement with ``FOR UPDATE`` on it), so that
    user's events commit in order."""
    return await tx.fetchone(f"SELECT {_COLUMNS} FROM users WHERE id = %s FOR UPDATE", (user_id,))


def _matches(if_match: str, version: int) -> bool:
    wanted = {tag.strip().removeprefix("W/") for tag in if_match.split(",")}
    return "*" in wanted or etag(version) in wanted


async def update(user_id: str, changes: UserUpdate, if_match: str | None = None) -> dict[str, Any]:
    """Apply a partial update; no event and no new version when nothing changes.

    Two round trips: BEGIN with the locking read, then the update, its event and COMMIT.
    """
    with email_must_be_free():
        async with MySQLManager.instance().transaction() as tx:
            row = await lock(tx, user_id)
            if row is None:
                raise not_found("user", user_id)
            if if_match is not None and not _matches(if_match, row["version"]):
                raise APIError(
                    412,
                    "precondition_failed",
                    "the user changed since that ETag",
                    details={"current_etag": etag(row["version"])},
                )
            if all(row[field] == value for field, value in changes.items()):
                return to_api(row)
            now = codec.utc_now()
            updated = {**row, **changes, "version": row["version"] + 1, "updated_at": now}
            user = to_api(updated)
            update_user = (
                "UPDATE users SET email = %s, name = %s, version = %s, updated_at = %s WHERE id = %s",
                (updated["email"], updated["name"], updated["version"], now, user_id),
            )
            event = outbox.insert(events.envelope(events.USER_UPDATED, user_id, user, now))
            await tx.script([update_user, event], commit=True)
    await RedisManager.instance().cache_put(cache_key(user_id), cached(user))
    outbox.notify_committed()
    return user


async def exists(user_id: str) -> bool:
    row = await MySQLManager.instance().fetchone("SELECT 1 AS found FROM users WHERE id = %s", (user_id,))
    return row is not None
