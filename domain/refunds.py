"""Refunds: partial, repeatable up to the payment's amount, idempotent, recorded and announced.

A refund lives on its payment's shard, with an id carrying the payment's logical shard
(``new_id``), so a read by refund id and a shard move find it like a payment. It is made
in one transaction of two round trips, READ COMMITTED:

1. BEGIN; the payment's user locked, then the payment (one lock order everywhere: user,
   then payment, as a status change takes them), read with the refund's idempotency
   row, if a key was given. Every refund of a payment waits here for the one before it,
   so what is left is read after the last refund committed, and a key's first request
   has committed (or rolled back) before its retry reads it.
2. The idempotency row (already holding the response), the refund, the payment's new
   ``amount_refunded_minor`` (and ``refunded`` status when nothing is left), its status
   history row (who refunded what), ``refund_created`` and ``payment_updated`` in the
   outbox, COMMIT.

``PUT /payments/{id}/status`` with ``refunded`` is ``refund_rest``: one refund of what is
left, through the same path.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any, NamedTuple

from domain import audit, codec, events, outbox, payments
from domain.audit import Actor
from domain.errors import APIError, not_found
from domain.money import MoneyError, format_amount, parse_amount
from managers import mysql
from managers.mysql import MySQLManager, Row, Statement, Tx
from managers.redis import RedisManager
from managers.shards import logical_shard, new_id

SUCCEEDED = "succeeded"  # made in its payment's transaction: there is no pending refund
COMPLETED, REFUNDED = "completed", "refunded"
COLUMNS = mysql.Columns("id, payment_id, user_id, amount_minor, currency, reason, status, created_at")
_PAYMENT = mysql.Columns(payments.COLUMNS.list, table="p")


def to_api(row: Row) -> dict[str, Any]:
    """The refund as the API shows it (and as its ``refund_created`` event carries it)."""
    view = codec.api_view(row, ("id", "payment_id", "currency", "reason", "status"), ("created_at",))
    return {**view, "amount": format_amount(row["amount_minor"], row["currency"])}


class Made(NamedTuple):
    """The outcome of a refund request: the status and body to send, whether it is a
    replay, and the payment after it (None for a replay)."""

    status: int
    body: bytes
    replayed: bool
    payment: dict[str, Any] | None


def request_fingerprint(payment_id: str, amount_minor: int | None, reason: str | None) -> str:
    """What makes two refund requests 'the same body' (``10.5`` and ``"10.50"`` are one
    amount); no amount is its own value ("what is left"), whatever is left."""
    canonical = json.dumps([payment_id, amount_minor, reason], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _minor_units(amount: Decimal | int | str, currency: str, max_amount: int) -> int:
    """The amount in the payment's currency, under the rules of payments (domain/money.py)."""
    try:
        return parse_amount(amount, currency, max_amount)
    except MoneyError as exc:
        raise APIError(422, exc.code, str(exc), details=[{"field": exc.field, "message": str(exc)}]) from None


async def create(
    payment_id: str,
    amount: Decimal | int | str | None,
    reason: str | None,
    actor: Actor,
    max_amount: int,
    idempotency_key: str | None = None,
) -> Made:
    """Refund ``amount`` (None: what is left) of a completed payment (module docstring).

    An ``idempotency_key`` is remembered per payment (stored as ``payment|admin:key``: only
    admin keys refund, and the payment's id puts it on the payment's shard)."""
    if idempotency_key is not None:
        idempotency_key = f"{payment_id}|admin:{idempotency_key}"
    shard = MySQLManager.instance().for_id(payment_id)
    async with shard.transaction("READ COMMITTED") as tx:
        row = await _lock(tx, payment_id, idempotency_key)
        amount_minor = None if amount is None else _minor_units(amount, row["currency"], max_amount)
        fingerprint = request_fingerprint(payment_id, amount_minor, reason)
        if row["idem_hash"] is not None:
            if row["idem_hash"] != fingerprint:
                raise APIError(
                    422, "idempotency_key_reused", "this Idempotency-Key was used with a different request body"
                )
            return Made(row["idem_status"], row["idem_body"].encode(), replayed=True, payment=None)
        if row["status"] not in (COMPLETED, REFUNDED):
            raise APIError(
                409,
                "payment_not_refundable",
                f"a {row['status']} payment cannot be refunded: only a completed one",
                details={"status": row["status"]},
            )
        payment, response = await _refund(tx, row, amount_minor, reason, actor, idempotency_key, fingerprint)
    await _committed(shard, payment)
    return Made(201, response, replayed=False, payment=payment)


