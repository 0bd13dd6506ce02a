"""Payments: exact amounts, idempotent creation, a status state machine, pages."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from typing import Any, NamedTuple

from domain import audit, codec, events, metadata, outbox, users
from domain.audit import Actor
from domain.errors import APIError, not_found, user_not_found
from domain.money import MoneyError, format_amount, parse_amount
from domain.schemas import MetadataPatch, PaymentCreate
from managers import mysql
from managers.mysql import Database, MySQLManager, Row, Statement, Tx, is_duplicate_key, is_missing_parent
from managers.redis import Cached, RedisManager
from managers.shards import logical_shard, new_id

PENDING = "pending"
# Where each status may go next; absent or empty means final.
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"processing", "completed", "failed", "cancelled"}),
    "processing": frozenset({"completed", "failed"}),
    "completed": frozenset({"refunded"}),
    "failed": frozenset(),
    "cancelled": frozenset(),
    "refunded": frozenset(),
}
COLUMNS = mysql.Columns(
    "id, user_id, amount_minor, currency, description, status, version, created_at, updated_at,"
    " amount_refunded_minor, metadata"
)


def cache_key(payment_id: str) -> str:
    # v2: the shape with metadata and amount_refunded; an entry of the older shape is never read.
    return f"payment:v2:{payment_id}"


def to_api(row: Row) -> dict[str, Any]:
    """The payment as the API shows it (and as its events carry it): the amount exact, in
    the currency's minor-unit digits."""
    fields = ("id", "user_id", "currency", "description", "status", "version")
    view = codec.api_view(row, fields, ("created_at", "updated_at"))
    return {
        **view,
        "amount": format_amount(row["amount_minor"], row["currency"]),
        "amount_refunded": format_amount(row.get("amount_refunded_minor", 0), row["currency"]),
        "metadata": metadata.loads(row.get("metadata")),
    }


# -- create ---------------------------------------------------------------------------------
class Created(NamedTuple):
    """The outcome of a create: the status and body to send, and whether it is a replay."""

    status: int
    body: bytes
    replayed: bool


