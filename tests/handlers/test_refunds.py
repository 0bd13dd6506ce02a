"""Refunds against the real MariaDB, Redis, Kafka and FerretDB: partial and whole, exact,
idempotent, admin-made, one winner among concurrent over-refunds, the status machine's
`refunded`, and the events every refund sends."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import pytest

from managers.mysql import MySQLManager
from tests.handlers.test_ws import Client
from tests.helpers import end_positions, read_events, topic_consumer, wait_until

MISSING = "00000000-0000-4000-8000-000000000000"


async def completed_payment(api, user_id: str | None = None, amount="100.00", currency="USD") -> dict:
    if user_id is None:
        user_id = (await api.new_user())["id"]
    payment = await api.new_payment(user_id, amount=amount, currency=currency)
    code, body, _ = await api.put(f"/api/v1/payments/{payment['id']}/status", {"status": "completed"})
    assert code == 200, body
    return body


def refunds_of(payment: dict) -> str:
    return f"/api/v1/payments/{payment['id']}/refunds"


@pytest.mark.gen_test
async def test_partial_refunds_add_up_to_the_amount_then_the_payment_is_refunded(api):
    payment = await completed_payment(api)
    code, first, _ = await api.post(refunds_of(payment), {"amount": "10.00", "reason": "requested_by_customer"})
    assert code == 201, first
    assert set(first) == {"id", "payment_id", "amount", "currency", "reason", "status", "created_at"}
    assert (first["payment_id"], first["amount"], first["currency"]) == (payment["id"], "10.00", "USD")
    assert (first["reason"], first["status"]) == ("requested_by_customer", "succeeded")
    code, after, _ = await api.get(f"/api/v1/payments/{payment['id']}")  # the cache was updated too
    assert code == 200 and after["status"] == "completed" and after["amount_refunded"] == "10.00"
    assert after["version"] == payment["version"] + 1

    code, second, _ = await api.post(refunds_of(payment), {"amount": 25.5})  # a JSON number, read exactly
    assert code == 201 and second["amount"] == "25.50" and second["reason"] is None
    code, rest, _ = await api.post(refunds_of(payment), {})  # no amount: what is left
    assert code == 201 and rest["amount"] == "64.50"
    code, after, _ = await api.get(f"/api/v1/payments/{payment['id']}")
    assert after["status"] == "refunded" and after["amount_refunded"] == "100.00"

    code, page, _ = await api.get(refunds_of(payment))
    assert code == 200 and page["next_cursor"] is None
    assert [r["id"] for r in page["items"]] == [first["id"], second["id"], rest["id"]]  # oldest first
    code, page, _ = await api.get(refunds_of(payment) + "?limit=2")
    code, more, _ = await api.get(refunds_of(payment) + f"?limit=2&cursor={page['next_cursor']}")
    assert [r["id"] for r in page["items"] + more["items"]] == [first["id"], second["id"], rest["id"]]
    code, fetched, _ = await api.get(f"/api/v1/refunds/{second['id']}")
    assert code == 200 and fetched == second
    row = await MySQLManager.instance().home.fetchone(
        "SELECT amount_minor, amount_refunded_minor FROM payments WHERE id = %s", (payment["id"],)
    )
    assert row == {"amount_minor": 10000, "amount_refunded_minor": 10000}


@pytest.mark.gen_test
async def test_more_than_what_is_left_is_422_with_what_is_left(api):
    payment = await completed_payment(api, amount="1.250", currency="KWD")
    assert (await api.post(refunds_of(payment), {"amount": "1.000"}))[0] == 201
    code, body, _ = await api.post(refunds_of(payment), {"amount": "0.251"})
    assert code == 422 and body["error"]["code"] == "refund_exceeds_payment"
    assert body["error"]["details"] == {"amount_refundable": "0.250", "amount_refunded": "1.000", "currency": "KWD"}
    assert (await api.post(refunds_of(payment), {"amount": "0.25"}))[0] == 201
    code, body, _ = await api.post(refunds_of(payment), {})  # nothing is left
    assert code == 422 and body["error"]["details"]["amount_refundable"] == "0.000"


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("amount", "currency", "code"),
    [
        ("1.5", "JPY", "invalid_amount"),
        ("0.001", "USD", "invalid_amount"),
        ("0", "USD", "invalid_amount"),
        ("1000000.01", "USD", "amount_too_large"),
        ("1e2", "USD", "validation_failed"),
        (-1, "USD", "validation_failed"),
    ],
)
async def test_a_refunds_amount_follows_the_rules_of_payments_in_its_currency(api, amount, currency, code):
    payment = await completed_payment(api, amount="500" if currency == "JPY" else "100.00", currency=currency)
    status, body, _ = await api.post(refunds_of(payment), {"amount": amount})
    assert (status, body["error"]["code"]) == (422, code), body
    assert [d["field"] for d in body["error"]["details"]] == ["amount"]


@pytest.mark.gen_test
@pytest.mark.parametrize("body", [{"reason": "because"}, {"amount": "1.00", "extra": 1}, {"amount": None}, []])
async def test_malformed_refund_bodies_are_422(api, body):
    payment = await completed_payment(api)
    code, response, _ = await api.post(refunds_of(payment), body)
    assert code == 422 and response["error"]["code"] == "validation_failed"


@pytest.mark.gen_test
async def test_only_a_completed_payment_is_refunded(api):
    user = await api.new_user()
    pending = await api.new_payment(user["id"])
    code, body, _ = await api.post(refunds_of(pending), {"amount": "1.00"})
    assert code == 409 and body["error"] == {
        "code": "payment_not_refundable",
        "message": "a pending payment cannot be refunded: only a completed one",
        "details": {"status": "pending"},
    }
    for path in (f"/api/v1/payments/{MISSING}/refunds", "/api/v1/payments/nope/refunds"):
        assert (await api.post(path, {}))[0] == 404
        assert (await api.get(path))[0] == 404
    assert (await api.get(f"/api/v1/refunds/{MISSING}"))[0] == 404


@pytest.mark.gen_test
async def test_an_admin_makes_refunds_and_a_user_reads_only_its_own(api):
    payment = await completed_payment(api)
    code, refund, _ = await api.post(refunds_of(payment), {"amount": "1.00"})
    assert code == 201
    owner = await api.as_user(payment["user_id"])
    code, body, _ = await owner.post(refunds_of(payment), {"amount": "1.00"})
    assert (code, body["error"]["code"]) == (403, "forbidden")
    code, page, _ = await owner.get(refunds_of(payment))
    assert code == 200 and [r["id"] for r in page["items"]] == [refund["id"]]
    assert (await owner.get(f"/api/v1/refunds/{refund['id']}"))[1] == refund
    stranger = await api.as_user((await api.new_user())["id"])
    for path in (refunds_of(payment), f"/api/v1/refunds/{refund['id']}"):
        code, body, _ = await stranger.get(path)
        assert (code, body["error"]["code"]) == (404, "not_found")
    code, body, _ = await stranger.post(refunds_of(payment), {})
    assert code == 403


@pytest.mark.gen_test
async def test_a_retry_with_its_key_is_the_same_refund_and_another_body_is_refused(api):
    payment = await completed_payment(api)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    code, first, headers = await api.post(refunds_of(payment), {"amount": "100"}, headers=key)
    assert code == 201 and "Idempotent-Replayed" not in headers
    # The same body (100 and "100.00" are one amount), after nothing is left: the same refund.
    code, again, headers = await api.post(refunds_of(payment), {"amount": "100.00"}, headers=key)
    assert code == 201 and again == first and headers["Idempotent-Replayed"] == "true"
    code, body, _ = await api.post(refunds_of(payment), {"amount": "1.00"}, headers=key)
    assert code == 422 and body["error"]["code"] == "idempotency_key_reused"
    code, body, _ = await api.post(refunds_of(payment), {"amount": "1.00"}, headers={"Idempotency-Key": "a b"})
    assert code == 400 and body["error"]["code"] == "invalid_idempotency_key"
    assert len((await api.get(refunds_of(payment)))[1]["items"]) == 1


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_requests_with_one_key_make_one_refund(api):
    payment = await completed_payment(api)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    answers = await asyncio.gather(*(api.post(refunds_of(payment), {"amount": "5.00"}, headers=key) for _ in range(10)))
    assert {code for code, _, _ in answers} == {201}
    assert len({body["id"] for _, body, _ in answers}) == 1
    code, after, _ = await api.get(f"/api/v1/payments/{payment['id']}")
    assert after["amount_refunded"] == "5.00"


@pytest.mark.gen_test(timeout=60)
async def test_of_twenty_concurrent_refunds_exceeding_the_amount_exactly_one_succeeds(api):
    payment = await completed_payment(api, amount="100.00")
    answers = await asyncio.gather(*(api.post(refunds_of(payment), {"amount": "60.00"}) for _ in range(20)))
    codes = sorted(code for code, _, _ in answers)
    assert codes == [201] + [422] * 19, codes
    refused = [body["error"] for code, body, _ in answers if code == 422]
    assert {e["code"] for e in refused} == {"refund_exceeds_payment"}
    assert {e["details"]["amount_refundable"] for e in refused} == {"40.00"}
    rows = await MySQLManager.instance().home.fetchall(
        "SELECT amount_minor FROM refunds WHERE payment_id = %s", (payment["id"],)
    )
    assert [r["amount_minor"] for r in rows] == [6000]
    code, after, _ = await api.get(f"/api/v1/payments/{payment['id']}")
    assert after["amount_refunded"] == "60.00" and after["status"] == "completed"


@pytest.mark.gen_test(timeout=60)
async def test_twenty_concurrent_small_refunds_never_add_up_past_the_amount(api):
    """Mixed amounts, each alone within the amount: whatever order they take, the sum stays
    at most the amount, and the payment's amount_refunded is exactly its refunds' sum."""
    payment = await completed_payment(api, amount="10.00")
    amounts = [f"{n % 4 + 1}.{n:02d}" for n in range(20)]
    answers = await asyncio.gather(*(api.post(refunds_of(payment), {"amount": a}) for a in amounts))
    made = [Decimal(body["amount"]) for code, body, _ in answers if code == 201]
    assert {code for code, _, _ in answers} <= {201, 422} and made
    assert sum(made) <= Decimal("10.00")
    code, after, _ = await api.get(f"/api/v1/payments/{payment['id']}")
    assert Decimal(after["amount_refunded"]) == sum(made)


@pytest.mark.gen_test
async def test_status_refunded_refunds_what_is_left_as_one_refund_and_history_says_who(api):
    payment = await completed_payment(api, amount="30.00")
    code, partial, _ = await api.post(refunds_of(payment), {"amount": "10.00"}, headers={"X-Request-ID": "refund-1"})
    assert code == 201
    status = f"/api/v1/payments/{payment['id']}/status"
    code, after, _ = await api.put(status, {"status": "refunded"}, headers={"X-Request-ID": "refund-2"})
    assert code == 200 and after["status"] == "refunded" and after["amount_refunded"] == "30.00"
    code, page, _ = await api.get(refunds_of(payment))
    assert [r["amount"] for r in page["items"]] == ["10.00", "20.00"]
    rest = page["items"][1]
    code, again, _ = await api.put(status, {"status": "refunded"})  # the same status again: nothing new
    assert code == 200 and again == after
    assert len((await api.get(refunds_of(payment)))[1]["items"]) == 2

    code, history, _ = await api.get(f"/api/v1/payments/{payment['id']}/history")
    refunds = [item for item in history["items"] if item["refund"]]
    completed_by = history["items"][0]["actor_key_id"]  # pending -> completed, by the same admin key
    assert [(i["from"], i["to"], i["refund"], i["request_id"]) for i in refunds] == [
        ("completed", "completed", {"id": partial["id"], "amount": "10.00"}, "refund-1"),
        ("completed", "refunded", {"id": rest["id"], "amount": "20.00"}, "refund-2"),
    ]
    assert completed_by and {i["actor_key_id"] for i in refunds} == {completed_by}
    assert all(i["remote_ip"] for i in refunds)
    owner = await api.as_user(payment["user_id"])
    code, seen, _ = await owner.get(f"/api/v1/payments/{payment['id']}/history")
    assert all("actor_key_id" not in i and "remote_ip" not in i for i in seen["items"])
    assert [i["refund"] for i in seen["items"] if i["refund"]] == [r["refund"] for r in refunds]


@pytest.mark.gen_test
async def test_status_refunded_keeps_the_state_machine_for_other_statuses(api):
    user = await api.new_user()
    payment = await api.new_payment(user["id"])
    code, body, _ = await api.put(f"/api/v1/payments/{payment['id']}/status", {"status": "refunded"})
    assert code == 409 and body["error"]["code"] == "invalid_transition"
    assert body["error"]["details"] == {
        "from": "pending",
        "to": "refunded",
        "allowed": sorted(["processing", "completed", "failed", "cancelled"]),
    }


@pytest.mark.gen_test(timeout=60)
async def test_a_refund_is_announced_on_the_topic_to_sockets_and_in_replay(api, config):
    payment = await completed_payment(api)
    user_id = payment["user_id"]
    positions = await end_positions(config["kafka"])
    client = await Client.connect(api, user_id, "till")
    try:
        _, refund, _ = await api.post(refunds_of(payment), {"amount": "12.34", "reason": "duplicate"})
        pushed = await client.next_frame("refund_created", id=refund["id"])
        assert pushed["user_id"] == user_id and pushed["data"] == refund
        updated = await client.next_frame("payment_updated", id=payment["id"])
        assert updated["data"]["amount_refunded"] == "12.34" and updated["data"]["previous_status"] == "completed"
    finally:
        client.close()
    consumer = await topic_consumer(config["kafka"], positions)
    try:
        seen = await read_events(consumer, lambda s: any(e["data"].get("amount_refunded") == "12.34" for e in s))
    finally:
        await asyncio.wait_for(consumer.stop(), 15)
    # The refund, then the payment after it (the completion's event may come before both).
    mine = [(e["type"], e["data"]) for e in seen if e.get("user_id") == user_id][-2:]
    assert mine[0] == ("refund_created", refund)
    assert mine[1][0] == "payment_updated" and mine[1][1]["amount_refunded"] == "12.34"

    # Missed while away: replayed after reconnecting.
    _, later, _ = await api.post(refunds_of(payment), {"amount": "1.00"})
    back = await Client.connect(api, user_id, "till", last_event_id=pushed["event_id"])
    try:
        await back.next_frame("replay_complete")
        replayed = [(f["type"], f["data"]["id"]) for f in back.frames if "event_id" in f]
        assert ("refund_created", later["id"]) in replayed
    finally:
        back.close()


@pytest.mark.gen_test(timeout=60)
async def test_analytics_count_refunds_per_currency(api):
    user = await api.new_user()
    usd = await completed_payment(api, user["id"], amount="50.00")
    jpy = await completed_payment(api, user["id"], amount="1000", currency="JPY")
    for payment, amount in ((usd, "5.00"), (usd, "0.50"), (jpy, "999")):
        assert (await api.post(refunds_of(payment), {"amount": amount}))[0] == 201
    expected = {"count": 3, "by_currency": {"JPY": {"count": 1, "total": "999"}, "USD": {"count": 2, "total": "5.50"}}}

    async def counted():
        code, stats, _ = await api.get(f"/api/v1/analytics/users/{user['id']}")
        return code == 200 and stats["refunds"] == expected and stats

    stats = await wait_until(counted, timeout=30, what="the refunds in the user's analytics")
    assert stats["payment_count"] == 2 and stats["by_status"]["completed"]["count"] == 2
    code, fresh, _ = await api.get(f"/api/v1/analytics/users/{(await api.new_user())['id']}")
    assert code == 200 and fresh["refunds"] == {"count": 0, "by_currency": {}}
