"""Users: create, read (cache-aside), update under a row lock with optional If-Match.

A user lives on the shard its id names (managers/shards.py). Its email is unique
across shards through a claim in the global home (``email_claims``), taken before
the user is written and released when the email changes. A process can die between
the claim and the user: a claim is therefore valid while its user, on its shard, has
that email; one that is not, and older than ``users.email_claim_lease_s``, is taken
over by the next create that wants the email. So neither a user without its claim
nor a claim that blocks a retry for good is ever left behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import unicodedata
import uuid
from collections.abc import Iterator
from typing import Any

from domain import codec, events, metadata, outbox
from domain.errors import APIError, not_found
from domain.schemas import MetadataPatch, UserUpdate
from managers import mysql
from managers.config import ConfigManager
from managers.crashpoints import crashpoint
from managers.mysql import Database, MySQLManager, Row, Statement, Tx, is_duplicate_key
from managers.redis import Cached, RedisManager

COLUMNS = mysql.Columns("id, email, name, version, created_at, updated_at, metadata")


def cache_key(user_id: str) -> str:
    # v2: the shape with metadata; an entry of the older shape is never read.
    return f"user:v2:{user_id}"


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
    view = codec.api_view(row, ("id", "email", "name", "version"), ("created_at", "updated_at"))
    return {**view, "metadata": metadata.loads(row.get("metadata"))}


def event_data(user: dict[str, Any]) -> dict[str, Any]:
    """The user as its events carry it (Kafka, the outbox, WebSocket frames, analytics):
    everything the API shows but the email, which stays in MariaDB. A consumer that needs
    it reads the user over REST."""
    return {name: value for name, value in user.items() if name != "email"}


EMAIL_TAKEN = (409, "email_taken", "another user already has this email")


def new_id() -> str:
    """A new user's id: random, so its logical shard is too."""
    return str(uuid.uuid4())


@contextlib.contextmanager
def email_must_be_free() -> Iterator[None]:
    """Another user's email (the unique key refusing it) is 409 ``email_taken``."""
    try:
        yield
    except mysql.IntegrityError as exc:
        if is_duplicate_key(exc):
            raise APIError(*EMAIL_TAKEN) from None
        raise


def _claim_statement(email: str, user_id: str, now: dt.datetime) -> Statement:
    return ("INSERT INTO email_claims (email, user_id, claimed_at) VALUES (%s, %s, %s)", (email, user_id, now))


async def claim_email(email: str, user_id: str) -> None:
    """Claim ``email`` for ``user_id`` in the global home, or raise 409 ``email_taken``.

    Claiming an email the user already holds succeeds. A claim held by another user is
    taken over only when it is stale: older than the lease, and its user does not have
    that email (its create died before writing the user, or its change of email did).
    """
    home = MySQLManager.instance().home
    now = codec.utc_now()
    claim = _claim_statement(email, user_id, now)
    try:
        async with home.cursor() as cur:
            await cur.execute(*claim)
        return
    except mysql.IntegrityError as exc:
        if not is_duplicate_key(exc):
            raise
    held = await home.fetchone("SELECT user_id, claimed_at FROM email_claims WHERE email = %s", (email,))
    if held is None or held["user_id"] == user_id:
        if held is None:  # released meanwhile: claim it now (a second race is a plain 409)
            with email_must_be_free():
                async with home.cursor() as cur:
                    await cur.execute(*claim)
        return
    lease_s = ConfigManager.instance()["users"]["email_claim_lease_s"]
    if (now - held["claimed_at"]).total_seconds() < lease_s or await _has_email(held["user_id"], email):
        raise APIError(*EMAIL_TAKEN)
    async with home.cursor() as cur:
        taken = await cur.execute(
            "UPDATE email_claims SET user_id = %s, claimed_at = %s"
            " WHERE email = %s AND user_id = %s AND claimed_at = %s",
            (user_id, now, email, held["user_id"], held["claimed_at"]),
        )
    if taken != 1:  # another create took it over first
        raise APIError(*EMAIL_TAKEN)


async def release_email(email: str, user_id: str) -> None:
    """Give up ``user_id``'s claim on ``email`` (no-op if it holds none)."""
    async with MySQLManager.instance().home.cursor() as cur:
        await cur.execute("DELETE FROM email_claims WHERE email = %s AND user_id = %s", (email, user_id))


async def _has_email(user_id: str, email: str) -> bool:
    row = (
        await MySQLManager.instance()
        .for_id(user_id)
        .fetchone("SELECT 1 AS found FROM users WHERE id = %s AND email = %s", (user_id, email))
    )
    return row is not None


async def create(email: str, name: str, meta: dict[str, str] | None = None) -> dict[str, Any]:
    """Claim the email, then write the user and its event on the user's shard.

    A write refused for certain (the shard's own unique key) gives the claim back; one
    whose outcome is unknown (the shard unreachable mid-commit) keeps it, and the lease
    settles it: valid if the user arrived, reclaimable if not.
    """
    now = codec.utc_now()
    row: Row = {
        "id": new_id(),
        "email": email,
        "name": name,
        "version": 1,
        "created_at": now,
        "updated_at": now,
        "metadata": metadata.dumps(metadata.created(meta)),
    }
    user = to_api(row)
    insert_user = (
        f"INSERT INTO users ({COLUMNS.list}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (row["id"], row["email"], row["name"], 1, now, now, row["metadata"]),
    )
    event = outbox.insert(events.envelope(events.USER_CREATED, row["id"], event_data(user), now))
    shard = MySQLManager.instance().for_id(row["id"])
    if shard is MySQLManager.instance().home and await _create_with_claim(shard, row, insert_user, event):
        return user
    await claim_email(email, row["id"])
    crashpoint("user_create.email_claimed")
    try:
        # One round trip: BEGIN, the user, its event, COMMIT.
        with email_must_be_free():
            async with shard.transaction() as tx:
                await tx.script([insert_user, event], commit=True)
    except mysql.UNAVAILABLE:
        raise
    except Exception:
        await release_email(email, row["id"])
        raise
    crashpoint("user_create.committed")
    outbox.notify_committed(shard)
    return user


