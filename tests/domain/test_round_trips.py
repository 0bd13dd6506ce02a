"""How many round trips to MariaDB each write takes (the real server; the driver's
calls are counted, not replaced). Fewer trips is latency a client does not wait for."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import aiomysql
import pytest

from domain import payments, refunds, users
from domain.audit import Actor

ACTOR = Actor(None, "round-trips", "127.0.0.1")


@pytest.fixture
def round_trips(monkeypatch):
    """The statements batches and commits/rollbacks sent by the current task."""
    sent: list[str] = []

    def counting(method, what):
        async def wrapper(self, *args, **kwargs):
            if asyncio.current_task() is counting.task:
                sent.append(what(args))
            return await method(self, *args, **kwargs)

        return wrapper

    counting.task = None
    monkeypatch.setattr(aiomysql.Cursor, "execute", counting(aiomysql.Cursor.execute, lambda a: a[0]))
    monkeypatch.setattr(aiomysql.Connection, "commit", counting(aiomysql.Connection.commit, lambda a: "COMMIT"))
    monkeypatch.setattr(aiomysql.Connection, "rollback", counting(aiomysql.Connection.rollback, lambda a: "ROLLBACK"))

    def start():
        counting.task = asyncio.current_task()
        sent.clear()
        return sent

    return start


@pytest.mark.gen_test
async def test_a_payment_is_created_in_one_round_trip_with_or_without_a_key(api, round_trips):
    user = await api.new_user()
    body = {"user_id": user["id"], "amount": Decimal("5.00"), "currency": "EUR"}
    sent = round_trips()
    await payments.create(body, Decimal(1000), actor=ACTOR)
    assert len(sent) == 1 and sent[0].startswith("BEGIN") and sent[0].endswith("COMMIT"), sent
    key = f"round-trip-{uuid.uuid4()}"
    sent = round_trips()
    created = await payments.create(body, Decimal(1000), key, actor=ACTOR)
    assert len(sent) == 1, sent
    sent = round_trips()
    replayed = await payments.create(body, Decimal(1000), key, actor=ACTOR)
    assert replayed.replayed and replayed.body == created.body
    assert len(sent) <= 3, sent  # the attempt, its rollback, the stored response


@pytest.mark.gen_test
async def test_a_status_change_and_a_user_update_take_two_round_trips(api, round_trips):
    user = await api.new_user()
    payment = await api.new_payment(user["id"])
    sent = round_trips()
    await payments.update_status(payment["id"], "processing", ACTOR)
    assert len(sent) == 2, sent
    sent = round_trips()
    await users.update(user["id"], {"name": "Two trips"})
    assert len(sent) == 2, sent
    sent = round_trips()
    await users.create(f"trips-{payment['id']}@example.com", "One trip")
    assert len(sent) == 1, sent


@pytest.mark.gen_test
async def test_a_page_of_payments_is_one_round_trip(api, round_trips):
    user = await api.new_user()
    await api.new_payment(user["id"])
    sent = round_trips()
    page = await payments.list_for_user(user["id"], 20, None, payments.Filters())
    assert len(page["items"]) == 1 and len(sent) == 1, sent


@pytest.mark.gen_test
async def test_a_refund_takes_two_round_trips_and_its_replay_one(api, round_trips):
    """The locking read (with the key's stored response, if any) with its BEGIN, then every
    write with the COMMIT; a replay answers from the first."""
    user = await api.new_user()
    payment = await api.new_payment(user["id"], amount="10.00")
    await api.put(f"/api/v1/payments/{payment['id']}/status", {"status": "completed"})
    key = f"round-trip-{uuid.uuid4()}"
    sent = round_trips()
    made = await refunds.create(payment["id"], "1.00", None, ACTOR, Decimal(1000), key)
    assert made.status == 201 and len(sent) == 2, sent
    assert sent[0].startswith("SET TRANSACTION ISOLATION LEVEL READ COMMITTED") and sent[1].endswith("COMMIT"), sent
    sent = round_trips()
    again = await refunds.create(payment["id"], "1.00", None, ACTOR, Decimal(1000), key)
    assert again.replayed and again.body == made.body
    assert len(sent) == 2 and sent[1] == "COMMIT", sent  # the read, and the empty transaction's end