async def refund_rest(payment_id: str, actor: Actor) -> dict[str, Any]:
    """``PUT /payments/{id}/status`` with ``refunded``: one refund of what is left; the
    status machine's rules and answers otherwise (``refunded`` again changes nothing)."""
    shard = MySQLManager.instance().for_id(payment_id)
    async with shard.transaction("READ COMMITTED") as tx:
        row = await _lock(tx, payment_id, None)
        if row["status"] == REFUNDED:
            return payments.to_api(row)
        if row["status"] != COMPLETED:
            raise payments.invalid_transition(row["status"], REFUNDED)
        payment, _ = await _refund(tx, row, None, None, actor, None, None)
    await _committed(shard, payment)
    return payment


async def _lock(tx: Tx, payment_id: str, idempotency_key: str | None) -> Row:
    """Step 1: the payment locked after its user, with the idempotency row's columns."""
    lock_owner = (
        "SELECT id FROM users WHERE id = (SELECT user_id FROM payments WHERE id = %s) FOR UPDATE",
        (payment_id,),
    )
    columns = ("request_hash", "status_code", "response_body")
    args: tuple[str, ...]
    if idempotency_key is None:
        idem, args = "NULL AS idem_hash, NULL AS idem_status, NULL AS idem_body", (payment_id,)
    else:
        select = "(SELECT {} FROM idempotency_keys WHERE idem_key = %s) AS {}"
        idem = ", ".join(
            select.format(c, a) for c, a in zip(columns, ("idem_hash", "idem_status", "idem_body"), strict=True)
        )
        args = (idempotency_key, idempotency_key, idempotency_key, payment_id)
    row = _PAYMENT.maybe(
        await tx.fetchone(
            f"SELECT {_PAYMENT.select}, {idem} FROM payments p WHERE p.id = %s FOR UPDATE", args, first=[lock_owner]
        )
    )
    if row is None:
        await MySQLManager.instance().missing(tx, payment_id)
        raise not_found("payment", payment_id)
    return row