async def _create_with_claim(home: Database, row: Row, insert_user: Statement, event: Statement) -> bool:
    """A user whose shard is the home (always, unsharded): the claim, the user and its event
    in one transaction, one round trip. False when the email is claimed already: the
    general path then settles that claim (perhaps a stale one) first."""
    try:
        async with home.transaction() as tx:
            await tx.script([_claim_statement(row["email"], row["id"], row["created_at"]), insert_user, event], True)
    except mysql.IntegrityError as exc:
        if is_duplicate_key(exc):
            return False
        raise
    crashpoint("user_create.committed")
    outbox.notify_committed(home)
    return True


def cached(user: dict[str, Any]) -> Cached:
    return Cached(codec.dumps(user), user["version"], user["id"])


async def get(user_id: str) -> Cached:
    """The user as response bytes with its version, from Redis when cached, else from MariaDB."""
    return await RedisManager.instance().read_through(cache_key(user_id), lambda: load(user_id))


async def load(user_id: str) -> Cached:
    """The user from MariaDB, as the cache keeps it."""
    row = COLUMNS.maybe(
        await MySQLManager.instance()
        .for_id(user_id)
        .fetchone(f"SELECT {COLUMNS.select} FROM users WHERE id = %s", (user_id,))
    )
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
    return COLUMNS.maybe(await tx.fetchone(f"SELECT {COLUMNS.select} FROM users WHERE id = %s FOR UPDATE", (user_id,)))


def _matches(if_match: str, version: int) -> bool:
    wanted = {tag.strip().removeprefix("W/") for tag in if_match.split(",")}
    return "*" in wanted or codec.etag(version) in wanted


async def update(user_id: str, changes: UserUpdate, if_match: str | None = None) -> dict[str, Any]:
    """Apply a partial update; no event and no new version when nothing changes.

    A new email is claimed first and the old one released after the commit (the module
    says why a crash in between leaves nothing stuck).
    """
    new_email = changes.get("email")
    if new_email is not None:
        await claim_email(new_email, user_id)  # the user's own email again: already theirs
    try:
        user, old_email = await _update(user_id, changes, if_match)
    except mysql.UNAVAILABLE:
        raise  # the outcome is unknown: the lease settles the claim
    except Exception:
        if new_email is not None and not await _has_email(user_id, new_email):
            await release_email(new_email, user_id)
        raise
    if old_email is not None:
        await release_email(old_email, user_id)
    return user


async def _update(user_id: str, changes: UserUpdate, if_match: str | None) -> tuple[dict[str, Any], str | None]:
    """The update itself, and the email it replaced (None if the email stayed).

    Two round trips: BEGIN with the locking read, then the update, its event and COMMIT.
    """
    shard = MySQLManager.instance().for_id(user_id)
    with email_must_be_free():
        async with shard.transaction() as tx:
            row = await lock(tx, user_id)
            if row is None:
                await MySQLManager.instance().missing(tx, user_id)
                raise not_found("user", user_id)
            if if_match is not None and not _matches(if_match, row["version"]):
                raise APIError(
                    412,
                    "precondition_failed",
                    "the user changed since that ETag",
                    details={"current_etag": codec.etag(row["version"])},
                )
            if all(row[field] == value for field, value in changes.items()):
                return to_api(row), None
            now = codec.utc_now()
            updated = {**row, **changes, "version": row["version"] + 1, "updated_at": now}
            user = to_api(updated)
            update_user = (
                "UPDATE users SET email = %s, name = %s, version = %s, updated_at = %s WHERE id = %s",
                (updated["email"], updated["name"], updated["version"], now, user_id),
            )
            event = outbox.insert(events.envelope(events.USER_UPDATED, user_id, event_data(user), now))
            await tx.script([update_user, event], commit=True)
    await RedisManager.instance().cache_put(cache_key(user_id), cached(user))
    outbox.notify_committed(shard)
    return user, row["email"] if row["email"] != updated["email"] else None


async def update_metadata(user_id: str, changes: MetadataPatch) -> dict[str, Any]:
    """Merge ``changes`` into the user's metadata (an empty value removes its key): a new
    version and a ``user_updated`` event, or nothing when nothing changes."""
    shard = MySQLManager.instance().for_id(user_id)
    async with shard.transaction() as tx:
        row = await lock(tx, user_id)
        if row is None:
            await MySQLManager.instance().missing(tx, user_id)
            raise not_found("user", user_id)
        now = codec.utc_now()
        updated = metadata.patched(row, changes["metadata"], now)
        if updated is None:
            return to_api(row)
        user = to_api(updated)
        update_user = (
            "UPDATE users SET metadata = %s, version = %s, updated_at = %s WHERE id = %s",
            (updated["metadata"], updated["version"], now, user_id),
        )
        event = outbox.insert(events.envelope(events.USER_UPDATED, user_id, event_data(user), now))
        await tx.script([update_user, event], commit=True)
    await RedisManager.instance().cache_put(cache_key(user_id), cached(user))
    outbox.notify_committed(shard)
    return user


async def exists(user_id: str) -> bool:
    mysql_shards = MySQLManager.instance()
    shard = mysql_shards.for_id(user_id)
    row = await shard.fetchone("SELECT 1 AS found FROM users WHERE id = %s", (user_id,))
    if row is None:
        await mysql_shards.missing(shard, user_id)
    return row is not None