def request_fingerprint(
    user_id: str, amount_minor: int, currency: str, description: str | None, meta: dict[str, str] | None = None
) -> str:
    """What makes two create requests 'the same body' (100.5 and "100.50" are the same amount).
    Metadata counts only when there is some, so a key stored before metadata existed still matches."""
    fields: list[object] = [user_id, amount_minor, currency, description, *([meta] if meta else [])]
    canonical = json.dumps(fields, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def create(
    body: PaymentCreate,
    max_amount: int,
    idempotency_key: str | None = None,
    idempotency_scope: str = "admin",
    *,
    actor: Actor,
) -> Created:
    """Create a pending payment, on its user's shard, with an id that names that shard,
    recording the key that created it (``created_by_key_id``, and an audit row).

    An ``idempotency_key`` is remembered within its caller's ``idempotency_scope`` and the
    payment's user: two callers choosing the same key never collide, and the key lives
    on the user's shard, in the payment's own transaction (stored as ``user|scope:key``,
    so a move of the user's logical shard finds it by the user's id range)."""
    user_id = body["user_id"]
    if idempotency_key is not None:
        idempotency_key = f"{user_id}|{idempotency_scope}:{idempotency_key}"
    try:
        amount_minor = parse_amount(body["amount"], body["currency"], max_amount)
    except MoneyError as exc:
        raise APIError(422, exc.code, str(exc), details=[{"field": exc.field, "message": str(exc)}]) from None
    description = body.get("description")
    meta = metadata.created(body.get("metadata"))
    fingerprint = request_fingerprint(user_id, amount_minor, body["currency"], description, meta)
    now = codec.utc_now()
    row = {
        "id": new_id(logical_shard(user_id)),
        "user_id": user_id,
        "amount_minor": amount_minor,
        "currency": body["currency"],
        "description": description,
        "status": PENDING,
        "version": 1,
        "created_at": now,
        "updated_at": now,
        "amount_refunded_minor": 0,
        "metadata": metadata.dumps(meta),
    }
    payment = to_api(row)
    response = codec.dumps(payment)
    # One round trip: BEGIN, the user's lock (its events commit in order), the
    # idempotency key already holding its response, the payment, its event, its audit row, COMMIT.
    # A missing user fails the payment's foreign key; a key in use fails its own.
    statements: list[Statement] = [users.lock_statement(user_id)]
    if idempotency_key is not None:
        statements.append(
            (
                "INSERT INTO idempotency_keys (idem_key, request_hash, status_code, response_body, created_at)"
                " VALUES (%s, %s, 201, %s, %s)",
                (idempotency_key, fingerprint, response.decode(), now),
            )
        )
    statements.append(
        (
            f"INSERT INTO payments ({COLUMNS.list}, created_by_key_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (*(row[name] for name in COLUMNS.names), actor.key_id),
        )
    )
    statements.append(outbox.insert(events.envelope(events.PAYMENT_CREATED, user_id, payment, now)))
    statements.append(
        audit.insert(actor, audit.Action.PAYMENT_CREATED, payment["id"], _audited(None, payment), user_id, now)
    )
    shard = MySQLManager.instance().for_id(user_id)
    try:
        async with shard.transaction() as tx:
            await tx.script(statements, commit=True)
    except mysql.IntegrityError as exc:
        if is_missing_parent(exc):
            await MySQLManager.instance().missing(shard, user_id)
            raise user_not_found(user_id) from None
        if idempotency_key is None or not is_duplicate_key(exc):
            raise
        return await _replay(shard, idempotency_key, fingerprint)
    outbox.notify_committed(shard)
    return Created(201, response, replayed=False)


async def _replay(shard: Database, idempotency_key: str, fingerprint: str) -> Created:
    row = await shard.fetchone(
        "SELECT request_hash, status_code, response_body FROM idempotency_keys WHERE idem_key = %s",
        (idempotency_key,),
    )
    if row is None or row["status_code"] is None:  # its first request rolled back meanwhile
        raise APIError(
            409,
            "idempotency_key_in_use",
            "a request with this key did not complete; retry",
            headers={"Retry-After": "1"},
        )
    if row["request_hash"] != fingerprint:
        raise APIError(422, "idempotency_key_reused", "this Idempotency-Key was used with a different request body")
    return Created(row["status_code"], row["response_body"].encode(), replayed=True)


# -- read -----------------------------------------------------------------------------------
def cached(payment: dict[str, Any]) -> Cached:
    return Cached(codec.dumps(payment), payment["version"], payment["user_id"])


async def get(payment_id: str) -> Cached:
    """The payment as response bytes with its version and owner, from Redis when cached, else MariaDB."""

    async def load() -> Cached:
        mysql_shards = MySQLManager.instance()
        shard = mysql_shards.for_id(payment_id)
        row = COLUMNS.maybe(await shard.fetchone(f"SELECT {COLUMNS.select} FROM payments WHERE id = %s", (payment_id,)))
        if row is None:
            await mysql_shards.missing(shard, payment_id)
            raise not_found("payment", payment_id)
        return cached(to_api(row))

    return await RedisManager.instance().read_through(cache_key(payment_id), load)


# -- status ---------------------------------------------------------------------------------
async def _lock_payment(tx: Tx, payment_id: str) -> Row:
    """The payment, with its user's row and its own locked (user first, then payment:
    one lock order everywhere), in the transaction's first round trip."""
    lock_owner = (
        "SELECT id FROM users WHERE id = (SELECT user_id FROM payments WHERE id = %s) FOR UPDATE",
        (payment_id,),
    )
    row = COLUMNS.maybe(
        await tx.fetchone(
            f"SELECT {COLUMNS.select} FROM payments WHERE id = %s FOR UPDATE", (payment_id,), first=[lock_owner]
        )
    )
    if row is None:
        await MySQLManager.instance().missing(tx, payment_id)
        raise not_found("payment", payment_id)
    return row


def _audited(before: dict[str, Any] | None, after: dict[str, Any]) -> audit.Changes:
    """What the audit row of a change says changed: the payment's amount, currency, owner,
    status and version (its free-text description stays out of the audit trail)."""
    fields = ("user_id", "amount", "currency", "status", "version")
    return audit.diff(before and {f: before[f] for f in fields}, {f: after[f] for f in fields})


def invalid_transition(current: str, new_status: str) -> APIError:
    return APIError(
        409,
        "invalid_transition",
        f"a {current} payment cannot become {new_status}",
        details={"from": current, "to": new_status, "allowed": sorted(TRANSITIONS[current])},
    )


async def update_status(payment_id: str, new_status: str, actor: Actor) -> dict[str, Any]:
    """Move along the state machine; the same status again is a no-op with no event.

    Each change writes its event, its ``payment_status_history`` row and its audit row
    in the same transaction as the change itself: two round trips, the locking read
    with its BEGIN, then the writes with the COMMIT. ``refunded`` is a refund of what is
    left (domain/refunds.py's ``refund_rest``, which the handler calls instead).
    """
    shard = MySQLManager.instance().for_id(payment_id)
    async with shard.transaction() as tx:
        row = await _lock_payment(tx, payment_id)
        current = row["status"]
        if new_status == current:
            return to_api(row)
        if new_status not in TRANSITIONS[current]:
            raise invalid_transition(current, new_status)
        now = codec.utc_now()
        updated = {**row, "status": new_status, "version": row["version"] + 1, "updated_at": now}
        payment = to_api(updated)
        data = {**payment, "previous_status": current}
        await tx.script(
            [
                (
                    "UPDATE payments SET status = %s, version = %s, updated_at = %s WHERE id = %s",
                    (new_status, updated["version"], now, payment_id),
                ),
                (
                    "INSERT INTO payment_status_history (payment_id, from_status, to_status, version, actor_key_id,"
                    " request_id, remote_ip, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    (payment_id, current, new_status, updated["version"], *actor, now),
                ),
                outbox.insert(events.envelope(events.PAYMENT_UPDATED, row["user_id"], data, now)),
                audit.insert(
                    actor,
                    audit.Action.PAYMENT_STATUS_CHANGED,
                    payment_id,
                    _audited(to_api(row), payment),
                    row["user_id"],
                    now,
                ),
            ],
            commit=True,
        )
    await RedisManager.instance().cache_put(cache_key(payment_id), cached(payment))
    outbox.notify_committed(shard)
    return payment


async def history(payment_id: str) -> list[dict[str, Any]]:
    """The payment's status changes, oldest first."""
    rows = (
        await MySQLManager.instance()
        .for_id(payment_id)
        .fetchall(
            "SELECT from_status, to_status, version, actor_key_id, request_id, remote_ip, created_at,"
            " refund_id, refund_amount_minor, (SELECT currency FROM payments WHERE id = %s) AS currency"
            " FROM payment_status_history WHERE payment_id = %s ORDER BY version",
            (payment_id, payment_id),
        )
    )
    return [
        {
            "from": row["from_status"],
            "to": row["to_status"],
            "version": row["version"],
            "actor_key_id": row["actor_key_id"],
            "request_id": row["request_id"],
            "remote_ip": row["remote_ip"],
            "refund": {"id": row["refund_id"], "amount": format_amount(row["refund_amount_minor"], row["currency"])}
            if row["refund_id"]
            else None,
            "at": codec.rfc3339(row["created_at"]),
        }
        for row in rows
    ]


async def update_metadata(payment_id: str, changes: MetadataPatch) -> dict[str, Any]:
    """Merge ``changes`` into the payment's metadata (an empty value removes its key): a new
    version and a ``payment_updated`` event, or nothing when nothing changes. Two round
    trips, as a status change."""
    shard = MySQLManager.instance().for_id(payment_id)
    async with shard.transaction() as tx:
        row = await _lock_payment(tx, payment_id)
        now = codec.utc_now()
        updated = metadata.patched(row, changes["metadata"], now)
        if updated is None:
            return to_api(row)
        payment = to_api(updated)
        await tx.script(
            [
                (
                    "UPDATE payments SET metadata = %s, version = %s, updated_at = %s WHERE id = %s",
                    (updated["metadata"], updated["version"], now, payment_id),
                ),
                outbox.insert(
                    events.envelope(
                        events.PAYMENT_UPDATED, row["user_id"], {**payment, "previous_status": row["status"]}, now
                    )
                ),
            ],
            commit=True,
        )
    await RedisManager.instance().cache_put(cache_key(payment_id), cached(payment))
    outbox.notify_committed(shard)
    return payment


# -- pages ----------------------------------------------------------------------------------
class Filters(NamedTuple):
    """What a page of a user's payments is filtered by; each is an index's prefix or range."""

    status: str | None = None
    created_gte: dt.datetime | None = None  # naive UTC, as the column holds times
    created_lt: dt.datetime | None = None

    def tag(self) -> str:
        """What a cursor carries to be taken with these filters only."""
        times = [t.isoformat() if t else None for t in (self.created_gte, self.created_lt)]
        return hashlib.sha256(json.dumps([self.status, *times]).encode()).hexdigest()[:16]


def encode_cursor(row: Row, tag: str = "") -> str:
    raw = json.dumps([row["created_at"].isoformat(), row["id"], *([tag] if tag else [])]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, tag: str = "") -> tuple[dt.datetime, str]:
    """The position a cursor holds; 400 when it is not one of ours, or was made with
    filters other than those ``tag`` stands for."""
    invalid = APIError(400, "invalid_cursor", "cursor is not one this service issued")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, item_id, *bound = codec.loads(raw)
        when = dt.datetime.fromisoformat(created_at)
    except (ValueError, TypeError, binascii.Error):
        raise invalid from None
    if when.tzinfo is not None or not isinstance(item_id, str) or not codec.is_uuid(item_id) or len(bound) > 1:
        raise invalid
    if bound and bound != [tag]:  # one issued before cursors carried their filters carries none
        raise APIError(
            400,
            "cursor_filter_mismatch",
            "this cursor was issued for other filters: send the same status, created_gte and created_lt",
        )
    return when, item_id


async def list_for_user(user_id: str, limit: int, cursor: str | None, filters: Filters) -> dict[str, Any]:
    """A page, newest first: one round trip (an empty page takes a second, to tell an
    unknown user, 404, from one with no payments). With a status, the page is a range of
    ``(user_id, status, created_at, id)``; without, of ``(user_id, created_at, id)``
    (``page_query``)."""
    args: list[object]  # the user id and the filters, then a cursor's time and id
    where, args = ["user_id = %s"], [user_id]
    if filters.status is not None:
        where.append("status = %s")
        args.append(filters.status)
    if filters.created_gte is not None:
        where.append("created_at >= %s")
        args.append(filters.created_gte)
    if filters.created_lt is not None:
        where.append("created_at < %s")
        args.append(filters.created_lt)
    tag = filters.tag()
    if cursor is not None:
        created_at, payment_id = decode_cursor(cursor, tag)
        where.append("(created_at < %s OR (created_at = %s AND id < %s))")
        args += [created_at, created_at, payment_id]
    rows = [
        COLUMNS.row(r)
        for r in await MySQLManager.instance().for_id(user_id).fetchall(page_query(where), (*args, limit + 1))
    ]
    if not rows and not await users.exists(user_id):
        raise not_found("user", user_id)
    page, more = rows[:limit], len(rows) > limit
    return {"items": [to_api(r) for r in page], "next_cursor": encode_cursor(page[-1], tag) if more else None}


def page_query(where: list[str]) -> str:
    """The SQL of a page (tests EXPLAIN it): the page's ids from the index alone, a range of it
    read in its order, then their rows by primary key. Asked for whole rows at once, MariaDB
    (10.11) walks the index from the user's newest payment, fetching every row on the way to
    test the time filter: 3,800 rows read for a page of 20 from a user with 100,000 payments,
    where the index alone costs a range of 21 entries."""
    ids = f"SELECT id FROM payments WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC LIMIT %s"
    return f"SELECT {COLUMNS.select} FROM payments JOIN ({ids}) AS page USING (id) ORDER BY created_at DESC, id DESC"