async def _refund(
    tx: Tx,
    row: Row,
    amount_minor: int | None,
    reason: str | None,
    actor: Actor,
    idempotency_key: str | None,
    fingerprint: str | None,
) -> tuple[dict[str, Any], bytes]:
    """Step 2 for the locked payment ``row``: the payment after the refund, and the refund
    as the response's bytes. ``amount_minor`` None is what is left."""
    currency, left = row["currency"], row["amount_minor"] - row["amount_refunded_minor"]
    if amount_minor is None:
        amount_minor = left
    if amount_minor > left or amount_minor <= 0:
        raise APIError(
            422,
            "refund_exceeds_payment",
            f"the refunds of a payment add up to at most its amount: {format_amount(left, currency)} is left",
            details={
                "amount_refundable": format_amount(left, currency),
                "amount_refunded": format_amount(row["amount_refunded_minor"], currency),
                "currency": currency,
            },
        )
    payment_id, user_id = row["id"], row["user_id"]
    now = codec.utc_now()
    refund_row: Row = {
        "id": new_id(logical_shard(payment_id)),
        "payment_id": payment_id,
        "user_id": user_id,
        "amount_minor": amount_minor,
        "currency": currency,
        "reason": reason,
        "status": SUCCEEDED,
        "created_at": now,
    }
    refunded = row["amount_refunded_minor"] + amount_minor
    status = REFUNDED if refunded == row["amount_minor"] else row["status"]
    version = row["version"] + 1
    payment = payments.to_api(
        {**row, "amount_refunded_minor": refunded, "status": status, "version": version, "updated_at": now}
    )
    refund = to_api(refund_row)
    refund_ref = {"id": refund["id"], "amount": refund["amount"], "reason": reason}
    response = codec.dumps(refund)
    statements: list[Statement] = []
    if idempotency_key is not None:
        statements.append(
            (
                "INSERT INTO idempotency_keys (idem_key, request_hash, status_code, response_body, created_at)"
                " VALUES (%s, %s, 201, %s, %s)",
                (idempotency_key, fingerprint, response.decode(), now),
            )
        )
    statements += [
        (
            f"INSERT INTO refunds ({COLUMNS.list}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            tuple(refund_row[name] for name in COLUMNS.names),
        ),
        (
            "UPDATE payments SET amount_refunded_minor = %s, status = %s, version = %s, updated_at = %s WHERE id = %s",
            (refunded, status, version, now, payment_id),
        ),
        (
            "INSERT INTO payment_status_history (payment_id, from_status, to_status, version, actor_key_id,"
            " request_id, remote_ip, created_at, refund_id, refund_amount_minor)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (payment_id, row["status"], status, version, *actor, now, refund["id"], amount_minor),
        ),
        audit.insert(
            actor,
            audit.Action.PAYMENT_REFUNDED,
            payment_id,
            audit.diff(
                {
                    "amount_refunded": format_amount(row["amount_refunded_minor"], currency),
                    "status": row["status"],
                    "refund": None,
                },
                {"amount_refunded": payment["amount_refunded"], "status": status, "refund": refund_ref},
            ),
            owner_id=user_id,
            at=now,
        ),
        outbox.insert(events.envelope(events.REFUND_CREATED, user_id, refund, now)),
        outbox.insert(
            events.envelope(events.PAYMENT_UPDATED, user_id, {**payment, "previous_status": row["status"]}, now)
        ),
    ]
    await tx.script(statements, commit=True)
    return payment, response


async def _committed(shard: Any, payment: dict[str, Any]) -> None:
    await RedisManager.instance().cache_put(payments.cache_key(payment["id"]), payments.cached(payment))
    outbox.notify_committed(shard)


# -- read -----------------------------------------------------------------------------------
async def get(refund_id: str) -> tuple[dict[str, Any], str]:
    """The refund and its owner (the payment's user), from the shard its id names."""
    mysql_shards = MySQLManager.instance()
    shard = mysql_shards.for_id(refund_id)
    row = COLUMNS.maybe(await shard.fetchone(f"SELECT {COLUMNS.select} FROM refunds WHERE id = %s", (refund_id,)))
    if row is None:
        await mysql_shards.missing(shard, refund_id)
        raise not_found("refund", refund_id)
    return to_api(row), row["user_id"]


async def list_for_payment(payment_id: str, limit: int, cursor: str | None) -> dict[str, Any]:
    """A page of the payment's refunds, oldest first (the caller has checked the payment)."""
    args: list[object] = [payment_id]
    where = "payment_id = %s"
    if cursor is not None:
        created_at, refund_id = payments.decode_cursor(cursor)
        where += " AND (created_at > %s OR (created_at = %s AND id > %s))"
        args += [created_at, created_at, refund_id]
    rows = [
        COLUMNS.row(r)
        for r in await MySQLManager.instance()
        .for_id(payment_id)
        .fetchall(
            f"SELECT {COLUMNS.select} FROM refunds WHERE {where} ORDER BY created_at, id LIMIT %s", (*args, limit + 1)
        )
    ]
    page, more = rows[:limit], len(rows) > limit
    return {"items": [to_api(r) for r in page], "next_cursor": payments.encode_cursor(page[-1]) if more else None}
